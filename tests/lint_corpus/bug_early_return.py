"""evaluate() restores train mode at the end, but an early return skips the restore."""
import torch
import torch.nn.functional as F


def evaluate(model, loader):
    model.eval()  # expect: MODE001
    if len(loader) == 0:
        return float("nan")
    with torch.no_grad():
        loss = sum(F.cross_entropy(model(x), y).item() for x, y in loader) / len(loader)
    model.train()
    return loss


def fit(model, train_loader, val_loader, epochs):
    opt = torch.optim.Adam(model.parameters())
    model.train()
    for epoch in range(epochs):
        for x, y in train_loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        print(epoch, evaluate(model, val_loader))
