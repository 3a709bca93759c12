from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from e3sfc.compress import ErrorFeedback, make_compressor
from e3sfc.compress.base import Context
from e3sfc.config import RunConfig
from e3sfc.federated import (
    ClientUpdate, Simulation, get_flat, local_train, sample_clients, server_step,
)
from e3sfc.models import build_model
from e3sfc.wire import Payload

SMALL = dict(dataset="digits", model="mlp", clients=4, rounds=3, batch_size=32, lr=0.05)


def test_local_train_one_full_batch_is_one_sgd_step():
    torch.manual_seed(0)
    m = build_model("mlp", (1, 8, 8), 10, seed=1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    w0 = get_flat(m)
    loss = F.cross_entropy(m(x), y)
    g = torch.cat([t.flatten() for t in torch.autograd.grad(loss, list(m.parameters()))])
    delta = local_train(m, w0, x, y, epochs=1, batch_size=16, lr=0.1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(delta, -0.1 * g, rtol=1e-5, atol=1e-7)


def test_client_lr_decays_per_participation():
    from e3sfc.protocol import client_lr
    cfg = RunConfig(lr=0.01, lr_decay=0.99)
    assert client_lr(cfg, 0) == 0.01
    assert client_lr(cfg, 3) == pytest.approx(0.01 * 0.99 ** 3)


def test_server_step_uniform_and_weighted_means():
    m = build_model("mlp", (1, 8, 8), 10, seed=1)
    w = get_flat(m)
    ctx = Context(m, w, (1, 8, 8), 10)
    comp = make_compressor("fedavg")
    d1, d2 = torch.ones_like(w), 3 * torch.ones_like(w)
    ups = [ClientUpdate(0, comp.encode(Payload.of(0, d1)), 10),
           ClientUpdate(1, comp.encode(Payload.of(0, d2)), 30)]
    assert torch.allclose(server_step(ctx, ups, comp).delta, 2 * torch.ones_like(w))
    assert torch.allclose(server_step(ctx, ups, comp, weighted=True).delta, 2.5 * torch.ones_like(w))


def test_server_rejects_malformed_payload_and_goes_on():
    m = build_model("mlp", (1, 8, 8), 10, seed=1)
    w = get_flat(m)
    ctx = Context(m, w, (1, 8, 8), 10)
    comp = make_compressor("fedavg")
    good = ClientUpdate(0, comp.encode(Payload.of(0, torch.ones_like(w))), 10)
    short = ClientUpdate(1, comp.encode(Payload.of(0, torch.ones(5))), 10)
    agg = server_step(ctx, [good, short], comp)
    assert agg.accepted == [0] and 1 in agg.rejected
    assert torch.allclose(agg.delta, torch.ones_like(w))


def test_sampling_seeded_and_sized():
    a = sample_clients(1, 5, 100, 10)
    assert a == sample_clients(1, 5, 100, 10) and len(a) == 10 and a == sorted(set(a))
    assert a != sample_clients(1, 6, 100, 10)
    assert sample_clients(1, 5, 7, 7) == list(range(7))


def test_fedavg_bytes_are_exact():
    cfg = RunConfig(**SMALL, fraction=0.5)
    sim = Simulation(cfg)
    sim.run()
    p = sim.num_params
    dense = 4 * p + 11  # float32 payload + wire header (5 + 2 + 4)
    for t in range(1, 4):
        up, down = sim.ledger.per_client(t, "up"), sim.ledger.per_client(t, "down")
        assert len(up) == 2 and set(up.values()) == {dense}
        assert set(down.values()) == {dense} and up.keys() == down.keys()
    assert sim.summary()["total_uplink_bytes"] == 3 * 2 * dense


def test_fedavg_learns_on_digits():
    sim = Simulation(RunConfig(**{**SMALL, "rounds": 5}))
    s = sim.run()
    assert s["final_accuracy"] > 0.8


def test_resume_equals_no_stop(tmp_path):
    cfg = RunConfig(**{**SMALL, "rounds": 4, "fraction": 0.5, "checkpoint_every": 1})
    full = Simulation(cfg, out_dir=tmp_path / "a")
    full.run()
    part = Simulation(cfg, out_dir=tmp_path / "b")
    part.run(stop_after=2)
    resumed = Simulation.resume(tmp_path / "b")
    assert resumed.round == 2
    resumed.run()
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    from e3sfc.io import read_jsonl
    assert strip(read_jsonl(tmp_path / "a/metrics.jsonl")) == strip(read_jsonl(tmp_path / "b/metrics.jsonl"))
    assert torch.equal(full.weights, resumed.weights)


def test_resume_drops_rows_written_after_the_checkpoint(tmp_path):
    cfg = RunConfig(**{**SMALL, "rounds": 4, "checkpoint_every": 2})
    sim = Simulation(cfg, out_dir=tmp_path)
    sim.run(stop_after=3)  # checkpoint at 2, but also the final save at 3
    from e3sfc.io import read_jsonl
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["round"] == 3 and len(read_jsonl(tmp_path / "metrics.jsonl")) == 3


def test_metrics_rows_are_appended_and_a_resume_drops_the_later_ones(tmp_path):
    """metrics.jsonl grows by one appended row per evaluation (the same file throughout, never
    rewritten); a resume rewrites it once with its checkpoint's rows, then appends again."""
    from e3sfc.io import read_jsonl
    cfg = RunConfig(**{**SMALL, "rounds": 4, "checkpoint_every": 2})
    path, seen = tmp_path / "metrics.jsonl", []
    sim = Simulation(cfg, out_dir=tmp_path)
    save = sim.checkpointer.save
    sim.checkpointer.save = lambda t: save(t) if t == 2 else None  # as if killed after round 3's row
    sim.run(stop_after=3, progress=lambda t, row: seen.append((path.stat().st_ino, len(read_jsonl(path)))))
    assert seen == [(seen[0][0], 1), (seen[0][0], 2), (seen[0][0], 3)]
    resumed = Simulation.resume(tmp_path)
    assert resumed.round == 2 and len(resumed.metrics) == 2
    resumed.run()
    assert [r["round"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    assert read_jsonl(path) == resumed.metrics


def test_ledger_running_totals_match_a_rescan():
    from e3sfc.metrics import DOWN, UP, Ledger
    led = Ledger()
    for t, k, d, n in [(1, 0, UP, 5), (1, 1, UP, 7), (1, 0, DOWN, 3), (2, 0, UP, 11), (3, 2, DOWN, 13)]:
        led.add(t, k, d, n)
    assert (led.total(UP), led.total(DOWN)) == (23, 16)
    assert (led.total(UP, upto=1), led.total(DOWN, upto=2)) == (12, 3)
    again = Ledger()
    again.add(9, 9, UP, 100)
    again.load_state_dict(led.state_dict())
    assert (again.total(UP), again.total(DOWN)) == (23, 16) and list(again.rows()) == list(led.rows())


def test_appended_rows_follow_the_umask(tmp_path):
    import os

    from e3sfc.io import append_jsonl, read_jsonl
    old = os.umask(0o077)
    try:
        append_jsonl(tmp_path / "m.jsonl", [{"a": 1}])
        append_jsonl(tmp_path / "m.jsonl", [{"b": 2}, {"c": 3}])
    finally:
        os.umask(old)
    assert (tmp_path / "m.jsonl").stat().st_mode & 0o777 == 0o600
    assert read_jsonl(tmp_path / "m.jsonl") == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_identity_round_matches_manual_fedavg():
    cfg = RunConfig(**{**SMALL, "rounds": 1, "lr_decay": 1.0})
    sim = Simulation(cfg)
    w0 = sim.weights.clone()
    sim.run()
    from e3sfc.federated.runtime import TRAINING, derive_seed
    deltas = []
    for k, (x, y) in enumerate(sim.client_data):
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, TRAINING, 1, k))
        deltas.append(local_train(sim.train_model, w0, x, y, epochs=1, batch_size=32, lr=0.05, generator=g))
    agg = torch.zeros_like(w0)
    for d in deltas:
        agg.add_(d, alpha=1 / len(deltas))
    assert torch.equal(sim.weights, w0 + agg)


def test_ef_two_rounds_by_hand_through_topk():
    """Top-2 of 4 (global) with error feedback, every number computed by hand:
    round 1: tau = [3, -1, 0.5, 2] -> sent [3, 0, 0, 2], residual [0, -1, 0.5, 0];
    round 2: delta = [1, 1, 1, 1] -> tau = [1, 0, 1.5, 1] -> sent 1.5 and one of the two 1s, and the
    residual keeps the other 1."""
    model = torch.nn.Linear(1, 2)  # 4 parameters: weight (2, 1), bias (2,)
    ctx = Context(model, torch.zeros(4), (1,), 2)
    comp = make_compressor("topk", ratio=0.5, topk_scope="global")
    ef = ErrorFeedback()
    sent = []
    for delta in ([3.0, -1.0, 0.5, 2.0], [1.0, 1.0, 1.0, 1.0]):
        tau = ef.target(0, torch.tensor(delta))
        payload, _ = comp.compress(tau, ctx)
        dec = comp.decompress(comp.decode(comp.encode(payload), ctx), ctx)
        ef.update(0, tau, dec)
        sent.append(dec.tolist())
    assert sent[0] == [3.0, 0.0, 0.0, 2.0]
    assert sent[1][2] == 1.5 and sorted(sent[1]) == [0.0, 0.0, 1.0, 1.5]
    assert ef.residuals[0].tolist() == [1.0 - sent[1][0], 0.0, 0.0, 1.0 - sent[1][3]]


def test_the_configs_out_is_the_run_folder(tmp_path):
    """RunConfig(out=...) alone writes the run folder (it used to be ignored without out_dir=)."""
    out = tmp_path / "run"
    Simulation(RunConfig(**SMALL, method="fedavg", out=str(out))).run()
    assert (out / "metrics.jsonl").is_file() and (out / "summary.json").is_file()

@pytest.mark.parametrize("extra", [
    {"fraction": 0.5},
    # compressed downlink (its last broadcast is owed to no one) and an evaluation only the last round makes
    {"method": "e3sfc", "samples": 1, "steps": 2, "max_iter": 5, "fraction": 0.5, "eval_every": 3},
])
def test_extending_a_finished_run_equals_a_run_of_that_many_rounds(tmp_path, extra):
    """run 4 rounds, then resume with rounds=7: the same rows (timing aside), ledger and weights as 7
    rounds from the start; config.json says 7."""
    import json

    from e3sfc.io import read_jsonl
    cfg = RunConfig(**{**SMALL, **extra, "rounds": 7, "checkpoint_every": 0})
    full = Simulation(cfg, out_dir=tmp_path / "a")
    full.run()
    Simulation(cfg.replace(rounds=4), out_dir=tmp_path / "b").run()
    longer = Simulation.resume(tmp_path / "b", rounds=7)
    assert longer.round == 4 and longer.cfg.rounds == 7
    longer.run()
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "a/metrics.jsonl")) == strip(read_jsonl(tmp_path / "b/metrics.jsonl"))
    assert read_jsonl(tmp_path / "a/ledger.jsonl") == read_jsonl(tmp_path / "b/ledger.jsonl")
    assert torch.equal(full.weights, longer.weights)
    assert json.loads((tmp_path / "b/config.json").read_text())["rounds"] == 7
    assert json.loads((tmp_path / "b/summary.json").read_text())["rounds"] == 7
    Simulation.resume(tmp_path / "b")  # its checkpoint and config.json agree


