"""Validation written inline in the epoch loop; model.train() only before the loop."""
import torch
import torch.nn as nn


def fit(model, train_loader, val_loader, epochs=10):
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for epoch in range(epochs):
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()

        model.eval()  # expect: MODE001
        val_loss = 0.0
        with torch.no_grad():
            for inputs, labels in val_loader:
                val_loss += criterion(model(inputs), labels).item()
        print(f"epoch {epoch}: val loss {val_loss / len(val_loader):.4f}")
    return model
