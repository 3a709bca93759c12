"""``--feature-init data``: a client's 3SFC search starts from M of its own training samples (area-averaged
down to the features' resolution) with one-hot labels instead of Gaussian noise; the server's downlink
search, which has no data, starts from noise."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import CLI_FAST, assert_resume_equals_no_stop, one_line_error
from e3sfc.cli import main
from e3sfc.compress import build_compressor, make_compressor
from e3sfc.compress.base import Context
from e3sfc.compress.threesfc import data_start
from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation, get_flat
from e3sfc.models import build_model, synthetic_shape

QUICK = dict(dataset="digits", batch_size=32, lr=0.05, steps=2, max_iter=5, threads=1)


def _ctx(shape=(3, 8, 8), data=None, seed=0):
    m = build_model("lenet", shape, 4, seed=1).eval()
    ctx = Context(m, get_flat(m), shape, 4, client=0, generator=torch.Generator().manual_seed(seed))
    if data is not None:
        ctx.extra["local_data"] = data
    return ctx


def test_data_start_by_hand():
    """Two of three samples, each 1x4x4 averaged over 2x2 blocks to 1x2x2, their labels one-hot; the
    samples are the first two of randperm(3) under the context's generator."""
    xs = torch.arange(3 * 16, dtype=torch.float32).reshape(3, 1, 4, 4)
    labels = torch.tensor([2, 0, 1])
    ctx = _ctx((1, 4, 4))
    pick = torch.randperm(3, generator=torch.Generator().manual_seed(7))[:2]
    x, y = data_start((xs, labels), (2, 1, 2, 2), (2, 4), torch.Generator().manual_seed(7), ctx)
    for row, k in enumerate(pick.tolist()):
        img = xs[k, 0]
        blocks = torch.tensor([[img[:2, :2].mean(), img[:2, 2:].mean()], [img[2:, :2].mean(), img[2:, 2:].mean()]])
        assert torch.equal(x[row, 0], blocks)
        assert y[row].tolist() == [1.0 if c == int(labels[k]) else 0.0 for c in range(4)]


def test_data_start_cycles_when_the_client_has_fewer_samples_than_m():
    xs, labels = torch.randn(2, 1, 4, 4), torch.tensor([0, 1])
    x, y = data_start((xs, labels), (5, 1, 4, 4), (5, 4), torch.Generator().manual_seed(0), _ctx((1, 4, 4)))
    assert x.shape == (5, 1, 4, 4) and y.shape == (5, 4)
    assert torch.equal(x[0], x[2]) and torch.equal(x[1], x[3]) and torch.equal(x[0], x[4])
    assert {tuple(r.tolist()) for r in x.reshape(5, -1)} == {tuple(r.tolist()) for r in xs.reshape(2, -1)}


def test_without_search_steps_the_payload_is_the_data_start():
    """steps = 0 sends the search's start: with data, the downsampled samples (to the 8-bit step) and
    one-hot labels; with noise, something else."""
    xs, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    tau = torch.randn(_ctx().num_params, generator=torch.Generator().manual_seed(3)) * 0.01
    sent = {}
    for init in ("data", "noise"):
        comp = make_compressor("3sfc", samples=3, feature_bits=8, feature_res=4, steps=0, feature_init=init)
        ctx = _ctx(data=(xs, labels))
        comp.check_context(ctx)
        z, y, _ = comp.features(comp.decode(comp.encode(comp.compress(tau, ctx)[0]), ctx), ctx)
        sent[init] = (z, y)
    # the compressor draws noise for x and y first, then the samples: replay those draws
    g = torch.Generator().manual_seed(0)
    torch.randn((3, 3, 4, 4), generator=g), torch.randn((3, 4), generator=g)
    x0, y0 = data_start((xs, labels), (3, 3, 4, 4), (3, 4), g, _ctx())
    z, y = sent["data"]
    assert (z - x0).abs().max() <= x0.abs().max() / 127 / 2 + 1e-6   # one 8-bit step of rounding at most
    assert torch.allclose(y, y0, atol=1 / 254 + 1e-6)
    assert (sent["noise"][0] - x0).abs().max() > 0.1


def test_data_start_needs_an_image_model():
    model = build_model("textbag", (24,), 4, seed=0, vocab_size=50).eval()
    ctx = Context(model, get_flat(model), synthetic_shape(model, (24,)), 4)
    with pytest.raises(ConfigError, match=r"^--feature-init: data is not allowed with this model \(its synthetic "
                       r"samples, of shape \(50,\), are not images\); expected noise$"):
        build_compressor("3sfc", {"feature_init": "data"}, "0.01", ctx)
    build_compressor("3sfc", {"feature_init": "noise"}, "0.01", ctx)


@pytest.mark.parametrize("argv,needle", [
    (["--method", "3sfc", "--feature-init", "images"], "--feature-init: 'images' is not allowed; expected one of"),
    (["--method", "topk", "--feature-init", "data"], "--feature-init: 'data' is not allowed; expected the default "
                                                     "with --method topk"),
])
def test_bad_feature_init_is_one_line_exit_2(argv, needle, capsys):
    assert main(["run", *CLI_FAST, *argv]) == 2
    assert needle in one_line_error(capsys)


def test_a_run_changes_with_the_start_and_is_deterministic():
    cfg = RunConfig(**QUICK, model="lenet", method="3sfc", samples=2, feature_bits=8, feature_res=4, clients=3,
                    rounds=2)
    runs = {}
    for init in ("noise", "data", "data"):
        sim = Simulation(cfg.replace(feature_init=init))
        sim.run()
        runs.setdefault(init, []).append(sim.weights)
    assert torch.equal(runs["data"][0], runs["data"][1])
    assert not torch.equal(runs["data"][0], runs["noise"][0])


def test_e3sfc_with_data_start_replicas_bit_identical_and_resume_equals_no_stop(tmp_path):
    cfg = RunConfig(**QUICK, model="lenet", method="e3sfc", samples=2, feature_bits=8, feature_res=4, clients=6,
                    fraction=0.5, rounds=3, checkpoint_every=1, feature_init="data")
    whole = Simulation(cfg)
    whole.run()
    for k in range(6):
        assert torch.equal(whole.sync(whole.round + 1, k), whole.weights)
    assert all(math.isfinite(r["accuracy"]) for r in whole.metrics)
    assert_resume_equals_no_stop(cfg, whole, tmp_path / "r", stop_after=1)


def test_addon_refuses_data_start():
    pytest.importorskip("flwr")
    from e3sfc.flower.addon import _Codec, settings

    with pytest.raises(ConfigError, match=r"^e3sfc add-on: feature_init=data is not allowed"):
        _Codec(lambda: build_model("lenet", (3, 8, 8), 4, seed=0), (3, 8, 8), 4, settings("3sfc", feature_init="data"))
