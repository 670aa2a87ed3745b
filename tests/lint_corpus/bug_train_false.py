"""model.train(False) is eval(); the loop never switches back."""
import torch
import torch.nn as nn


def train(model, loader, val_batches, epochs):
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train(True)
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        model.train(False)  # expect: MODE001
        with torch.no_grad():
            scores = [loss_fn(model(x), y).item() for x, y in val_batches]
        print(epoch, sum(scores) / len(scores))
