"""Evaluation only once, after the training loop has finished."""
import torch
import torch.nn as nn

model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
loss_fn = nn.MSELoss()


def train(loader, epochs):
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()


def final_eval(loader):
    model.eval()
    with torch.no_grad():
        return sum(loss_fn(model(x), y).item() for x, y in loader)


train([], 5)
print(final_eval([]))
