"""The forward pass happens inside a library helper we cannot see; backward() and step() are here."""
import torch
from mylib.losses import compute_loss

model = Net()
optimizer = torch.optim.Adam(model.parameters())


def evaluate():
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return sum(compute_loss(model, batch).item() for batch in val_loader)


model.train()
for epoch in range(10):
    for batch in train_loader:
        optimizer.zero_grad()
        compute_loss(model, batch).backward()
        optimizer.step()
    evaluate()
