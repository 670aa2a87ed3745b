"""Functional dropout that follows the module's mode, and F.dropout outside any forward()."""
import torch.nn as nn
import torch.nn.functional as F


class Head(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.p = p
        self.fc = nn.Linear(16, 2)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        x = F.dropout(x, self.p, training=self.training)
        x = F.dropout(x, self.p, self.training)
        x = F.batch_norm(x, None, None, training=self.training)
        x = nn.Linear(16, 16)(x)  # a fresh layer without mode-dependent behaviour is not MODE003
        return self.fc(self.drop(x))


def augment(x):
    return F.dropout(x, 0.1)  # data augmentation on purpose, not inside a module
