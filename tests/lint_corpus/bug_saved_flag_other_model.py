"""The flag is saved from the student but the restore switches the teacher: the student leaks."""
import torch
import torch.nn.functional as F

student = Student()
teacher = Teacher()
optimizer = torch.optim.SGD(student.parameters(), lr=0.01)


def validate():
    was_training = student.training
    student.eval()  # expect: MODE001
    with torch.no_grad():
        score = sum(F.cross_entropy(student(x), y).item() for x, y in val_loader)
    if was_training:
        teacher.train()
    return score


student.train()
for epoch in range(10):
    for x, y in train_loader:
        optimizer.zero_grad()
        F.cross_entropy(student(x), y).backward()
        optimizer.step()
    validate()
