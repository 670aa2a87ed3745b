"""The optimizer trains only parts of the model (parameter groups over two submodules); the
validation in the epoch loop leaves the whole model, those parts included, in eval mode."""
import torch
import torch.nn.functional as F


class SegTrainer:
    def __init__(self, model, lr):
        self.model = model
        self.optimizer = torch.optim.Adam(
            [
                {"params": self.model.segmenter.parameters()},
                {"params": self.model.head.parameters(), "lr": lr * 10},
            ],
            lr=lr,
        )

    def validate(self, loader):
        self.model.eval()  # expect: MODE001
        with torch.no_grad():
            return sum(F.cross_entropy(self.model(x), y).item() for x, y in loader)

    def fit(self, loader, val_loader, epochs):
        for epoch in range(epochs):
            for x, y in loader:
                self.optimizer.zero_grad()
                F.cross_entropy(self.model(x), y).backward()
                self.optimizer.step()
            self.validate(val_loader)


def finetune(model, loader, val_loader):
    """Only the encoder is trained; evaluate() is the same leak as above."""
    optimizer = torch.optim.SGD(model.encoder.parameters(), lr=0.01)
    for epoch in range(3):
        for x, y in loader:
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()
        evaluate(model, val_loader)


def evaluate(model, loader):
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return [model(x) for x, _ in loader]
