"""The same leak reached through functools.partial and through a bound method held in a local name."""
import functools

import torch


class Scorer:
    def score(self, model, x):
        model.eval()  # expect: MODE001
        return model(x).mean()


def weighted_loss(model, x, weight):
    model.eval()  # expect: MODE001
    return model(x).sum() * weight


def fit(model, loader, step_loss):
    optimizer = torch.optim.Adam(model.parameters())
    model.train()
    for epoch in range(3):
        for x in loader:
            optimizer.zero_grad()
            step_loss(model, x).backward()
            optimizer.step()


def main(model, loader):
    fit(model, loader, functools.partial(weighted_loss, weight=0.5))
    scorer = Scorer()
    loss = scorer.score
    fit(model, loader, loss)
