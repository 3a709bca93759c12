from __future__ import annotations

import numpy as np
import pytest
import torch

from e3sfc.compress import ErrorFeedback, make_compressor, synth, synth_mlp
from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation
from e3sfc.federated.budget import BudgetScheduler
from e3sfc.federated.downlink import SERVER, Downlink
from e3sfc.metrics import Ledger
from e3sfc.io import read_jsonl

# digits: d = 64, C = 10 -> a 3SFC payload with M samples is 4 (74 M + 1) + 35 bytes
QUICK = dict(method="e3sfc", dataset="digits", model="mlp", batch_size=32, lr=0.05, steps=2, max_iter=5)


def synth_bytes(m: int) -> int:
    return 4 * (74 * m + 1) + 5 + (2 + 16) + (2 + 8) + 2


def test_replicas_stay_bit_identical_under_partial_participation():
    sim = Simulation(RunConfig(**QUICK, clients=6, fraction=0.5, rounds=5))
    sim.run()
    # bring every client up to date (catch-up) and compare with the server model bit for bit
    for k in range(6):
        assert torch.equal(sim.sync(sim.round + 1, k), sim.weights)
    assert all(sim.clients[k].replica is not None for k in range(6))


def test_downlink_bytes_follow_the_formula_at_full_participation():
    sim = Simulation(RunConfig(**QUICK, clients=4, rounds=3))
    sim.run()
    assert sim.ledger.per_client(1, "down") == {}  # --init seed: w_1 is built, not sent
    for t in (1, 2, 3):
        assert sim.ledger.per_client(t, "up") == {k: synth_bytes(1) for k in range(4)}
    for t in (2, 3):  # each client receives the previous round's broadcast
        assert sim.ledger.per_client(t, "down") == {k: synth_bytes(1) for k in range(4)}


def test_init_broadcast_ships_and_counts_the_model():
    sim = Simulation(RunConfig(**QUICK, clients=3, rounds=2, init="broadcast"))
    sim.run()
    dense = 4 * sim.num_params + 11
    assert sim.ledger.per_client(1, "down") == {k: dense for k in range(3)}
    assert sim.ledger.per_client(2, "down") == {k: synth_bytes(1) for k in range(3)}


def test_catch_up_replays_missed_broadcasts_and_counts_them():
    sim = Simulation(RunConfig(**QUICK, clients=6, fraction=0.5, rounds=4))
    sim.run()
    before = sim.ledger.total("down")
    k = next(k for k in range(6) if sim.server.downlink.version[k] < sim.round)
    missed = sim.round + 1 - int(sim.server.downlink.version[k])
    sim.sync(sim.round + 1, k)
    assert sim.ledger.total("down") - before == missed * synth_bytes(1)


def test_server_ef_identity_float64():
    from e3sfc.compress.base import Context
    from e3sfc.federated import get_flat
    from e3sfc.models import build_model

    m = build_model("mlp", (1, 8, 8), 10, seed=0).double()
    ctx = Context(m, get_flat(m), (1, 8, 8), 10, generator=torch.Generator().manual_seed(0))
    down = Downlink(make_compressor("3sfc", steps=2, max_iter=5), 3, "seed", True, Ledger())
    ef = down.ef
    ef.residuals[SERVER] = torch.randn(ctx.num_params, dtype=torch.float64) * 1e-3
    old = ef.residuals[SERVER].clone()
    delta = torch.randn(ctx.num_params, dtype=torch.float64) * 1e-2
    b = down.broadcast(1, ctx, delta, None, False, 10 ** 9)
    applied = b.weights - ctx.weights
    torch.testing.assert_close(applied + ef.residuals[SERVER], old + delta, rtol=0, atol=1e-12)


@pytest.mark.parametrize("schedule", ["constant", "decay", "adaptive"])
def test_budget_never_exceeded_and_mostly_spent(schedule):
    rounds, clients = 6, 4
    per_round_m1 = 2 * clients * synth_bytes(1)
    budget = int(per_round_m1 * rounds * 2.7)
    sim = Simulation(RunConfig(**QUICK, clients=clients, rounds=rounds, schedule=schedule,
                               budget_bytes=budget, target_cosine=0.99))
    spent_after = []
    for t in range(1, rounds + 1):
        sim.run_round(t)
        sim.round = t
        spent_after.append(sim.ledger.total("up") + sim.ledger.total("down"))
        assert spent_after[-1] <= budget
    assert spent_after[-1] >= 0.9 * budget, (schedule, spent_after[-1], budget, sim.schedule_log)
    assert max(sim.schedule_log) >= 2


