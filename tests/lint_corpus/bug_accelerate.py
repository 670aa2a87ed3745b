"""Hugging Face Accelerate style: accelerator.backward(), eval helper without restore."""
import torch
from accelerate import Accelerator


def evaluation_loop(model, dataloader, accelerator):
    model.eval()  # expect: MODE001
    losses = []
    for batch in dataloader:
        with torch.no_grad():
            outputs = model(**batch)
        losses.append(accelerator.gather(outputs.loss.repeat(len(batch["input_ids"]))))
    return torch.cat(losses).mean()


def training_function(model, train_dataloader, eval_dataloader, num_epochs=3):
    accelerator = Accelerator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader
    )
    model.train()
    for epoch in range(num_epochs):
        for batch in train_dataloader:
            outputs = model(**batch)
            accelerator.backward(outputs.loss)
            optimizer.step()
            optimizer.zero_grad()
        eval_loss = evaluation_loop(model, eval_dataloader, accelerator)
        accelerator.print(f"epoch {epoch}: eval loss {eval_loss}")
