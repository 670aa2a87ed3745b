"""GAN loop that samples images every epoch and switches both networks back to train."""
import torch
import torch.nn as nn

latent = 100


def sample(generator, n=16):
    generator.eval()
    with torch.no_grad():
        images = generator(torch.randn(n, latent))
    return images


def train(G, D, loader, epochs=50):
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4)
    bce = nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        G.train()
        D.train()
        for real in loader:
            fake = G(torch.randn(real.size(0), latent))
            opt_d.zero_grad()
            (bce(D(real), torch.ones(len(real), 1)) + bce(D(fake.detach()), torch.zeros(len(real), 1))).backward()
            opt_d.step()
            opt_g.zero_grad()
            bce(D(fake), torch.ones(len(real), 1)).backward()
            opt_g.step()
        torch.save(sample(G), f"samples_{epoch}.pt")
