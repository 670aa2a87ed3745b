"""The restore happens in a nested helper called at the end of evaluation."""
import torch
import torch.nn.functional as F


def set_train(module):
    module.train()


def evaluate(model, loader):
    model.eval()
    with torch.no_grad():
        acc = sum((model(x).argmax(1) == y).float().mean().item() for x, y in loader)
    set_train(model)
    return acc


def train(model, loader, val_loader, epochs):
    optimizer = torch.optim.Adam(model.parameters())
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        print(epoch, evaluate(model, val_loader))
