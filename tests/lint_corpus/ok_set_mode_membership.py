"""A mode helper that dispatches on a string with `in`; the evaluation restores train mode."""
import torch


def set_mode(mode, models):
    for m in models:
        if mode in ("train", "training"):
            m.train()
        elif mode in ("eval", "test"):
            m.eval()


def evaluate(models, loader):
    set_mode("eval", models)
    with torch.no_grad():
        for x in loader:
            models[0](x)
    set_mode("train", models)


def train(loader, val_loader):
    gen = torch.nn.Linear(2, 2)
    disc = torch.nn.Linear(2, 2)
    models = [gen, disc]
    optimizer = torch.optim.Adam(gen.parameters())
    for epoch in range(5):
        for x in loader:
            optimizer.zero_grad()
            disc(gen(x)).mean().backward()
            optimizer.step()
            evaluate(models, val_loader)
