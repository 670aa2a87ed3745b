"""The loop never calls the model: compute_loss() does. test() evals it and never restores."""
import torch
import torch.nn.functional as F

model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


def compute_loss(net, batch):
    x, y = batch
    return F.cross_entropy(net(x), y)


def test():
    model.eval()  # expect: MODE001
    with torch.no_grad():
        return sum(compute_loss(model, batch).item() for batch in test_loader)


model.train()
for epoch in range(10):
    for batch in train_loader:
        optimizer.zero_grad()
        loss = compute_loss(model, batch)
        loss.backward()
        optimizer.step()
    test()
