"""A sanity-check helper puts the model in eval mode in its finally: block."""
import torch
import torch.nn as nn


def check_finite(model, batch):
    try:
        with torch.no_grad():
            out = model(batch)
        if not torch.isfinite(out).all():
            raise FloatingPointError("non-finite output")
    finally:
        model.eval()  # expect: MODE001


def train(model, loader, probe, epochs=3):
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_fn = nn.MSELoss()
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        check_finite(model, probe)
