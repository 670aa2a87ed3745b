"""The seed's pattern, deliberately kept (the model has no BatchNorm or Dropout) and silenced."""
import torch
import torch.nn as nn
import torch.nn.functional as F

model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


def test(loader):
    model.eval()  # noqa: MODE001 - no mode-dependent layers in this model
    with torch.no_grad():
        return sum(F.cross_entropy(model(x), y).item() for x, y in loader)


def run(train_loader, test_loader):
    model.train()
    for epoch in range(5):
        for x, y in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        test(test_loader)
