"""GAN-style dict of networks: validate() evals every value of the dict and never restores."""
import torch
import torch.nn.functional as F

nets = {"gen": Generator(), "disc": Discriminator()}
opt_g = torch.optim.Adam(nets["gen"].parameters())
opt_d = torch.optim.Adam(nets["disc"].parameters())


def validate():
    for net in nets.values():
        net.eval()  # expect: MODE001
    with torch.no_grad():
        return nets["disc"](nets["gen"](noise)).mean().item()


for name, net in nets.items():
    net.train()
for epoch in range(10):
    for real in loader:
        opt_d.zero_grad()
        F.softplus(-nets["disc"](real)).mean().backward()
        opt_d.step()
        opt_g.zero_grad()
        F.softplus(-nets["disc"](nets["gen"](noise))).mean().backward()
        opt_g.step()
    validate()
