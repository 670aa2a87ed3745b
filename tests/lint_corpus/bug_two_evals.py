"""Validation every epoch and a test pass every 10 epochs: both leave eval mode behind."""
import torch
import torch.nn.functional as F


def validate(model, loader):
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return sum(F.cross_entropy(model(x), y).item() for x, y in loader)


def test(model, loader):
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)


def fit(model, train_loader, val_loader, test_loader, epochs=50):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for epoch in range(epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        if epoch % 10 == 0:
            print("test", test(model, test_loader))
        print("val", validate(model, val_loader))
