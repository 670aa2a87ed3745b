"""The loop trains the DataParallel wrapper; the helper evals the inner module."""
import torch
import torch.nn as nn


def test(net, loader):
    net.eval()  # expect: MODE001
    with torch.no_grad():
        return [net(x).argmax(1) for x, _ in loader]


def main(loader, test_loader, epochs=90):
    net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    model = nn.DataParallel(net).cuda()
    criterion = nn.CrossEntropyLoss().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    for epoch in range(epochs):
        for images, target in loader:
            output = model(images.cuda())
            loss = criterion(output, target.cuda())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        test(model.module, test_loader)
