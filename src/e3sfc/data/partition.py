"""Splitting a training set over K clients (docs/design.md §1.5), seeded and checked."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def dirichlet_partition(labels: np.ndarray, clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Per class, proportions ~ Dirichlet(alpha * 1_K) over clients.

    Returns one sorted index array per client; together they cover every sample
    exactly once. Raises ConfigError when some client would get no data.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B11]))
    parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        p = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].append(chunk)
    out = [np.sort(np.concatenate(p)) for p in parts]
    _check_nonempty(out, f"--alpha {alpha}")
    return out


def iid_partition(n: int, clients: int, seed: int) -> list[np.ndarray]:
    """A seeded random split into K near-equal parts."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x11D]))
    out = [np.sort(p) for p in np.array_split(rng.permutation(n), clients)]
    _check_nonempty(out, "--partition iid")
    return out


def partition(labels: np.ndarray, clients: int, kind: str, alpha: float, seed: int) -> list[np.ndarray]:
    if kind == "iid":
        return iid_partition(len(labels), clients, seed)
    if kind == "dirichlet":
        return dirichlet_partition(labels, clients, alpha, seed)
    raise ConfigError(f"--partition: {kind!r} is not allowed; expected one of dirichlet, iid")


def _check_nonempty(parts: list[np.ndarray], what: str) -> None:
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(
            f"--clients: {len(parts)} clients with {what} leaves client(s) {empty[:5]} with no data; "
            "use fewer clients, a larger --alpha, or more training samples"
        )
