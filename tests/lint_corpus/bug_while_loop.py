"""A while loop over global steps; checkpointing code evaluates without restoring."""
import torch
import torch.nn as nn


def evaluate_and_save(model, val_batch, step):
    model.eval()  # expect: MODE001
    with torch.no_grad():
        val = nn.functional.mse_loss(model(val_batch[0]), val_batch[1]).item()
    torch.save({"model": model.state_dict(), "step": step, "val": val}, f"ckpt_{step}.pt")


def train(model, batches, val_batch, total_steps=10_000, ckpt_every=1000):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.cuda.amp.GradScaler()
    model.train()
    step = 0
    while step < total_steps:
        x, y = next(batches)
        with torch.autocast("cuda"):
            loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        if step % ckpt_every == 0:
            evaluate_and_save(model, val_batch, step)
