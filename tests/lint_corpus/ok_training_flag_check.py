"""The step loop checks model.training and switches back when needed.

A line-order checker flags evaluate(); the branch on model.training restores train mode.
"""
import torch
import torch.nn.functional as F


def evaluate(model, batches):
    model.eval()
    with torch.no_grad():
        return sum(F.cross_entropy(model(x), y).item() for x, y in batches)


def train(model, loader, val_batches, log_every=100):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (x, y) in enumerate(loader):
        if not model.training:
            model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step % log_every == 0:
            print(step, evaluate(model, val_batches))
