"""The loop never calls the model: the imported contrastive_loss() does (training step by effect)."""
import torch
from project_losses import contrastive_loss

model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


def test():
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return sum(contrastive_loss(model, x, y).item() for x, y in test_loader)


model.train()
for epoch in range(10):
    for x, y in train_loader:
        loss = contrastive_loss(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test()
