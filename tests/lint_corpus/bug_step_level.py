"""Iteration-based training (no epochs): evaluation every N steps inside the step loop."""
import itertools

import torch
import torch.nn as nn


@torch.no_grad()
def estimate_loss(model, batches):
    model.eval()  # expect: MODE001
    losses = [model(x, y)[1].item() for x, y in batches]
    return sum(losses) / len(losses)


def train(model: nn.Module, data, val_batches, max_iters=5000, eval_interval=250):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model.train()
    for it, (x, y) in enumerate(itertools.islice(data, max_iters)):
        if it % eval_interval == 0:
            print(f"step {it}: val loss {estimate_loss(model, val_batches):.4f}")
        logits, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
