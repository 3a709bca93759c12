"""The authors' protocol switch (``--protocol authors``) row by row, and the aggregate cosines."""

from __future__ import annotations

import json

import pytest
import torch

from e3sfc.config import RunConfig
from e3sfc.federated import Simulation

QUICK = dict(dataset="digits", model="mlp", batch_size=32, lr=0.05, steps=2, max_iter=5, threads=1)


def test_aggregate_cosine_is_one_for_fedavg_and_the_client_cosine_for_one_client():
    fed = Simulation(RunConfig(**QUICK, method="fedavg", clients=3, rounds=2))
    fed.run()
    assert all(r["aggregate_cosine"] == pytest.approx(1.0, abs=1e-9) for r in fed.metrics)
    assert all(r["aggregate_downlink_cosine"] is None for r in fed.metrics)
    # one client, no error feedback, nothing clipped: the mean decoded update is that client's decoded
    # update and the mean true update its Delta, so the aggregate cosine is its compression cosine
    one = Simulation(RunConfig(**QUICK, method="3sfc", clients=1, rounds=2, ef=False, norm_clip=0))
    one.run()
    for r in one.metrics:
        assert r["aggregate_cosine"] == pytest.approx(r["cosine"], rel=1e-4)


def test_aggregate_downlink_cosine_under_e3sfc(tmp_path):
    sim = Simulation(RunConfig(**QUICK, method="e3sfc", clients=3, rounds=3), out_dir=tmp_path / "r")
    sim.run()
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert -1.0 <= r["aggregate_cosine"] <= 1.0 and -1.0 <= r["aggregate_downlink_cosine"] <= 1.0
    # the end-to-end cosine differs from the uplink one: the broadcast compresses the aggregate again
    assert any(abs(r["aggregate_cosine"] - r["aggregate_downlink_cosine"]) > 1e-3 for r in rows)
    assert torch.isfinite(sim.weights).all()
