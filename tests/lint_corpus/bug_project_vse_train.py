"""Cross-file bug: train_start() once before the loop, validate() (another file) calls val_start().

Every mode call and the training step are methods of VSE in project_vse_model.py; this file
has no eval() and no backward(). The finding is reported here, at the call that leaks.
"""
import project_vse_evaluation as evaluation
from project_vse_model import VSE

model = VSE(lr=2e-4)
model.train_start()
for epoch in range(30):
    for images, captions in train_loader:
        model.train_emb(images, captions)
    rsum = evaluation.validate(model, val_loader)  # expect: MODE001
