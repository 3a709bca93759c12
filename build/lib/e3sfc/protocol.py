"""The training protocol: the project's choices and the authors' (``--protocol e3sfc|authors``), in one place.

The compressors are the same under both; what differs is the federated training around them.
``--protocol authors`` switches every row below to what the authors' E-3SFC code does;
``configs/authors.toml`` adds the settings that are plain numbers (held-out test split 0.2,
batch size 128, the full model shipped in round 1, the search without early stop). Each row
names the project's default and why it is kept.

Each row: the project's default; the authors'; why the default.

- lr decay: lr * decay^n, n = the client's earlier trainings (round 1 uses lr); the lr decayed
  before every training, lr * decay^(n + 1) (round 1 uses 0.99 lr); ``--lr`` is then the lr a
  client first trains with.
- client data: a client trains on its whole shard; int(0.8 n) of it at random to train, the rest
  held out, and every client's accuracy on its held-out part with the model it received logged
  each round (``client_accuracy``); the test split already measures the model, and holding out
  20% of each shard takes a fifth of the training data away.
- inputs: standardised by the training set's per-channel mean and std; pixels in [0, 1], CIFAR
  normalised with fixed constants; one rule for every dataset.
- clients per round: round(K f), at least 1; int(K f); f = 0.15 of 10 clients asks for 1.5, and 2
  is nearer than 1.
- downlink lambda: ``--lambd`` in both searches; none in the server's; one objective both ways.
- best iterate: the best of every objective evaluation; checked once at the end of each of the s
  L-BFGS steps (one more evaluation each); a point seen and better is never thrown away.
- EMNIST: the official splits (or ``--holdout``) and as many outputs as classes; 50,000 / 10,000
  images from one permutation of the training split and 62 outputs whatever the split; a model
  outputs the classes that exist.

The authors' ConvNet is ``--model convnet`` whatever the protocol (the project's faster variant
is ``convnet-fast``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROTOCOLS = ("e3sfc", "authors")

CLIENT_TRAIN_FRACTION = 0.8     # authors: a client's shard is split 80/20 into train and evaluation
EMNIST_SPLIT = (50_000, 10_000)  # authors: train and test taken from one permutation of EMNIST's training split
EMNIST_OUTPUTS = 62              # authors: the model has 62 outputs for every EMNIST split


def authors(cfg: Any) -> bool:
    return getattr(cfg, "protocol", "e3sfc") == "authors"


def client_lr(cfg: Any, times_trained: int) -> float:
    """The lr of a client's next local training, after ``times_trained`` earlier ones."""
    return cfg.lr * cfg.lr_decay ** (times_trained + (1 if authors(cfg) else 0))


def clients_per_round(cfg: Any) -> int:
    """How many of the K clients a round samples (at least 1 under both protocols)."""
    m = cfg.fraction * cfg.clients
    return max(1, int(m) if authors(cfg) else int(np.floor(m + 0.5)))


def client_train_fraction(cfg: Any) -> float:
    """The share of a client's shard it trains on (the rest is its evaluation split)."""
    return CLIENT_TRAIN_FRACTION if authors(cfg) else 1.0


def split_shard(cfg: Any, k: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Client k's shard (indices) as (train, evaluation): all and none, or under the authors'
    protocol int(0.8 n) drawn at random (seeded by the run's seed and k; at least 1, where the
    authors' code would leave a one-sample client nothing to train on) and the rest."""
    if not authors(cfg):
        return idx, idx[:0]
    perm = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5B11, k])).permutation(len(idx))
    n = max(1, int(len(idx) * CLIENT_TRAIN_FRACTION)) if len(idx) else 0  # a 1-sample shard still trains
    return idx[np.sort(perm[:n])], idx[np.sort(perm[n:])]


def downlink_lambd(cfg: Any) -> float:
    return 0.0 if authors(cfg) else cfg.lambd


def selection(cfg: Any) -> str:
    """How a 3SFC search keeps its best point: ``every`` evaluation, or once per L-BFGS ``step``."""
    return "step" if authors(cfg) else "every"


def input_scaling(cfg: Any) -> str:
    """``standard`` (per-channel mean and std of the training set) or ``authors`` ([0, 1] pixels;
    CIFAR normalised with fixed constants)."""
    return "authors" if authors(cfg) else "standard"