def test_budget_respected_with_partial_participation():
    budget = 60_000
    sim = Simulation(RunConfig(**QUICK, clients=6, fraction=0.5, rounds=5, budget_bytes=budget, schedule="decay"))
    sim.run()
    assert sim.ledger.total("up") + sim.ledger.total("down") + int(sim.server.downlink.owed.sum()) <= budget


def test_too_small_budget_is_refused_with_the_minimum():
    with pytest.raises(ConfigError, match=r"--budget-bytes: 1000 is too small; .* at least 8040 bytes"):
        Simulation(RunConfig(**QUICK, clients=4, rounds=3, budget_bytes=1000))
    with pytest.raises(ConfigError, match="--budget-bytes"):
        RunConfig(method="topk", budget_bytes=10_000)


def test_schedule_choices_are_recorded(tmp_path):
    sim = Simulation(RunConfig(**QUICK, clients=3, rounds=3, samples=4, schedule="decay", decay_rate=0.5),
                     out_dir=tmp_path)
    sim.run()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["samples"] for r in rows] == [4, 2, 1]
    assert sim.summary()["samples_per_round"] == [4, 2, 1]


def test_adaptive_moves_against_the_cosine():
    s = BudgetScheduler("adaptive", None, rounds=5, samples=3, max_samples=8, target_cosine=0.5)
    cost = lambda m, d: m + d  # noqa: E731
    assert s.choose(1, cost) == (3, 3)
    assert s.choose(2, cost, last_cosine=0.2) == (4, 4)
    assert s.choose(3, cost, last_cosine=0.9) == (3, 3)


def test_adaptive_splits_the_round_between_directions_by_hand():
    """Per-sample capture from the last round's cosines (both measured at M = 2): up c = 0.8 gives
    e_up = 1 - 0.36^(1/2) = 0.4, down c = 0.6 gives e_down = 1 - 0.64^(1/2) = 0.2. A round of 10
    rounds' budget allows 8 samples at equal prices; E_up x E_down over the pairs that fit:
    (4, 4) 0.8704 x 0.5904 = 0.5139, (3, 5) 0.784 x 0.6723 = 0.5271, (2, 6) 0.64 x 0.7379 = 0.4723:
    (3, 5). When the broadcast costs 3x a payload (partial participation) and compresses better
    (e_up 0.2, e_down 0.4), u + 3d <= 16: (4, 4) 0.5904 x 0.8704 = 0.5139, (7, 3) 0.7903 x 0.784 =
    0.6196, (10, 2) 0.8926 x 0.64 = 0.5713: (7, 3)."""
    from e3sfc.federated.budget import per_sample, share_captured

    assert per_sample(0.8, 2) == pytest.approx(0.4) and per_sample(0.6, 2) == pytest.approx(0.2)
    assert share_captured(0.4, 3) * share_captured(0.2, 5) == pytest.approx(0.784 * 0.67232)
    s = BudgetScheduler("adaptive", 10 * 8, rounds=10, max_samples=64, last=2, last_down=2)
    assert s.choose(1, lambda u, d: u + d, remaining=80, last_cosine=0.8, last_down_cosine=0.6) == (3, 5)
    s = BudgetScheduler("adaptive", 10 * 16, rounds=10, max_samples=64, last=2, last_down=2)
    assert s.choose(1, lambda u, d: u + 3 * d, remaining=160, last_cosine=0.6, last_down_cosine=0.8) == (7, 3)
    # constant and decay send the same M both ways; a fixed broadcast M is left alone
    c = BudgetScheduler("constant", 80, rounds=10, max_samples=64)
    assert c.choose(1, lambda u, d: u + d, remaining=80, last_cosine=0.8, last_down_cosine=0.6) == (4, 4)
    assert c.choose(1, lambda u, d: u + d, remaining=80, down_fixed=6) == (2, 6)
    a = BudgetScheduler("adaptive", 80, rounds=10, max_samples=64, last=2)
    assert a.choose(1, lambda u, d: u + d, remaining=80, last_cosine=0.8, last_down_cosine=0.6, down_fixed=6)[1] == 6


