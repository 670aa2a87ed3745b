"""The blog post's script: train() once before the loop, test() evals and never restores."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

train_loader = DataLoader(TensorDataset(torch.randn(512, 40), torch.randint(0, 10, (512,))), batch_size=64)
test_loader = DataLoader(TensorDataset(torch.randn(128, 40), torch.randint(0, 10, (128,))), batch_size=64)

model = nn.Sequential(nn.Linear(40, 100), nn.BatchNorm1d(100), nn.ReLU(), nn.Dropout(0.2), nn.Linear(100, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)


def test():
    model.eval()  # expect: MODE001
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x).argmax(dim=1) == y).sum().item()
    return correct / len(test_loader.dataset)


model.train()
for epoch in range(20):
    for x, y in train_loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    acc = test()
    print(f"epoch {epoch}: test acc {acc:.3f}")
