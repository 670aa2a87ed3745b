"""The official MNIST example's shape: train() starts with model.train() every epoch.

test() leaves eval mode behind, which is fine because train() undoes it. A line-order
checker flags test(); a direct-calls-only checker sees no eval in the loop at all.
"""
import torch
import torch.nn.functional as F


def train(model, device, train_loader, optimizer, epoch):
    model.train()
    for data, target in train_loader:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()


def test(model, device, test_loader):
    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            correct += model(data.to(device)).argmax(1).eq(target.to(device)).sum().item()
    print(f"accuracy {correct / len(test_loader.dataset):.3f}")


def main(model, device, train_loader, test_loader, epochs=14):
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    for epoch in range(1, epochs + 1):
        train(model, device, train_loader, optimizer, epoch)
        test(model, device, test_loader)
        scheduler.step()
