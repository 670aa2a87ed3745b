"""evaluate() returns from inside try:, and its finally: puts train mode back."""
import torch
import torch.nn.functional as F


def evaluate(model, loader):
    model.eval()
    try:
        with torch.no_grad():
            return sum(F.cross_entropy(model(x), y).item() for x, y in loader)
    finally:
        model.train()


def fit(model, loader, val_loader, epochs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        print(epoch, evaluate(model, val_loader))
