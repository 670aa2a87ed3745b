"""A nested evaluation function closes over main()'s model."""
import torch
import torch.nn as nn


def main(train_loader, val_loader, epochs=12):
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.1), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()

    def validate():
        model.eval()  # expect: MODE001
        with torch.no_grad():
            return sum(loss_fn(model(x), y).item() for x, y in val_loader)

    model.train()
    for epoch in range(epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        print(epoch, validate())


if __name__ == "__main__":
    main([], [])
