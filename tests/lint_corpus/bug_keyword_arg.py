"""The model reaches the eval helper as a keyword argument."""
import torch
import torch.nn as nn


def compute_metrics(loader, *, network, device="cpu"):
    network.eval()  # expect: MODE001
    hits = 0
    with torch.inference_mode():
        for x, y in loader:
            hits += (network(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return hits


def train(model, train_loader, val_loader, epochs=8):
    optim = torch.optim.SGD(model.parameters(), lr=0.1, nesterov=True, momentum=0.9)
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    for epoch in range(epochs):
        for x, y in train_loader:
            optim.zero_grad()
            ce(model(x), y).backward()
            optim.step()
        print(epoch, compute_metrics(val_loader, network=model))
