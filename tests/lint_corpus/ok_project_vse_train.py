"""The fixed cross-file script: train_start() at the start of every epoch."""
from project_vse_evaluation import validate as run_validation
from project_vse_model import VSE as Model

model = Model(lr=2e-4)
for epoch in range(30):
    model.train_start()
    for images, captions in train_loader:
        model.train_emb(images, captions)
    rsum = run_validation(model, val_loader)
