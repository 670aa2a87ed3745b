"""The helper remembers the mode and puts it back: model.train(was_training)."""
import torch
import torch.nn.functional as F


def evaluate(model, loader):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = sum(F.mse_loss(model(x), y).item() for x, y in loader)
    model.train(was_training)
    return loss


def fit(model, loader, val_loader, epochs):
    opt = torch.optim.Adam(model.parameters())
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        print(epoch, evaluate(model, val_loader))
