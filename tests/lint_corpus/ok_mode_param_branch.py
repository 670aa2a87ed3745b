"""One epoch function for both phases: the mode and the step both depend on the `phase` argument."""
import torch
import torch.nn as nn
import torch.nn.functional as F

model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


def run_epoch(phase, loader):
    if phase == "train":
        model.train()
    else:
        model.eval()
    total = 0.0
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        if phase == "train":
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        total += loss.item()
    return total


for epoch in range(20):
    run_epoch("train", train_loader)
    run_epoch("val", val_loader)
