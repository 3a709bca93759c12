"""Hostile and broken clients: the server admits, checks and bounds every reply; fault injection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from e3sfc import wire
from e3sfc.compress import make_compressor
from e3sfc.config import ADVERSARY_KINDS, RunConfig
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation
from e3sfc.federated.client import ClientUpdate
from e3sfc.federated.server import admit, server_step

BASE = dict(dataset="digits", model="mlp", clients=4, rounds=3, batch_size=32, lr=0.05, threads=1, steps=2,
            max_iter=5)


def _round_one(method="fedavg", **kw):
    sim = Simulation(RunConfig(method=method, **{**BASE, **kw}))
    participants, M, messages = sim.server.begin_round(1)
    honest = []
    for k in participants:
        x, y = sim.client_data[k]
        honest.append(sim.client(k).step(messages[k], sim.client_model, sim.client(k).sgd(sim.train_model, x, y)))
    return sim, M, honest


def test_admit_checks_the_envelope_before_use():
    ok = ClientUpdate(0, b"x" * 10, 5, {"cosine": 0.5, "train_seconds": 1.0})
    replies = [
        ok,
        ClientUpdate(0, b"y" * 10, 5),                    # a second reply for client 0
        ClientUpdate(7, b"x" * 10, 5),                    # never asked
        ClientUpdate(1, 2 ** 40, 5),                      # a huge integer where bytes belong: no allocation
        ClientUpdate(2, None, 5),
        ClientUpdate(3, b"x" * 11, 5),                    # wrong size
        ClientUpdate(4, b"x" * 10, -3),
        ClientUpdate(5, b"x" * 10, 10 ** 12),             # more samples than the partition holds
        ClientUpdate(6, b"x" * 10, True),
        "not an update",
        ClientUpdate(8, b"x" * 10, 5, {"cosine": float("nan"), "x": 1e30, "y": "s"}),
    ]
    admitted, rejected, received = admit(replies, {0, 1, 2, 3, 4, 5, 6, 8}, 10, {k: 100 for k in range(9)})
    assert [u.client for u in admitted] == [0, 8]
    assert admitted[0].blob == b"x" * 10 and admitted[0].stats == {"cosine": 0.5, "train_seconds": 1.0}
    assert admitted[1].stats == {"x": 1e30}  # finite numbers kept, NaN cosine and strings dropped
    assert set(rejected) == {1, 2, 3, 4, 5, 6}
    assert "int, not bytes" in rejected[1] and "NoneType" in rejected[2]
    assert "exactly 10" in rejected[3] and "exceeds the client's partition" in rejected[5]
    assert received == {0: 10, 1: 0, 2: 0, 3: 11, 4: 10, 5: 10, 6: 10, 8: 10}


def test_norm_clip_by_hand():
    """Three dense updates of norms 1, 1 and 10, clip 3: the third is scaled to norm 3."""
    sim, M, _ = _round_one()
    ctx = sim.server.context(1, M)
    dense = make_compressor("fedavg")
    P = ctx.num_params
    e = torch.zeros(P)
    e[0] = 1.0
    f = torch.zeros(P)
    f[1] = 1.0
    ups = [ClientUpdate(k, dense.encode(dense.compress(v, ctx)[0]), 1) for k, v in enumerate([e, f, -10 * e])]
    agg = server_step(ctx, ups, dense, norm_clip=3.0)
    assert agg.clipped == [2] and agg.accepted == [0, 1, 2]
    want = (e + f - 3 * e) / 3
    torch.testing.assert_close(agg.delta, want)
    off = server_step(ctx, ups, dense, norm_clip=0.0)
    torch.testing.assert_close(off.delta, (e + f - 10 * e) / 3)
    assert off.clipped == []


def test_one_client_cannot_destroy_the_model():
    """A finite 1e30 dense update, -1000 x an honest one and a forged num-samples among six
    clients: the round goes on, the model stays finite and moves no more than the clip allows."""
    sim, M, honest = _round_one(weighted=True, clients=6)
    ctx = sim.server.context(1, M)
    dense = sim.server.compressor
    w0 = sim.server.weights.clone()
    norms = [float(dense.decompress(dense.decode(u.blob, ctx), ctx).norm()) for u in honest]
    big = dense.encode(dense.compress(torch.full((ctx.num_params,), 1e30), ctx)[0])
    neg = dense.encode(dense.compress(-1000 * dense.decompress(dense.decode(honest[1].blob, ctx), ctx), ctx)[0])
    hostile = [honest[0], ClientUpdate(1, big, honest[1].num_samples), ClientUpdate(2, neg, honest[2].num_samples),
               ClientUpdate(3, honest[3].blob, 10 ** 12), honest[4], honest[5]]
    stats = sim.server.end_round(1, M, hostile)
    assert stats["rejected"] == 1 and stats["clipped"] == 2 and stats["participants"] == 5
    w = sim.server.weights
    assert torch.isfinite(w).all()
    # a weighted mean of updates each no longer than 3 x the median: no longer than 3 x the largest honest
    assert float((w - w0).norm()) <= 3 * max(norms) * (1 + 1e-5)


def test_threesfc_alpha_of_1e30_is_bounded():
    sim, M, honest = _round_one("3sfc")
    p = wire.decode(honest[0].blob)
    forged = wire.encode(wire.Payload(p.method, (p.fields[0], p.fields[1], np.float32(1e30) * np.ones((), "<f4"))))
    stats = sim.server.end_round(1, M, [ClientUpdate(0, forged, honest[0].num_samples), *honest[1:]])
    assert stats["rejected"] + stats["clipped"] == 1
    assert torch.isfinite(sim.server.weights).all()


@pytest.mark.parametrize("method", ["fedavg", "3sfc", "e3sfc", "topk", "stc"])
@pytest.mark.parametrize("kind", ADVERSARY_KINDS)
def test_fault_injection_every_kind(method, kind):
    """One hostile client of four: every round finishes, the model stays finite, and the server
    saw the attack (rejected, scaled down or missing) in every round."""
    sim = Simulation(RunConfig(method=method, adversary=kind, adversaries=1, **BASE))
    sim.run()
    assert sim.round == 3 and torch.isfinite(sim.server.weights).all()
    for r in sim.metrics:
        seen = r["rejected"] + r["clipped"] + r["missing"]
        assert seen >= 1 or kind == "collude", r  # collude is built to pass every check
        assert r["participants"] == 4 - r["rejected"] - r["missing"]
    if kind in ("nan", "garbage", "wrong-shape"):
        assert all(r["rejected"] == 1 for r in sim.metrics)
    if kind == "drop":
        assert all(r["missing"] == 1 and r["uplink_bytes"] == 3 * sim.summary()["uplink_bytes_per_client_round"]
                   for r in sim.metrics)


def test_hostile_clients_are_the_same_seeded_choice_and_honest_runs_do_not_change():
    from e3sfc.federated.adversary import hostile_clients
    from e3sfc.federated.runtime import derive_seed

    a = hostile_clients(42, 10, 3, derive_seed)
    assert a == hostile_clients(42, 10, 3, derive_seed) and len(a) == 3
    assert hostile_clients(42, 10, 0, derive_seed) == frozenset()
    # with no update above the bound, robust aggregation is bit-identical to the plain mean
    runs = [Simulation(RunConfig(method="3sfc", norm_clip=c, **BASE)) for c in (3.0, 0.0)]
    for s in runs:
        s.run()
    assert all(r["clipped"] == 0 for r in runs[0].metrics)
    assert torch.equal(runs[0].server.weights, runs[1].server.weights)


@pytest.mark.parametrize("flags,needle", [
    (dict(adversary="evil", adversaries=1), "--adversary: 'evil' is not allowed"),
    (dict(adversary="nan"), "--adversaries: 0 is not allowed; expected an integer >= 1 with --adversary nan"),
    (dict(adversaries=2), "--adversaries: 2 is not allowed; expected 0 without --adversary"),
    (dict(adversary="nan", adversaries=9), "--adversaries: 9 is not allowed; expected an integer in 0..--clients"),
    (dict(norm_clip=0.5), "--norm-clip: 0.5 is not allowed"),
    (dict(round_timeout=0), "--round-timeout: 0 is not allowed"),
])
def test_bad_robustness_settings(flags, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**{**BASE, **flags})