def test_adaptive_run_logs_both_directions(tmp_path):
    """A run under the adaptive schedule records the uplink and broadcast M per round (metrics, summary,
    the ledger's bytes each way agree with them) and resumes to the same choices."""
    cfg = RunConfig(**QUICK, clients=4, rounds=4, schedule="adaptive", budget_bytes=4 * 2 * 4 * synth_bytes(3),
                    checkpoint_every=1)
    sim = Simulation(cfg, out_dir=tmp_path / "a")
    summary = sim.run()
    rows = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    ups, downs = summary["samples_per_round"], summary["downlink_samples_per_round"]
    assert [r["samples"] for r in rows] == ups and [r["downlink_samples"] for r in rows] == downs
    for t, (u, d) in enumerate(zip(ups, downs), start=1):
        assert sum(sim.ledger.per_client(t, "up").values()) == 4 * synth_bytes(u)
        if t < cfg.rounds:  # round t's broadcast reaches the clients as round t + 1's catch-up
            assert sum(sim.ledger.per_client(t + 1, "down").values()) == 4 * synth_bytes(d)
    b = Simulation(cfg, out_dir=tmp_path / "b")
    b.run(stop_after=2)
    b = Simulation.resume(tmp_path / "b")
    assert b.run()["downlink_samples_per_round"] == downs and b.schedule_log == ups


def test_e3sfc_resume_equals_no_stop(tmp_path):
    cfg = RunConfig(**QUICK, clients=4, fraction=0.5, rounds=4, checkpoint_every=1)
    a = Simulation(cfg, out_dir=tmp_path / "a")
    a.run()
    b = Simulation(cfg, out_dir=tmp_path / "b")
    b.run(stop_after=2)
    b = Simulation.resume(tmp_path / "b")
    b.run()
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "a/metrics.jsonl")) == strip(read_jsonl(tmp_path / "b/metrics.jsonl"))
    assert torch.equal(a.weights, b.weights)


def test_downlink_flag_works_for_any_method():
    sim = Simulation(RunConfig(**{**QUICK, "method": "topk"}, clients=3, rounds=2, downlink="3sfc", ratio="0.05"))
    sim.run()
    assert set(sim.ledger.per_client(2, "down").values()) == {synth_bytes(1)}


def test_downlink_search_has_its_own_patience():
    """The server's downlink search runs all evaluations by default, whatever the uplink's patience."""
    from e3sfc.federated.downlink import downlink_compressor

    ctx = Simulation(RunConfig(**QUICK, clients=2, rounds=1)).server.context(0, None)
    cfg = RunConfig(method="e3sfc", patience=20)
    assert cfg.downlink_patience == 0 and downlink_compressor(cfg, ctx).patience == 0
    assert downlink_compressor(RunConfig(method="e3sfc", downlink_patience=7), ctx).patience == 7
    with pytest.raises(ConfigError, match="--downlink-patience: -1 is not allowed"):
        RunConfig(method="e3sfc", downlink_patience=-1)


def test_history_setting_bounds_both_searches(monkeypatch):
    """--history reaches the clients' searches and the server's downlink search: none keeps more pairs."""
    import e3sfc.compress.threesfc as threesfc
    from e3sfc.federated.downlink import downlink_compressor

    kept = []

    class Recording(threesfc.FlatLBFGS):
        def _push(self, s, y, ys):
            super()._push(s, y, ys)
            kept.append((self.history, self.k))

    monkeypatch.setattr(threesfc, "FlatLBFGS", Recording)
    cfg = RunConfig(**{**QUICK, "steps": 3}, clients=2, rounds=2, history=4)
    sim = Simulation(cfg)
    assert sim.server.compressor.history == 4
    assert downlink_compressor(cfg, sim.server.context(0, None)).history == 4
    sim.run()
    assert {h for h, _ in kept} == {4} and max(k for _, k in kept) == 4  # the history fills, never overflows
    with pytest.raises(ConfigError, match="--history: 0 is not allowed"):
        RunConfig(method="e3sfc", history=0)


def test_search_path_is_chosen_automatically_and_overridable():
    """Unset --batch-search: batched where it was measured faster (any model on a GPU; the MLP and the
    small convolutional models on a CPU), one at a time elsewhere and under Flower; a flag wins."""
    auto = {(m, d): RunConfig(model=m, device=d).resolved_batch_search
            for m in ("mlp", "convnet", "convnet-fast", "lenet", "regnet", "mnistnet", "vgg11", "resnet18")
            for d in ("cpu", "cuda")}
    assert [m for (m, d), on in auto.items() if d == "cpu" and on] == ["mlp", "convnet", "convnet-fast", "lenet",
                                                                       "regnet"]
    assert all(on for (m, d), on in auto.items() if d == "cuda")
    assert not RunConfig(engine="flower").resolved_batch_search
    assert not RunConfig(batch_search=False).resolved_batch_search
    assert RunConfig(model="resnet18", batch_search=True).resolved_batch_search
    # what the round runs: the default simulation hands a round's searches over together
    on, off = (Simulation(RunConfig(**{**QUICK, "method": "3sfc", **kw})) for kw in ({}, {"batch_search": False}))
    assert on.server.compressor.batch_limit is None and off.server.compressor.batch_limit == 1
    assert on.summary()["batch_search"] is True and off.summary()["batch_search"] is False


