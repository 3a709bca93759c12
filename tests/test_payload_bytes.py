"""``--payload-bytes B`` (3sfc, e3sfc): the method picks the features' resolution R, the samples M and 8-bit
features that fit B for the model's input (docs/design.md §1.1), logs the choice, refuses explicit sizes and a
budget schedule in one line; the Flower add-on's default where an app gives no sizing."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from conftest import CLI_FAST, one_line_error
from e3sfc.cli import main
from e3sfc.compress import make_compressor
from e3sfc.compress.base import Context
from e3sfc.compress.threesfc import REFERENCE_PAYLOAD, ThreeSFC
from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation, get_flat
from e3sfc.models import build_model

KB1 = 1000


def _ctx(model: str, shape: tuple[int, ...], client: int = -1) -> Context:
    m = build_model(model, shape, 10, seed=0).eval()
    return Context(m, get_flat(m), shape, 10, client=client)


def test_reference_payload_is_m1_float32_at_28x28():
    # the published payload of one float32 sample of a 1x28x28 input, 10 classes: 4 (784 + 10 + 1) + 35 header
    assert REFERENCE_PAYLOAD == 4 * (784 + 10 + 1) + 35 == 3215
    ctx = _ctx("mlp", (1, 28, 28))
    assert make_compressor("3sfc").payload_bytes(ctx) == REFERENCE_PAYLOAD


@pytest.mark.parametrize("model,shape,budget,expected", [
    ("mlp", (1, 28, 28), REFERENCE_PAYLOAD, (0, 4, 8, 3215)),    # full resolution, M = 4 (the measured best)
    ("mlp", (1, 28, 28), KB1, (8, 12, 8, 927)),
    ("lenet", (3, 32, 32), REFERENCE_PAYLOAD, (8, 15, 8, 3069)),  # 8x8 features (the probe's best at ~3.2 KB)
    ("lenet", (3, 32, 32), KB1, (4, 16, 8, 967)),
    ("mlp", (1, 8, 8), REFERENCE_PAYLOAD, (0, 42, 8, 3147)),      # a small input: full resolution, many samples
    ("mlp", (1, 8, 8), KB1, (0, 12, 8, 927)),
    ("mlp", (1, 8, 8), 200, (4, 6, 8, 195)),                      # no R reaches its minimum: the most samples
])
def test_the_choice_fits_the_budget_exactly(model, shape, budget, expected):
    ctx = _ctx(model, shape)
    comp = make_compressor("3sfc", payload_bytes=budget)
    comp.check_context(ctx)
    r, m, bits, size = comp.fitted
    assert comp.fitted == expected
    assert (comp.feature_res, comp.samples, comp.feature_bits) == (r, m, bits)
    assert comp.payload_bytes(ctx) == size <= budget
    assert m == 64 or ThreeSFC(samples=m + 1, feature_bits=bits, feature_res=r).payload_bytes(ctx) > budget
    # a real payload is that many bytes
    small = make_compressor("3sfc", payload_bytes=budget, steps=1, max_iter=2)
    small.check_context(ctx)
    ctx.generator = torch.Generator().manual_seed(0)
    payload, _ = small.compress(torch.randn(ctx.num_params, generator=ctx.generator) * 1e-2, ctx)
    assert len(small.encode(payload)) == size


def test_a_text_model_keeps_its_own_samples_shape():
    m = build_model("textbag", (24,), 4, seed=0, vocab_size=50).eval()
    from e3sfc.models import synthetic_shape
    ctx = Context(m, get_flat(m), synthetic_shape(m, (24,)), 4)
    comp = make_compressor("3sfc", payload_bytes=KB1)
    comp.check_context(ctx)
    assert comp.feature_res == 0 and comp.samples >= 1 and comp.payload_bytes(ctx) <= KB1


def test_the_choice_is_logged_in_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="e3sfc"):
        make_compressor("3sfc", payload_bytes=REFERENCE_PAYLOAD).check_context(_ctx("lenet", (3, 32, 32)))
        make_compressor("3sfc", payload_bytes=REFERENCE_PAYLOAD).check_context(_ctx("lenet", (3, 32, 32), client=3))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == ["3sfc: --payload-bytes 3215 -> R=8, M=15, 8-bit (3,069 B a payload; inputs 3x32x32)"]


def test_off_by_default():
    comp = make_compressor("3sfc")
    comp.check_context(_ctx("lenet", (3, 32, 32)))
    assert comp.fitted is None and (comp.samples, comp.feature_bits, comp.feature_res) == (1, 32, 0)


@pytest.mark.parametrize("given", [dict(samples=4), dict(feature_bits=8), dict(feature_res=8)])
def test_explicit_sizes_are_refused_with_it(given):
    comp = make_compressor("3sfc", payload_bytes=REFERENCE_PAYLOAD, **given)
    with pytest.raises(ConfigError, match="--payload-bytes: 3215 is not allowed with --"):
        comp.check_context(_ctx("lenet", (3, 32, 32)))


def test_too_small_a_budget_is_refused():
    with pytest.raises(ConfigError, match=r"--payload-bytes: 50 is too small for this model; its smallest payload "
                                          r"\(M = 1, 8-bit, R = 4\) is 97 bytes"):
        make_compressor("3sfc", payload_bytes=50).check_context(_ctx("lenet", (3, 32, 32)))


@pytest.mark.parametrize("argv,needle", [
    (["--method", "e3sfc", "--payload-bytes", "3215", "--budget-bytes", "1000000"],
     "--payload-bytes: 3215 is not allowed with --budget-bytes 1000000; the budget scheduler sizes"),
    (["--method", "3sfc", "--payload-bytes", "3215", "--schedule", "decay"],
     "--payload-bytes: 3215 is not allowed with --schedule decay"),
    (["--method", "3sfc", "--payload-bytes", "3215", "--samples", "4"],
     "--payload-bytes: 3215 is not allowed with --samples 4; it picks"),
    (["--method", "topk", "--payload-bytes", "3215"], "--payload-bytes: 3215 is not allowed"),
    (["--method", "3sfc", "--payload-bytes", "-1"], "--payload-bytes: -1 is not allowed"),
])
def test_bad_combinations_are_one_line_exit_2(argv, needle, capsys):
    assert main(["run", *CLI_FAST, *argv]) == 2
    assert needle in one_line_error(capsys)


@pytest.mark.parametrize("method", ["3sfc", "e3sfc"])
def test_a_run_sends_the_chosen_payloads(method):
    """digits (1x8x8), MLP, B = 1 KB: every payload is the 927 bytes of M = 12 at 8 bits, both ways."""
    sim = Simulation(RunConfig(dataset="digits", batch_size=32, lr=0.05, steps=1, max_iter=2, threads=1,
                               model="mlp", method=method, payload_bytes=KB1, clients=3, rounds=1))
    summary = sim.run()
    row = sim.metrics[-1]
    assert row["samples"] == 12
    assert row["uplink_bytes"] == 3 * 927
    fit = {"feature_res": 0, "samples": 12, "feature_bits": 8, "bytes": 927}
    assert summary["payload_fit"] == {"uplink": fit, **({"downlink": fit} if method == "e3sfc" else {})}
    if method == "e3sfc":
        assert sim.server.downlink.compressor.fitted == (0, 12, 8, 927)


def test_the_cli_summary_says_what_payload_bytes_picked(tmp_path, capsys):
    assert main(["run", *CLI_FAST, "--method", "3sfc", "--payload-bytes", str(KB1), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "uplink payload    --payload-bytes picked R = the input size, M = 12, 8-bit (927 B)" in out, out
    assert "downlink payload" not in out


# ---------------------------------------------------------------- the Flower add-on's default

flwr = pytest.importorskip("flwr")


class CNN(nn.Module):
    """Flower's quickstart Net (3x32x32), without BatchNorm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x))).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_addon_default_is_the_reference_payload_unless_sized():
    from e3sfc.flower.addon import DEFAULT_PAYLOAD_BYTES, settings
    assert DEFAULT_PAYLOAD_BYTES == REFERENCE_PAYLOAD
    assert settings(run_config={"e3sfc-method": "3sfc"}).payload_bytes == REFERENCE_PAYLOAD
    assert settings("e3sfc").payload_bytes == REFERENCE_PAYLOAD
    assert settings("topk", downlink="3sfc").payload_bytes == REFERENCE_PAYLOAD
    assert settings("topk").payload_bytes == 0
    for given in ({"e3sfc-samples": 4}, {"e3sfc-feature-bits": 8}, {"e3sfc-feature-res": 8},
                  {"e3sfc-payload-bytes": 900}, {"e3sfc-budget-bytes": 10 ** 7}):
        cfg = settings(run_config={"e3sfc-method": "e3sfc", **given})
        assert cfg.payload_bytes == given.get("e3sfc-payload-bytes", 0)
    assert settings("3sfc", samples=4).payload_bytes == 0


