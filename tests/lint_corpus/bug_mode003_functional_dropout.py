"""Functional dropout and batch norm in forward() that ignore the module's mode (deepchem #5092 style)."""
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import functional as fn
from torch.nn.functional import dropout as drop


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2)
        self.register_buffer("mean", torch.zeros(16))
        self.register_buffer("var", torch.ones(16))

    def forward(self, x):
        x = F.dropout(x, 0.5)  # expect: MODE003
        x = nn.functional.dropout(x, p=0.2, training=True)  # expect: MODE003
        x = fn.dropout2d(x, 0.1)  # expect: MODE003
        x = drop(x)  # expect: MODE003
        x = F.batch_norm(x, self.mean, self.var, training=True)  # expect: MODE003
        x = nn.Dropout(p=0.5)(x)  # expect: MODE003
        return self.fc(x)
