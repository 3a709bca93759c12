"""The app's model and data: an MLP on scikit-learn's 8x8 digits, split over the clients by label skew."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

INPUT_SHAPE, NUM_CLASSES = (1, 8, 8), 10


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                                  nn.Linear(200, NUM_CLASSES))

    def forward(self, x):
        return self.body(x)


def load_data(partition_id: int, num_partitions: int):
    """(train x, train y, test x, test y) of one client: a seeded Dirichlet(1.0) label split of the
    digits' first 1,400 images, and the last 397 as everyone's test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    rng = np.random.default_rng(0)
    train = np.arange(1400)
    parts = [[] for _ in range(num_partitions)]
    for c in range(NUM_CLASSES):
        idx = train[y[:1400].numpy() == c]
        rng.shuffle(idx)
        cuts = (np.cumsum(rng.dirichlet([1.0] * num_partitions))[:-1] * len(idx)).astype(int)
        for p, chunk in enumerate(np.split(idx, cuts)):
            parts[p] += chunk.tolist()
    mine = torch.tensor(sorted(parts[partition_id]))
    return x[mine], y[mine], x[1400:], y[1400:]


def train(net: nn.Module, x, y, epochs: int, lr: float) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[i:i + 32]), y[i:i + 32])
            loss.backward()
            opt.step()
    return float(loss)


def test(net: nn.Module, x, y) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        out = net(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
