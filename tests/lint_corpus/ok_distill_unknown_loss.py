"""Distillation through a library loss: the frozen teacher is evaluated on purpose, the student trains."""
import torch
from mylib.losses import kd_loss

teacher = load_teacher()
student = Student()
teacher.eval()
teacher.requires_grad_(False)
optimizer = torch.optim.SGD(student.parameters(), lr=0.01)


def evaluate():
    student.eval()
    with torch.no_grad():
        score = sum(kd_loss(student, teacher, x).item() for x in val_loader)
    student.train()
    return score


student.train()
for epoch in range(10):
    for x in train_loader:
        optimizer.zero_grad()
        kd_loss(student, teacher, x).backward()
        optimizer.step()
    evaluate()
