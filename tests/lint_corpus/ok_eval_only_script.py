"""Evaluates a series of checkpoints; no training anywhere, eval() called after each load."""
import glob

import torch
import torch.nn as nn

model = nn.Sequential(nn.Linear(32, 64), nn.Dropout(0.5), nn.Linear(64, 10))
data = torch.randn(100, 32)
for path in sorted(glob.glob("checkpoints/*.pt")):
    model.load_state_dict(torch.load(path))
    model.eval()
    with torch.no_grad():
        print(path, model(data).argmax(1).bincount())
