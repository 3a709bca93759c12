"""The training protocol: the project's choices and the authors' (``--protocol e3sfc|authors``), in one place.

The compressors are the same under both; what differs is the federated training around them.
``--protocol authors`` switches every row below to what the authors' E-3SFC code does;
``configs/authors.toml`` adds the settings that are plain numbers (held-out test split 0.2,
batch size 128, the full model shipped in round 1, the search without early stop). Each row
names the project's default and why it is kept.

| row | e3sfc (default) | authors | why the default |
|---|---|---|---|
| lr decay | lr * decay^n, n = the client's earlier trainings (round 1 uses lr) | lr * decay^(n + 1): the lr is decayed before every training (round 1 uses 0.99 lr) | ``--lr`` means the lr a client trains with first |
| client data | a client trains on all of its shard | 80% (int, random) to train, 20% held out; every client's accuracy on its 20%, with the model it received, logged each round (``client_accuracy``) | the official test split measures the global model; holding out 20% of each shard removes training data |
| inputs | standardised by the training set's per-channel mean and std | pixels in [0, 1] (MNIST family), CIFAR normalised with fixed constants | one rule for every dataset; same accuracy in our runs |
| clients per round | round(K f), at least 1 | int(K f) (rounded down) | f = 0.15 of 10 clients asks for 1.5: 2 is nearer |
| downlink lambda | ``--lambd`` on both searches | no lambda on the server's search | one objective for both directions |
| best iterate | the best of every objective evaluation | checked once at the end of each of the s L-BFGS steps (one extra evaluation each) | never keeps a worse point than one it has seen |
| EMNIST | held-out/official splits as for every dataset; as many outputs as classes | 50,000 / 10,000 from one permutation of the training split; 62 outputs whatever the split | a model outputs the classes that exist |

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
    protocol int(0.8 n) drawn at random (seeded by the run's seed and k) and the rest."""
    if not authors(cfg):
        return idx, idx[:0]
    perm = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5B11, k])).permutation(len(idx))
    n = int(len(idx) * CLIENT_TRAIN_FRACTION)
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
