"""A trainer method hands self.model to a module-level evaluation function."""
import torch
import torch.nn.functional as F


def evaluate(model, loader):
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return sum((model(x).argmax(1) == y).float().mean().item() for x, y in loader) / len(loader)


class Runner:
    def __init__(self, model, optimizer, train_loader, val_loader):
        self.model = model
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.val_loader = val_loader

    def step(self, x, y):
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def run(self, epochs):
        self.model.train()
        for epoch in range(epochs):
            losses = [self.step(x, y) for x, y in self.train_loader]
            acc = evaluate(self.model, self.val_loader)
            print(epoch, sum(losses) / len(losses), acc)