def test_addon_default_sends_at_most_3_3_kb_on_a_3x32x32_cnn():
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.app import Context as FlwrContext
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from e3sfc.flower.addon import CompressedStrategy, compression_mod

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        run_config = {"e3sfc-method": "3sfc", "e3sfc-steps": 1, "e3sfc-max-iter": 3}
        strategy = CompressedStrategy(FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1), CNN,
                                      (3, 32, 32), 10, run_config=run_config)
        mod = compression_mod(CNN, (3, 32, 32), 10)

        class Grid:
            def get_node_ids(self):
                return [1, 2]

        def train(msg: Message, ctx) -> Message:
            m = CNN()
            m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
            g = torch.Generator().manual_seed(ctx.node_id)
            x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
            nn.functional.cross_entropy(m(x), y).backward()
            with torch.no_grad():
                for p in m.parameters():
                    p -= 0.1 * p.grad
            return Message(RecordDict({"arrays": ArrayRecord(m.state_dict()),
                                       "metrics": MetricRecord({"num-examples": 16})}), reply_to=msg)

        arrays = ArrayRecord(CNN().state_dict())
        msgs = list(strategy.configure_train(1, arrays, ConfigRecord({"lr": 0.1}), Grid()))
        ctxs = {k: FlwrContext(run_id=1, node_id=k, node_config={}, state=RecordDict(), run_config=run_config)
                for k in (1, 2)}
        replies = [mod(m, ctxs[m.metadata.dst_node_id], train) for m in msgs]
        assert strategy.server.compressor.fitted == (8, 15, 8, 3069)
        for r in replies:
            assert r.content["metrics"]["e3sfc-uplink-bytes"] <= 3300
            assert r.content["metrics"]["e3sfc-dense-bytes"] > 200_000
        _, metrics = strategy.aggregate_train(1, replies)
        assert metrics["e3sfc-refused"] == 0 and metrics["e3sfc-uplink-bytes"] <= 2 * 3300
        # the round's metrics say what the fit picked and what a payload costs (the blob, before Flower's records)
        assert (metrics["e3sfc-fit-feature-res"], metrics["e3sfc-fit-samples"], metrics["e3sfc-fit-feature-bits"]
                ) == (8, 15, 8)
        assert metrics["e3sfc-payload-mean-bytes"] == 3069
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


@pytest.mark.parametrize("model", ["quickcnn", "lenet"])
def test_the_cnn_config_picks_8x8_features_on_a_3x32x32_cnn(model):
    """Its own model (quickcnn) and the one its comment suggests for CIFAR-10 (lenet): the same fit."""
    from pathlib import Path

    from e3sfc.compress import build_compressor
    from e3sfc.config import load_toml
    cfg = RunConfig.from_dict(load_toml(Path(__file__).parents[1] / "configs" / "e3sfc-cnn.toml"))
    assert cfg.model == "quickcnn"
    options = {**cfg.to_dict(), "batch_search": False}
    comp = build_compressor(cfg.method, options, cfg.ratio, _ctx(model, (3, 32, 32)))
    assert comp.fitted == (8, 15, 8, 3069)
