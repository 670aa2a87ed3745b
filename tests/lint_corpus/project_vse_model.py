"""Helper module for the bug_/ok_project_vse_* cases: a model class whose methods set the mode."""
import torch
import torch.nn as nn


class EncoderImage(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2048, 256)
        self.bn = nn.BatchNorm1d(256)

    def forward(self, images):
        return self.bn(self.fc(images))


class EncoderText(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(300, 256, batch_first=True)
        self.drop = nn.Dropout(0.2)

    def forward(self, captions):
        return self.drop(self.rnn(captions)[0][:, -1])


class VSE:
    """Two encoders and their optimizer; the training script never touches the encoders."""

    def __init__(self, lr):
        self.img_enc = EncoderImage()
        self.txt_enc = EncoderText()
        params = list(self.img_enc.parameters()) + list(self.txt_enc.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr)

    def train_start(self):
        self.img_enc.train()
        self.txt_enc.train()

    def val_start(self):
        self.img_enc.eval()
        self.txt_enc.eval()

    def forward_emb(self, images, captions):
        return self.img_enc(images), self.txt_enc(captions)

    def train_emb(self, images, captions):
        img_emb, cap_emb = self.forward_emb(images, captions)
        loss = (img_emb - cap_emb).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()
