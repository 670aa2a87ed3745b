"""Fine-tuning with the backbone's BatchNorm statistics frozen on purpose each epoch.

Only a sub-module is put in eval mode; the model as a whole is trained in train mode.
"""
import torch
import torch.nn as nn


class Finetuner(nn.Module):
    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def finetune(model, loader, epochs=5):
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.01)
    for epoch in range(epochs):
        model.train()
        model.backbone.eval()
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
