"""A mode helper that calls the method named by its argument: getattr(m, mode)()."""
import torch


def set_mode(mode, *models):
    for m in models:
        getattr(m, mode)()  # expect: MODE001


def train(gen, disc, loader, val_loader):
    optimizer = torch.optim.Adam(gen.parameters())
    set_mode("train", gen, disc)
    for epoch in range(5):
        for x in loader:
            optimizer.zero_grad()
            disc(gen(x)).mean().backward()
            optimizer.step()
        set_mode("eval", gen, disc)
        with torch.no_grad():
            print(sum(disc(gen(x)).sum() for x in val_loader))
