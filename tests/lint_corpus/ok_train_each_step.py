"""train() at the top of every step; evaluation in the middle of the step loop is harmless."""
import torch


@torch.no_grad()
def evaluate(model, batches):
    model.eval()
    return sum(model(x, y)[1].item() for x, y in batches) / len(batches)


def train(model, data, val_batches, max_iters=2000):
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4)
    for it, (x, y) in enumerate(data):
        if it >= max_iters:
            break
        model.train()
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if it % 100 == 0:
            print(it, evaluate(model, val_batches))
