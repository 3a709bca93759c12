"""The authors' protocol switch (``--protocol authors``) row by row, and the aggregate cosines."""

from __future__ import annotations

import json

import numpy as np

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


# ------------------------------------------------------------------ the switch, row by row
AUTHORS = RunConfig(protocol="authors", lr=0.01, lr_decay=0.99)
OURS = RunConfig(lr=0.01, lr_decay=0.99)


def test_lr_of_round_one_and_two():
    from e3sfc.protocol import client_lr
    assert client_lr(AUTHORS, 0) == pytest.approx(0.0099) and client_lr(AUTHORS, 1) == pytest.approx(0.0099 * 0.99)
    assert client_lr(OURS, 0) == 0.01 and client_lr(OURS, 1) == pytest.approx(0.0099)


def test_lr_used_in_a_run_follows_the_protocol(monkeypatch):
    from e3sfc.federated import runtime
    seen = []
    real = runtime.local_train

    def spy(*a, **kw):
        seen.append(kw["lr"])
        return real(*a, **kw)

    monkeypatch.setattr(runtime, "local_train", spy)
    Simulation(RunConfig(**QUICK, method="fedavg", clients=1, rounds=2, protocol="authors")).run()
    assert seen == [pytest.approx(0.05 * 0.99), pytest.approx(0.05 * 0.99 ** 2)]


def test_client_split_sizes_and_client_accuracy():
    from e3sfc.protocol import split_shard
    idx = np.arange(1000, 1101)  # 101 samples: int(80.8) = 80 train, 21 held out
    train, held = split_shard(AUTHORS, 3, idx)
    assert len(train) == 80 and len(held) == 21
    assert sorted(set(train) | set(held)) == list(idx) and not set(train) & set(held)
    assert split_shard(AUTHORS, 3, idx)[0].tolist() == train.tolist()      # seeded
    assert split_shard(AUTHORS, 4, idx)[0].tolist() != train.tolist()      # per client
    assert split_shard(OURS, 3, idx)[0] is idx and len(split_shard(OURS, 3, idx)[1]) == 0
    sim = Simulation(RunConfig(**QUICK, method="fedavg", clients=3, rounds=2, protocol="authors"))
    sim.run()
    parts = sim.parts
    assert [len(x) for x, _ in sim.client_data] == [int(len(p) * 0.8) for p in parts]
    assert [len(x) for x, _ in sim.client_eval] == [len(p) - int(len(p) * 0.8) for p in parts]
    assert all(0.0 <= r["client_accuracy"] <= 1.0 for r in sim.metrics)
    assert "client_accuracy" not in Simulation(RunConfig(**QUICK, method="fedavg", clients=3, rounds=1)).run_round(1)


def test_inputs_in_unit_range_and_cifar_constants(tmp_path):
    from e3sfc.data import load_dataset
    unit = load_dataset("digits", scaling="authors")
    std = load_dataset("digits")
    assert float(unit.train_x.min()) == 0.0 and float(unit.train_x.max()) == 1.0
    assert abs(float(std.train_x.mean())) < 1e-3  # standardised
    from e3sfc.data import AUTHORS_NORMALIZE
    assert AUTHORS_NORMALIZE["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@pytest.mark.parametrize("shape,classes,params", [((1, 28, 28), 10, 31_018), ((3, 32, 32), 10, 31_594),
                                                  ((3, 32, 32), 100, 57_604)])
def test_authors_convnet_parameter_counts(shape, classes, params):
    from e3sfc.models import build_model, num_params
    m = build_model("convnet", shape, classes, seed=0)
    assert num_params(m) == params
    assert m(torch.zeros(2, *shape)).shape == (2, classes)
    assert sum(1 for x in m.modules() if isinstance(x, torch.nn.GroupNorm)) == 1  # one GroupNorm, shared
    assert num_params(build_model("convnet-fast", (1, 28, 28), 10, seed=0)) == 28_650


@pytest.mark.parametrize("k,f,ours,theirs", [(10, 1.0, 10, 10), (10, 0.15, 2, 1), (10, 0.25, 3, 2), (7, 0.5, 4, 3),
                                             (10, 0.05, 1, 1)])
