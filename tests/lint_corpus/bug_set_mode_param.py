"""set_mode(model, False) inside the loop, and set_mode(model, True) only before it."""
import torch
import torch.nn.functional as F


def set_mode(module, training):
    module.train(training)  # expect: MODE001


def fit(model, loader, val_loader, epochs):
    opt = torch.optim.Adam(model.parameters())
    set_mode(model, True)
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        set_mode(model, False)
        with torch.no_grad():
            print(epoch, sum(F.cross_entropy(model(x), y).item() for x, y in val_loader))
