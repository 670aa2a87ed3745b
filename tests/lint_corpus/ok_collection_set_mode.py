"""The same helpers, but every epoch starts by switching the whole list back to train()."""
import torch
import torch.nn.functional as F

net_a, net_b = Encoder(), Decoder()
optimizer = torch.optim.Adam(list(net_a.parameters()) + list(net_b.parameters()))
models = [net_a, net_b]


def set_mode(nets, training):
    for m in nets:
        m.train(training)


def validate():
    set_mode(models, False)
    with torch.no_grad():
        return sum(F.mse_loss(net_b(net_a(x)), y).item() for x, y in val_loader)


for epoch in range(10):
    set_mode(models, True)
    for x, y in train_loader:
        optimizer.zero_grad()
        F.mse_loss(net_b(net_a(x)), y).backward()
        optimizer.step()
    validate()
