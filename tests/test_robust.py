"""Robust aggregation against colluding clients (--aggregate cclip) and the collude adversary."""

from __future__ import annotations

import torch

from e3sfc.config import RunConfig
from e3sfc.federated import Simulation
from e3sfc.federated.adversary import COLLUDE
from e3sfc.federated.server import centered_clip, screen

BASE = dict(dataset="digits", model="mlp", clients=10, rounds=3, batch_size=32, lr=0.05, threads=1)


def test_centered_clipping_holds_three_identical_outliers_on_a_line():
    """7 honest points at 1 +- 0.1 on a line, 3 identical at -2.5: the mean goes to -0.05, centered
    clipping from the median stays within tau (the median distance, here 0.1) x 3/10 per iteration of
    the honest mean."""
    honest = torch.tensor([0.9, 0.95, 1.0, 1.0, 1.0, 1.05, 1.1])
    xs = torch.cat([honest, torch.full((3,), -2.5)]).unsqueeze(1)
    v, prev, c = centered_clip(xs, torch.ones(10))
    assert abs(float(xs.mean()) + 0.05) < 1e-6
    assert abs(float(v[0]) - 1.0) <= 0.1
    assert (c[7:] < 1).all()  # the outliers were clipped
    # the rows as the rule counts them average to the aggregate
    assert torch.allclose((prev + c[:, None] * (xs.double() - prev)).mean(0), v)


def test_centered_clipping_with_a_large_radius_is_the_mean():
    g = torch.Generator().manual_seed(0)
    xs, a = torch.randn(10, 5, generator=g), torch.rand(10, generator=g) + 0.5
    for start in (None, torch.randn(5, generator=g)):
        v, _, _ = centered_clip(xs, a, start, tau=1e12)
        assert torch.allclose(v, (a[:, None] * xs).sum(0).double() / a.sum(), atol=1e-12)


def test_colluders_send_one_direction_that_passes_the_norm_clip():
    sim = Simulation(RunConfig(method="fedavg", adversary="collude", adversaries=3, **BASE))
    sim.run(stop_after=1)
    hostile = sorted(k for k in range(10) if sim.client(k).hostile)
    assert len(hostile) == 3
    w1, w2 = sim.client(hostile[0]).seen.clone(), sim.server.weights.clone()
    participants, M, messages = sim.server.begin_round(2)
    ups = []
    for k in participants:
        x, y = sim.client_data[k]
        ups.append(sim.client(k).step(messages[k], sim.client_model, sim.client(k).sgd(sim.train_model, x, y)))
    ctx = sim.server.context(2, M)
    s = screen(ctx, ups, sim.server.compressor, norm_clip=3.0)
    dec = {u.client: s.decoded[i] for i, u in enumerate(s.updates)}
    bad = [dec[k].double() for k in hostile]
    for b in bad[1:]:
        assert float(b @ bad[0]) / float(b.norm() * bad[0].norm()) > 1 - 1e-6  # one shared direction
    assert s.clipped == []  # every colluder passes the 3x median bound
    step = (w2 - w1).double()  # the last global step
    assert float(bad[0] @ step) < 0
    assert COLLUDE < 3


def _final(agg, rounds=10, **kw):
    cfg = {**BASE, "rounds": rounds, **kw}
    del cfg["batch_size"]  # the default (64), as measured
    sim = Simulation(RunConfig(method="fedavg", aggregate=agg, **cfg))
    return sim.run()["final_accuracy"]


def test_three_colluders_of_ten_mean_collapses_cclip_learns():
    """Measured (digits, MLP, 10 clients, lr 0.05, 10 rounds, seed 42): clean mean 0.66, clean cclip 0.70;
    3 colluders: mean 0.42, cclip 0.53."""
    hostile = dict(adversary="collude", adversaries=3)
    mean, cclip = _final("mean", **hostile), _final("cclip", **hostile)
    assert cclip > mean + 0.05, (mean, cclip)


def test_resume_equals_no_stop_with_cclip(tmp_path):
    cfg = RunConfig(method="fedavg", aggregate="cclip", adversary="collude", adversaries=3, checkpoint_every=1,
                    **{**BASE, "rounds": 4})
    full = Simulation(cfg, out_dir=tmp_path / "a")
    full.run()
    part = Simulation(cfg, out_dir=tmp_path / "b")
    part.run(stop_after=2)
    assert part.server.center is not None
    resumed = Simulation.resume(tmp_path / "b")
    assert resumed.round == 2 and torch.equal(resumed.server.center, part.server.center)
    resumed.run()
    assert torch.equal(full.weights, resumed.weights)
