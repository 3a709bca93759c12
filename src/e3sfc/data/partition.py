"""Splitting a training set over K clients (docs/design.md §1.5), seeded and checked."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


MIN_PARTITION = 1   # samples a client must get
MAX_DRAWS = 1000    # Dirichlet draws tried before giving up


def dirichlet_partition(labels: np.ndarray, clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Per class, proportions ~ Dirichlet(alpha * 1_K) over clients.

    Returns one sorted index array per client; together they cover every sample
    exactly once. A draw that leaves some client with fewer than ``MIN_PARTITION``
    samples is drawn again from the same seeded stream (at most ``MAX_DRAWS`` times,
    then a ConfigError), so a seed whose first draw gives everyone data keeps its split.
    Fewer than ``MIN_PARTITION`` samples per client in all is an error at once (no draw can succeed).
    """
    labels = np.asarray(labels)
    if clients * MIN_PARTITION > len(labels):
        raise ConfigError(f"--clients: {clients} clients and {len(labels)} training samples leave some client with "
                          f"no data (each needs at least {MIN_PARTITION}); use fewer clients or more training samples")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B11]))
    classes = np.unique(labels)
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in classes:
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= MIN_PARTITION:
            return out
    _check_nonempty(out, f"--alpha {alpha} ({MAX_DRAWS} draws)")
    return out


def iid_partition(n: int, clients: int, seed: int) -> list[np.ndarray]:
    """A seeded random split into K near-equal parts."""
    if clients * MIN_PARTITION > n:  # before np.array_split builds a list of `clients` parts
        raise ConfigError(f"--clients: {clients} clients and {n} training samples leave some client with no data "
                          f"(each needs at least {MIN_PARTITION}); use fewer clients or more training samples")
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
