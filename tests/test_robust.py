"""Robust aggregation against colluding clients (--aggregate cclip, --aggregate direction) and the collude
adversary."""

from __future__ import annotations

import json

import pytest
import torch

from e3sfc.compress import make_compressor
from e3sfc.config import RunConfig
from e3sfc.federated import Simulation
from e3sfc.federated.adversary import COLLUDE
from e3sfc.federated.client import ClientUpdate
from e3sfc.federated.server import (
    aggregate, centered_clip, cosines_to_others, direction_screen, geometric_median, history, screen,
)

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


# ---------------------------------------------------------------------------- --aggregate direction


def _dense_updates(vectors):
    """A digits round's context and dense (fedavg) payloads of ``vectors``, one client each."""
    sim = Simulation(RunConfig(method="fedavg", **{**BASE, "clients": len(vectors)}))
    _, M, _ = sim.server.begin_round(1)
    ctx, dense = sim.server.context(1, M), make_compressor("fedavg")
    return ctx, dense, [ClientUpdate(k, dense.encode(dense.compress(v, ctx)[0]), 1) for k, v in enumerate(vectors)]


def _seven_and_three(P):
    """7 honest updates e_0 + 0.1 e_{k+1}, 3 identical ones -2 e_0 (one shared, sign-flipped update under the
    3x median norm bound)."""
    e = torch.eye(8, P)  # the first 8 unit vectors of R^P (not eye(P): P x P floats)
    return [e[0] + 0.1 * e[k + 1] for k in range(7)] + [-2 * e[0]] * 3


def test_direction_screen_by_hand_leaves_out_three_identical_flipped_updates():
    """The first round (no history: each update against the geometric median of the others) and a later one
    (against the server's history e_0): the 3 are left out, the aggregate is the mean of the 7."""
    P = 55210  # the digits MLP
    vectors = _seven_and_three(P)
    ctx, dense, ups = _dense_updates(vectors)
    s = screen(ctx, ups, dense, norm_clip=3.0)
    assert s.clipped == []
    want = torch.zeros(P)
    want[0], want[1:8] = 1.0, 0.1 / 7
    for start in (None, torch.eye(1, P)[0]):
        agg = aggregate(ctx, screen(ctx, ups, dense, norm_clip=3.0), dense, rule="direction", start=start)
        assert agg.accepted == list(range(7)) and set(agg.screened) == {7, 8, 9}
        assert all(c < -0.9 for c in agg.screened.values())
        torch.testing.assert_close(agg.delta, want)
    mean = aggregate(ctx, s, dense, rule="mean")
    assert float(mean.delta[0]) == pytest.approx(0.1)  # the mean: 7 x 1 - 3 x 2, over 10


def test_direction_screen_takes_the_geometric_median_when_half_or_more_disagree():
    """5 of 10 against the reference: the screen cannot tell honest from hostile, so it keeps every row and
    the round's aggregate is their geometric median; 4 of 9 are left out."""
    P = 8
    e = torch.eye(P)
    xs = torch.stack([e[0] + 0.1 * e[k + 1] for k in range(5)] + [-e[0]] * 5)
    d = direction_screen(xs, e[0])
    assert bool(d.keep.all()) and int((d.cosine < 0).sum()) == 5
    assert d.median is not None and torch.allclose(d.median, geometric_median(xs))
    d = direction_screen(xs[:9], e[0])
    assert d.keep.tolist() == [True] * 5 + [False] * 4 and d.median is None
    ctx, dense, ups = _dense_updates([torch.nn.functional.pad(x, (0, 55210 - P)) for x in xs])
    agg = aggregate(ctx, screen(ctx, ups, dense, norm_clip=3.0), dense, rule="direction",
                    start=torch.nn.functional.pad(e[0], (0, 55210 - P)))
    assert agg.screened == {} and len(agg.accepted) == 10
    torch.testing.assert_close(agg.delta[:P], geometric_median(xs).float())


def test_direction_screen_tolerates_a_small_pull_back_and_remembers_each_client():
    """Against the reference e_0, median norm sqrt 2: an update pulling back by 0.07 median norms is kept, one
    pulling back by 0.35 is left out; a client whose mean pull over its rounds is below -0.1 is left out even in a
    round where it pulls forward a little."""
    P = 8
    e = torch.eye(P)
    honest = [e[0] + e[k + 1] for k in range(6)]
    xs = torch.stack(honest + [-0.1 * e[0] + e[7], -0.5 * e[0] + e[7]])
    d = direction_screen(xs, e[0])
    assert d.keep.tolist() == [True] * 7 + [False]
    assert float(d.pull[6]) == pytest.approx(-0.1 / 2 ** 0.5) and float(d.pull[7]) == pytest.approx(-0.5 / 2 ** 0.5)
    past = torch.zeros(8, 2, dtype=torch.float64)
    past[7] = torch.tensor([-1.5, 3.0])  # three rounds at -0.5 on average
    xs[7] = 0.05 * e[0] + e[7]
    d = direction_screen(xs, e[0], past)
    assert d.keep.tolist() == [True] * 7 + [False] and float(d.standing[7]) < -0.1
