"""A helper switches a list of networks to eval; nothing switches them back inside the loop."""
import torch
import torch.nn.functional as F

net_a, net_b, net_c = Encoder(), Mixer(), Decoder()
params = list(net_a.parameters()) + list(net_b.parameters()) + list(net_c.parameters())
optimizer = torch.optim.Adam(params)


def set_eval(models):
    for m in models:
        m.eval()  # expect: MODE001


def validate():
    set_eval([net_a, net_b, net_c])
    with torch.no_grad():
        return sum(F.mse_loss(net_c(net_b(net_a(x))), y).item() for x, y in val_loader)


for net in (net_a, net_b, net_c):
    net.train()
for epoch in range(10):
    for x, y in train_loader:
        optimizer.zero_grad()
        F.mse_loss(net_c(net_b(net_a(x))), y).backward()
        optimizer.step()
    validate()
