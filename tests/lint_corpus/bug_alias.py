"""The eval happens through an alias (net = model) inside the loop."""
import torch
import torch.nn as nn

model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
criterion = nn.CrossEntropyLoss()


def run(train_loader, probe_batch, epochs=5):
    model.train()
    net = model
    for epoch in range(epochs):
        for images, labels in train_loader:
            optimizer.zero_grad()
            criterion(model(images), labels).backward()
            optimizer.step()
        net.eval()  # expect: MODE001
        with torch.no_grad():
            print(epoch, net(probe_batch).softmax(-1).max().item())