def test_cosines_to_others_leave_the_row_out():
    """Orthogonal rows (sparse updates of disjoint supports): each has cosine 1/sqrt(n) with a median that
    contains it, 0 with the median of the others; a flipped copy of one honest row comes out negative."""
    n = 10
    xs = torch.eye(n, 20, dtype=torch.float64)
    v = geometric_median(xs)
    assert torch.allclose(xs @ v / v.norm(), torch.full((n,), n ** -0.5, dtype=torch.float64))
    assert torch.allclose(cosines_to_others(xs), torch.zeros(n, dtype=torch.float64), atol=1e-12)
    g = torch.Generator().manual_seed(0)
    honest = torch.ones(9, 20, dtype=torch.float64) + torch.randn(9, 20, generator=g, dtype=torch.float64)
    cos = cosines_to_others(torch.cat([honest, -3 * honest[:1]]))
    assert (cos[:9] > 0).all() and cos[9] < 0


def test_history_decays():
    d = torch.ones(3)
    h = history(None, d)
    assert torch.equal(h, d) and h is not d
    assert torch.allclose(history(h, 2 * d), torch.full((3,), 2.9))


def _honest_round():
    sim = Simulation(RunConfig(method="fedavg", **{**BASE, "batch_size": 64}))
    participants, M, messages = sim.server.begin_round(1)
    ups = []
    for k in participants:
        x, y = sim.client_data[k]
        ups.append(sim.client(k).step(messages[k], sim.client_model, sim.client(k).sgd(sim.train_model, x, y)))
    return sim.server.context(1, M), sim.server.compressor, ups


@pytest.mark.parametrize("weighted", [False, True])
def test_direction_keeps_every_update_of_a_clean_round_bit_identical_to_mean(weighted):
    ctx, comp, ups = _honest_round()
    mean = aggregate(ctx, screen(ctx, ups, comp, norm_clip=3.0), comp, weighted=weighted, rule="mean")
    for start in (None, mean.delta):  # the first round's reference, and a history
        d = aggregate(ctx, screen(ctx, ups, comp, norm_clip=3.0), comp, weighted=weighted, rule="direction",
                      start=start)
        assert d.screened == {} and d.accepted == mean.accepted
        assert torch.equal(d.delta, mean.delta)


def test_direction_clean_run_is_the_mean_run_bit_for_bit():
    runs = [Simulation(RunConfig(method="fedavg", aggregate=agg, **{**BASE, "rounds": 4})) for agg in ("mean",
                                                                                                         "direction")]
    for sim in runs:
        sim.run()
    assert torch.equal(runs[0].weights, runs[1].weights)
    assert all(r["screened"] == 0 for r in runs[1].metrics)


def test_three_colluders_of_ten_direction_leaves_them_out_and_learns(tmp_path):
    """Measured (digits, MLP, 10 clients, lr 0.05, 10 rounds, seed 42): clean 0.661 (mean and direction alike);
    3 colluders: mean 0.42, cclip 0.53, direction 0.597 (every hostile update left out), as much as when the 3
    clients send nothing at all (0.597)."""
    hostile = dict(adversary="collude", adversaries=3)
    cfg = {**BASE, "rounds": 10, **hostile}
    del cfg["batch_size"]
    sim = Simulation(RunConfig(method="fedavg", aggregate="direction", **cfg), out_dir=tmp_path / "run")
    summary = sim.run()
    bad = {k for k in range(10) if sim.client(k).hostile}
    assert summary["final_accuracy"] > _final("mean", **hostile) + 0.1
    assert summary["final_accuracy"] > 0.55
    screened = sum(r["screened"] for r in sim.metrics)
    assert screened >= 28 and json.loads((tmp_path / "run" / "summary.json").read_text())["screened_updates"] == \
        screened
    assert all(r["participants"] <= 10 - len(bad) for r in sim.metrics[1:])


def test_resume_equals_no_stop_with_direction(tmp_path):
    cfg = RunConfig(method="fedavg", aggregate="direction", adversary="collude", adversaries=3, checkpoint_every=1,
                    **{**BASE, "rounds": 4})
    full = Simulation(cfg, out_dir=tmp_path / "a")
    full.run()
    part = Simulation(cfg, out_dir=tmp_path / "b")
    part.run(stop_after=2)
    resumed = Simulation.resume(tmp_path / "b")
    assert resumed.round == 2 and torch.equal(resumed.server.center, part.server.center)
    resumed.run()
    assert torch.equal(full.weights, resumed.weights)
    assert resumed.recorder.screened == full.recorder.screened > 0
