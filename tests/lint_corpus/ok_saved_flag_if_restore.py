"""evaluate() saves the mode in a flag, evals, and restores with `if was_training: model.train()`."""
import torch
import torch.nn as nn
import torch.nn.functional as F

model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


def evaluate(net, batches):
    was_training = net.training
    net.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in batches:
            total += F.cross_entropy(net(x), y).item()
    if was_training:
        net.train()
    return total


model.train()
for epoch in range(5):
    for x, y in train_batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    print(epoch, evaluate(model, val_batches))
