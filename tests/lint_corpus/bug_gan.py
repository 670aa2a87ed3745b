"""DCGAN-style loop: sample_grid() evals the generator and never restores it.

The discriminator is also evaluated, but evaluate_discriminator() restores it.
"""
import torch
import torch.nn as nn

latent = 64
G = nn.Sequential(nn.Linear(latent, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 784), nn.Tanh())
D = nn.Sequential(nn.Linear(784, 256), nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Linear(256, 1))
opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
bce = nn.BCEWithLogitsLoss()
fixed_z = torch.randn(64, latent)


def sample_grid(generator):
    generator.eval()  # expect: MODE001
    with torch.no_grad():
        return generator(fixed_z).view(-1, 1, 28, 28)


def evaluate_discriminator(disc, real):
    disc.eval()
    with torch.no_grad():
        score = torch.sigmoid(disc(real)).mean().item()
    disc.train()
    return score


def train(loader, epochs=25):
    G.train()
    D.train()
    for epoch in range(epochs):
        for real, _ in loader:
            real = real.view(real.size(0), -1)
            z = torch.randn(real.size(0), latent)
            fake = G(z)
            opt_d.zero_grad()
            d_loss = bce(D(real), torch.ones(real.size(0), 1)) + bce(D(fake.detach()), torch.zeros(real.size(0), 1))
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad()
            g_loss = bce(D(fake), torch.ones(real.size(0), 1))
            g_loss.backward()
            opt_g.step()
        grid = sample_grid(G)
        print(epoch, grid.shape, evaluate_discriminator(D, real))
