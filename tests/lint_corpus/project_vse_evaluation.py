"""Helper module for the bug_/ok_project_vse_* cases: validation puts the model in eval mode."""
import torch


def encode_data(model, loader):
    model.val_start()
    with torch.no_grad():
        return [model.forward_emb(images, captions) for images, captions in loader]


def validate(model, loader):
    embeddings = encode_data(model, loader)
    return sum(float((a - b).abs().mean()) for a, b in embeddings)