@pytest.mark.parametrize("method,model", [("3sfc", "mlp"), ("e3sfc", "mlp"), ("e3sfc", "lenet")])
def test_batch_search_keeps_bytes_ef_identity_and_replicas(method, model, monkeypatch):
    """--batch-search changes only the order of floating-point sums in the search: the same bytes
    each round, the EF identity per client, and (E-3SFC) bit-identical replicas; cosines close.
    The MLP batches the closed-form objective, LeNet the autograd form (torch.func)."""
    cfg = dict(QUICK, method=method, model=model, clients=6, fraction=0.5, rounds=3)
    seq = Simulation(RunConfig(**cfg, batch_search=False))
    seq.run()
    bat = Simulation(RunConfig(**cfg, batch_search=True))
    targets = {}
    orig = ErrorFeedback.update

    def spy(self, k, target, decoded):
        orig(self, k, target, decoded)
        targets[k] = (target.clone(), decoded.clone(), self.residuals[k].clone())

    batched = []  # sizes of the batched evaluations, to see that the batch ran
    cls = synth_mlp.MLPCosineMatchBatch if model == "mlp" else synth.CosineMatchBatch
    call = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, zs: batched.append(len(zs)) or call(self, zs))
    ErrorFeedback.update = spy
    try:
        bat.run()
    finally:
        ErrorFeedback.update = orig
    assert batched and max(batched) == 3  # the 3 participants' searches evaluated together
    for t in (1, 2, 3):
        for way in ("up", "down"):
            assert bat.ledger.per_client(t, way) == seq.ledger.per_client(t, way)
    assert targets and all(torch.allclose(d + e, tau, rtol=0, atol=1e-6) for tau, d, e in targets.values())
    for a, b in zip(seq.metrics, bat.metrics):
        assert a["cosine"] == pytest.approx(b["cosine"], abs=0.05)
    if method == "e3sfc":
        for k in range(6):
            assert torch.equal(bat.sync(bat.round + 1, k), bat.weights)


@pytest.mark.parametrize("schedule", ["constant", "decay", "adaptive"])
@pytest.mark.parametrize("rounds", [5, 10, 100])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_every_schedule_spends_95_to_100_percent_of_the_budget(schedule, rounds, fraction):
    """The scheduler against the server's cost model: round t commits its participants' uplinks and a
    broadcast for every client (none after the last round); the budget is 3x the M = 1 minimum."""
    clients = 10
    part = max(1, int(clients * fraction + 0.5))
    up, down = (lambda m: 35 + 794 * m), (lambda m: 35 + 794 * m)  # 8-bit features on 28x28, 10 classes

    def cost(m, md, last):
        return part * up(m) + (0 if last else clients * down(md))

    budget = 3 * sum(cost(1, 1, t == rounds) for t in range(1, rounds + 1))
    sch = BudgetScheduler(schedule, budget, rounds, samples=1, max_samples=64, target_cosine=0.3)
    committed, rng = 0, np.random.default_rng(rounds)
    cos = down_cos = None
    for t in range(1, rounds + 1):
        m, md = sch.choose(t, lambda m, md: cost(m, md, t == rounds), budget - committed, cos, down_cos)
        committed += cost(m, md, t == rounds)
        assert committed <= budget
        cos, down_cos = (float(c) for c in rng.uniform(0.05, 0.6, 2))  # what the round would measure
    assert committed >= 0.95 * budget, (schedule, rounds, fraction, committed / budget)


@pytest.mark.parametrize("schedule", ["constant", "adaptive"])
def test_a_run_commits_95_to_100_percent_of_its_budget(schedule):
    cfg = RunConfig(**QUICK, clients=6, fraction=0.5, rounds=6, schedule=schedule, samples=1, feature_bits=8)
    probe = Simulation(cfg)
    per_round = probe.server.round_cost(1, 3, 0, last=False)
    budget = 3 * 6 * per_round
    sim = Simulation(cfg.replace(budget_bytes=budget))
    sim.run()
    committed = sim.ledger.total("up") + sim.ledger.total("down") + int(sim.server.downlink.owed.sum())
    assert 0.95 * budget <= committed <= budget, (committed / budget, sim.schedule_log)


