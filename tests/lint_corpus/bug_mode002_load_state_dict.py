"""Inference script: weights restored with load_state_dict(), eval() forgotten."""
import sys

import torch
import torch.nn as nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(128, 5)

    def forward(self, x):
        return self.head(self.body(x))


def main(path, inputs):
    model = Classifier()
    model.load_state_dict(torch.load(path, map_location="cpu"))
    with torch.no_grad():
        logits = model(inputs)  # expect: MODE002
    return logits.argmax(dim=1)


if __name__ == "__main__":
    print(main(sys.argv[1], torch.randn(8, 64)))
