"""Only the EMA copy is evaluated (and stays in eval); the trained model is untouched."""
import copy

import torch
import torch.nn.functional as F


def evaluate(net, loader):
    net.eval()
    with torch.no_grad():
        return sum(F.cross_entropy(net(x), y).item() for x, y in loader)


def train(model, loader, val_loader, epochs=20, decay=0.999):
    ema_model = copy.deepcopy(model)
    for p in ema_model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            with torch.no_grad():
                for pe, pm in zip(ema_model.parameters(), model.parameters()):
                    pe.mul_(decay).add_(pm, alpha=1 - decay)
        print(epoch, evaluate(ema_model, val_loader))