def test_a_budget_that_buys_many_times_samples_warns_once_before_round_1(caplog):
    """A budget whose even share a round buys M > 4x --samples: one warning when the run is built (before
    round 1) with that M, the search-time factor and what keeps M near --samples; a modest budget: none."""
    import logging

    cfg = RunConfig(**QUICK, clients=4, rounds=3)
    per_round = Simulation(cfg).server.round_cost  # (M, participants, dense syncs, last)
    with caplog.at_level(logging.WARNING, logger="e3sfc"):
        sim = Simulation(cfg.replace(budget_bytes=3 * per_round(10, 4, 0, last=False)))
    warned = [r.getMessage() for r in caplog.records if "--budget-bytes" in r.getMessage()]
    assert sim.round == 0 and len(warned) == 1, warned
    assert "about M = 10 synthetic samples a payload, 10x --samples 1" in warned[0]
    assert "search takes about 10x as long as at M = 1" in warned[0]
    assert f"raise --rounds (to about {3 * per_round(10, 4, 0, False) // per_round(1, 4, 0, False):,})" in warned[0]
    assert f"lower --budget-bytes (to about {3 * per_round(1, 4, 0, False):,})" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="e3sfc"):
        Simulation(cfg.replace(budget_bytes=3 * per_round(4, 4, 0, last=False)))  # 4x: no warning
        capped = Simulation(cfg.replace(budget_bytes=3 * per_round(12, 4, 0, last=False), max_samples=8))
    warned = [r.getMessage() for r in caplog.records if "--budget-bytes" in r.getMessage()]
    assert len(warned) == 1 and "M = 8 synthetic samples a payload (--max-samples 8: the budget buys more)" in \
        warned[0] and capped.round == 0


def test_uplink_bytes_per_client_round_is_the_ledgers_mean_when_m_varies():
    """summary.json's uplink_bytes_per_client_round under a budget (M_t varies): the mean of what the
    ledger counted, not one payload at --samples."""
    cfg = RunConfig(**QUICK, clients=3, rounds=4, samples=1, schedule="decay", decay_rate=0.5,
                    budget_bytes=4 * 6 * synth_bytes(6))
    sim = Simulation(cfg)
    s = sim.run()
    assert len(set(s["samples_per_round"])) > 1, s["samples_per_round"]
    mean = sum(3 * synth_bytes(m) for m in s["samples_per_round"]) / (3 * 4)
    assert s["uplink_bytes_per_client_round"] == round(mean) == round(sim.ledger.total("up") / 12)
    assert s["uplink_bytes_per_client_round"] != synth_bytes(1)


def test_a_custom_model_on_the_autograd_search_gets_one_hint(caplog):
    """A registered model of one's own that takes the autograd form of the search: one warning when the
    run is built (E-3SFC searches both ways: still one); a custom Linear/ReLU chain (the closed form), a
    built-in model and a method without the search: none."""
    import logging

    from torch import nn

    from e3sfc.models import available_models, register_model

    def cnn(shape, classes):
        return nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * shape[1] * shape[2], classes))

    def chain(shape, classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], 16), nn.ReLU(),
                             nn.Linear(16, classes))

    for name, builder in (("hint-cnn", cnn), ("hint-chain", chain)):
        if name not in available_models():
            register_model(name, builder)

    def hints(**kw) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="e3sfc"):
            Simulation(RunConfig(**{**QUICK, "clients": 2, "rounds": 1, **kw}))
        return [r for r in caplog.records if "generic (autograd)" in r.getMessage()]

    (hint,) = hints(model="hint-cnn")
    assert hint.levelno == logging.WARNING and "--model hint-cnn takes the generic (autograd) form" in \
        hint.getMessage() and "slower" in hint.getMessage()
    assert "--batch-search, off for it unless set, may help" in hint.getMessage()
    assert len(hints(model="hint-cnn", method="3sfc", batch_search=True)) == 1
    assert "--batch-search" not in hints(model="hint-cnn", batch_search=True)[0].getMessage()
    assert hints(model="hint-chain") == [] and hints(model="lenet") == []
    assert hints(model="hint-cnn", method="topk") == []
    assert hints(model="hint-chain", feature_res=4) == []  # upsampled features keep the closed form (Upsampled)
