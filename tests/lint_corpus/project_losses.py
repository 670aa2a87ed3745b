"""Helper module for bug_project_loss_helper.py: the forward pass happens here."""
import torch.nn.functional as F


def contrastive_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits, y)
