"""The loss function is passed as an argument; it calls predict(), which switches the model to
eval mode on every training step and never back."""
import torch


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))

    def forward(self, x):
        return self.body(x)

    def predict(self, x):
        self.eval()  # expect: MODE001
        return self(x)


def my_loss(model, batch):
    x, y = batch
    return ((model.predict(x) - y) ** 2).mean()


def fit(model, loader, loss_function, epochs=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for epoch in range(epochs):
        for batch in loader:
            optimizer.zero_grad()
            loss_function(model, batch).backward()
            optimizer.step()


def main(loader):
    fit(Regressor(), loader, loss_function=my_loss)
