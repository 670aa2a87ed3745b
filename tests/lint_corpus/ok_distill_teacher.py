"""Knowledge distillation: the frozen teacher is put in eval mode inside the loop on purpose."""
import torch
import torch.nn.functional as F


def distill(student, teacher, loader, epochs=10, T=4.0):
    teacher.requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    for epoch in range(epochs):
        teacher.eval()
        student.train()
        for x, y in loader:
            t_logits = teacher(x)
            s_logits = student(x)
            kd = F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean")
            loss = kd * T * T + F.cross_entropy(s_logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
