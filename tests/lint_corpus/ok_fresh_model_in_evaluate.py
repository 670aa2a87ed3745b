"""evaluate() builds its own model from the saved checkpoint and evals that one."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def build():
    return nn.Sequential(nn.Linear(20, 50), nn.BatchNorm1d(50), nn.ReLU(), nn.Linear(50, 2))


def evaluate(ckpt_path, loader):
    model = build()
    model.load_state_dict(torch.load(ckpt_path))
    model.eval()
    with torch.no_grad():
        return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)


def main(train_loader, val_loader, epochs=10):
    model = build()
    optimizer = torch.optim.Adam(model.parameters())
    model.train()
    for epoch in range(epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        torch.save(model.state_dict(), "last.pt")
        print(epoch, evaluate("last.pt", val_loader))
