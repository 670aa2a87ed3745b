"""run_epoch() only ever calls eval(): the "val" call leaves the model in eval for the next epoch."""
import torch
import torch.nn as nn
import torch.nn.functional as F

model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


def run_epoch(phase, loader):
    if phase == "val":
        model.eval()  # expect: MODE001
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        if phase == "train":
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


model.train()
for epoch in range(20):
    run_epoch("train", train_loader)
    run_epoch("val", val_loader)
