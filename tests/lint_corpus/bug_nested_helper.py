"""The loop calls validate_and_log(), which calls evaluate(), which evals."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def evaluate(net, loader):
    net.eval()  # expect: MODE001
    total, correct = 0, 0
    with torch.no_grad():
        for x, y in loader:
            correct += (net(x).argmax(-1) == y).sum().item()
            total += y.numel()
    return correct / max(total, 1)


def validate_and_log(model, loader, epoch, history):
    acc = evaluate(model, loader)
    history.append((epoch, acc))
    print(f"epoch {epoch}: acc={acc:.3f}")


def train_one_epoch(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def main(train_loader, val_loader):
    model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.Adam(model.parameters())
    history = []
    model.train()
    for epoch in range(30):
        train_one_epoch(model, train_loader, optimizer)
        validate_and_log(model, val_loader, epoch, history)
    return history
