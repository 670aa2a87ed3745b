"""DQN: the target network is synced and put in eval mode inside the loop on purpose.

It is never trained (its parameters are not given to the optimizer), so it may stay in
eval mode while the policy network is trained.
"""
import torch
import torch.nn as nn


def make_net():
    return nn.Sequential(nn.Linear(4, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 2))


def train(replay, steps=10_000, gamma=0.99, sync_every=500):
    policy_net, target_net = make_net(), make_net()
    optimizer = torch.optim.AdamW(policy_net.parameters(), lr=1e-4, amsgrad=True)
    policy_net.train()
    for step in range(steps):
        if step % sync_every == 0:
            target_net.load_state_dict(policy_net.state_dict())
            target_net.eval()
        states, actions, rewards, next_states = replay.sample(128)
        q = policy_net(states).gather(1, actions)
        next_q = target_net(next_states).max(1).values.detach()
        loss = nn.functional.smooth_l1_loss(q.squeeze(1), rewards + gamma * next_q)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
