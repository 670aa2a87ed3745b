"""A whole pickled model loaded with torch.load() and used for prediction."""
import torch

model = torch.load("model.pt", weights_only=False)
predictions = []
with torch.no_grad():
    for batch in torch.randn(10, 4, 3, 32, 32):
        predictions.append(model.forward(batch).argmax(1))  # expect: MODE002
print(torch.cat(predictions).bincount())
