"""train() is never called: the code relies on the default mode, which test() destroys."""
import torch
import torch.nn as nn


def test(model, loader):
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)


def main(train_loader, test_loader, epochs=10):
    model = nn.Sequential(nn.Linear(784, 300), nn.BatchNorm1d(300), nn.ReLU(), nn.Linear(300, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        print(epoch, test(model, test_loader))
