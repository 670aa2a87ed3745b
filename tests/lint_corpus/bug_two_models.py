"""Two models trained side by side; the evaluation helper restores only the first."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def make():
    return nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 4))


def evaluate_pair(a, b, loader):
    a.eval()
    b.eval()  # expect: MODE001
    with torch.no_grad():
        accs = [((a(x) + b(x)).argmax(1) == y).float().mean().item() for x, y in loader]
    a.train()
    return sum(accs) / len(accs)


def train(loader, val_loader, epochs=10):
    model_a, model_b = make(), make()
    opt = torch.optim.Adam(list(model_a.parameters()) + list(model_b.parameters()))
    model_a.train()
    model_b.train()
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model_a(x), y) + F.cross_entropy(model_b(x), y)
            loss.backward()
            opt.step()
        print(epoch, evaluate_pair(model_a, model_b, val_loader))