def test_clients_per_round(k, f, ours, theirs):
    from e3sfc.protocol import clients_per_round
    assert clients_per_round(RunConfig(clients=k, fraction=f)) == ours
    assert clients_per_round(RunConfig(clients=k, fraction=f, protocol="authors")) == theirs


def test_selection_rule_checks_the_point_each_step_ends_at():
    """select=step: the kept point is one of the points the L-BFGS steps ended at, the best of those
    by objective; select=every keeps the best of all evaluations (never worse)."""
    from e3sfc.compress import make_compressor
    from e3sfc.compress.base import Context
    from e3sfc.federated import get_flat
    from e3sfc.models import build_model

    model = build_model("mlp", (1, 8, 8), 10, seed=1).double()
    model.eval()
    tau = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                      generator=torch.Generator().manual_seed(2))

    def run(select):
        ctx = Context(model, get_flat(model), (1, 8, 8), 10, generator=torch.Generator().manual_seed(0))
        comp = make_compressor("3sfc", samples=1, steps=3, max_iter=4, patience=0, select=select)
        steps = comp.search(tau, ctx)
        evals, f, z = [], *next(steps)
        try:
            while True:
                r = f(z)
                evals.append((z.clone(), r[0]))
                f, z = steps.send(r)
        except StopIteration as end:
            x, y, cos = end.value
        return torch.cat([x.reshape(-1), y.reshape(-1)]), evals

    best_every, evals_every = run("every")
    best_step, evals_step = run("step")
    # the optimiser's path is the same; step mode adds one evaluation where each of the 3 steps ends
    extras, i = [], 0
    for z, v in evals_step:
        if i < len(evals_every) and torch.equal(z, evals_every[i][0]):
            i += 1
        else:
            extras.append((z, v))
    assert i == len(evals_every) and len(extras) == 3
    assert torch.equal(best_every, min(evals_every, key=lambda e: e[1])[0])
    assert torch.equal(best_step, min(extras, key=lambda e: e[1])[0])


def test_no_lambda_on_the_downlink_and_protocol_errors():
    from e3sfc.federated.downlink import downlink_compressor
    from e3sfc.federated.runtime import make_context
    from e3sfc.models import build_model
    from e3sfc.errors import ConfigError
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    ctx = make_context(RunConfig(), model, torch.zeros(1), (1, 8, 8), 10, 0, -1, None)
    assert downlink_compressor(RunConfig(method="e3sfc", lambd=0.1, protocol="authors"), ctx).lambd == 0.0
    assert downlink_compressor(RunConfig(method="e3sfc", lambd=0.1), ctx).lambd == 0.1
    with pytest.raises(ConfigError, match="--protocol: 'paper' is not allowed; expected one of e3sfc, authors"):
        RunConfig(protocol="paper")


def test_a_one_sample_shard_still_trains_under_the_authors_split():
    from e3sfc.protocol import split_shard
    train, held = split_shard(AUTHORS, 0, np.array([7]))
    assert train.tolist() == [7] and len(held) == 0
    train, held = split_shard(AUTHORS, 0, np.array([], dtype=int))
    assert len(train) == 0 and len(held) == 0


def test_a_checkpoint_written_before_a_setting_existed_resumes(tmp_path):
    import torch as _torch
    cfg = RunConfig(**QUICK, method="3sfc", clients=2, rounds=2, checkpoint_every=1)
    Simulation(cfg, out_dir=tmp_path / "r").run(stop_after=1)
    ckpt = tmp_path / "r" / "checkpoint.pt"
    state = _torch.load(ckpt, weights_only=True)
    for key in ("protocol", "tensorboard", "max_len"):  # as an older version wrote them: absent
        del state["config"][key]
    from e3sfc.federated.checkpoint import CHECKSUMS, stamp
    state.pop(CHECKSUMS)
    _torch.save(stamp(state), ckpt)  # (with its checksums, as every checkpoint since they exist)
    conf = json.loads((tmp_path / "r" / "config.json").read_text())
    for key in ("protocol", "tensorboard", "max_len"):
        del conf[key]
    (tmp_path / "r" / "config.json").write_text(json.dumps(conf))
    resumed = Simulation.resume(tmp_path / "r")
    resumed.run()
    assert resumed.round == 2
