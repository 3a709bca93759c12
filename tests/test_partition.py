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


def test_iid_near_equal():
    parts = iid_partition(1003, 10, seed=0)
    assert sorted({len(p) for p in parts}) == [100, 101]
    assert len(np.unique(np.concatenate(parts))) == 1003
