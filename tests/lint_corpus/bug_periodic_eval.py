"""Evaluation only every few epochs: still leaks eval mode into the following epochs."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def evaluate(model, loader):
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return sum(F.cross_entropy(model(x), y).item() for x, y in loader)


def main(model, train_loader, val_loader, epochs=100, eval_every=10):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30)
    model.train()
    for epoch in range(epochs):
        for x, y in train_loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
        if epoch % eval_every == 0:
            print(epoch, evaluate(model, val_loader))


if __name__ == "__main__":
    main(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2)), [], [])