def test_extension_is_refused_where_it_could_differ(tmp_path):
    from e3sfc.errors import ConfigError
    Simulation(RunConfig(**{**SMALL, "rounds": 3}), out_dir=tmp_path / "a").run()
    with pytest.raises(ConfigError, match="--rounds: 2 is not allowed with --resume; expected more than the 3"):
        Simulation.resume(tmp_path / "a", rounds=2)
    cfg = RunConfig(**{**SMALL, "method": "e3sfc", "samples": 1, "steps": 1, "max_iter": 2, "rounds": 2,
                       "budget_bytes": 10_000_000})
    Simulation(cfg, out_dir=tmp_path / "b").run()
    with pytest.raises(ConfigError, match="--rounds: a run with --budget-bytes cannot be extended"):
        Simulation.resume(tmp_path / "b", rounds=4)


def test_device_auto_resolves_once_and_config_json_records_the_device_used(tmp_path):
    import json
    sim = Simulation(RunConfig(**{**SMALL, "rounds": 1}), out_dir=tmp_path)
    assert RunConfig().device == "auto" and sim.cfg.device == ("cuda" if torch.cuda.is_available() else "cpu")
    sim.run()
    assert json.loads((tmp_path / "config.json").read_text())["device"] == sim.cfg.device
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == sim.cfg.device and summary["device_asked"] == "auto"
