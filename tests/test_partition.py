from __future__ import annotations

import numpy as np
import pytest

from e3sfc.data import dirichlet_partition, iid_partition
from e3sfc.errors import ConfigError

LABELS = np.repeat(np.arange(10), 100)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_disjoint_covering_and_seeded(alpha):
    parts = dirichlet_partition(LABELS, 5, alpha, seed=3)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(LABELS) and len(np.unique(allidx)) == len(LABELS)
    again = dirichlet_partition(LABELS, 5, alpha, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = dirichlet_partition(LABELS, 5, alpha, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_skew_follows_alpha():
    def mean_max_class_share(alpha):
        parts = dirichlet_partition(LABELS, 10, alpha, seed=0)
        return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])
    assert mean_max_class_share(0.1) > 0.5 > mean_max_class_share(100.0)


def test_client_without_data_is_a_clear_error():
    with pytest.raises(ConfigError, match="no data"):
        dirichlet_partition(np.zeros(3, dtype=int), 10, 1.0, seed=0)
    with pytest.raises(ConfigError, match="no data"):
        iid_partition(3, 5, seed=0)


def test_a_split_that_keeps_leaving_a_client_empty_gives_up_after_max_draws(monkeypatch):
    import importlib
    monkeypatch.setattr(importlib.import_module("e3sfc.data.partition"), "MAX_DRAWS", 5)
    # enough samples for everyone, but at alpha 0.001 almost all of them go to one client in each draw
    with pytest.raises(ConfigError, match=r"--alpha 0.001 \(5 draws\) leaves client\(s\) \[.*with no data"):
        dirichlet_partition(np.zeros(10, dtype=int), 10, 0.001, seed=0)


def test_iid_near_equal():
    parts = iid_partition(1003, 10, seed=0)
    assert sorted({len(p) for p in parts}) == [100, 101]
    assert len(np.unique(np.concatenate(parts))) == 1003


def _first_draw(labels, clients, alpha, seed):
    """The single draw of the split as it was before redrawing existed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B11]))
    parts = [[] for _ in range(clients)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha)))[:-1] * len(idx)).astype(np.int64)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def test_a_draw_with_an_empty_client_is_drawn_again_and_good_seeds_keep_their_split():
    labels = np.repeat(np.arange(10), 6000)  # Fashion-MNIST's label counts
    first = _first_draw(labels, 100, 0.05, seed=42)
    assert min(len(p) for p in first) == 0  # the case that used to fail
    parts = dirichlet_partition(labels, 100, 0.05, seed=42)
    assert min(len(p) for p in parts) >= 1
    assert len(np.unique(np.concatenate(parts))) == len(labels)
    keep = dirichlet_partition(labels, 10, 1.0, seed=42)
    assert all(np.array_equal(a, b) for a, b in zip(keep, _first_draw(labels, 10, 1.0, seed=42)))
