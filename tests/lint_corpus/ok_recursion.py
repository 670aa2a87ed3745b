"""Recursive helpers (the analysis must terminate); eval is restored by the caller each epoch."""
import torch
import torch.nn as nn


def count_bn(module):
    n = int(isinstance(module, nn.BatchNorm1d))
    for child in module.children():
        n += count_bn(child)
    return n


def ping(model, depth):
    return pong(model, depth - 1) if depth > 0 else model.eval()


def pong(model, depth):
    return ping(model, depth - 1)


def train(model, loader, epochs):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    print(count_bn(model))
    for epoch in range(epochs):
        ping(model, 3)
        model.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
