"""A trainer method saves self.model.training and restores it with train(mode=flag) in finally."""
import torch
import torch.nn.functional as F


class Trainer:
    def __init__(self, model, loader, val_loader):
        self.model = model
        self.loader = loader
        self.val_loader = val_loader
        self.opt = torch.optim.Adam(model.parameters())

    def validate(self):
        previous = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return sum(F.mse_loss(self.model(x), y).item() for x, y in self.val_loader)
        finally:
            self.model.train(mode=previous)

    def fit(self, epochs):
        self.model.train()
        for epoch in range(epochs):
            for x, y in self.loader:
                self.opt.zero_grad()
                F.mse_loss(self.model(x), y).backward()
                self.opt.step()
            self.validate()
