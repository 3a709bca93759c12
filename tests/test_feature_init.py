"""``--feature-init data``: a client's 3SFC search starts from M of its own training samples (area-averaged
down to the features' resolution) with one-hot labels instead of Gaussian noise; the server's downlink
search, which has no data, starts from noise."""

from __future__ import annotations


import pytest
import torch

from conftest import CLI_FAST, one_line_error
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


def _noise(m, shape, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((m, *shape), generator=g), torch.randn((m, classes), generator=g)


def test_data_start_by_hand():
    """Two of three samples, each 1x4x4 averaged over 2x2 blocks to 1x2x2, their labels one-hot; the
    samples are the first two of randperm(3) under the context's generator."""
    xs = torch.arange(3 * 16, dtype=torch.float32).reshape(3, 1, 4, 4)
    labels = torch.tensor([2, 0, 1])
    pick = torch.randperm(3, generator=torch.Generator().manual_seed(7))[:2]
    x, y = data_start((xs, labels), *_noise(2, (1, 2, 2), 4), torch.Generator().manual_seed(7), _ctx((1, 4, 4)))
    for row, k in enumerate(pick.tolist()):
        img = xs[k, 0]
        blocks = torch.tensor([[img[:2, :2].mean(), img[:2, 2:].mean()], [img[2:, :2].mean(), img[2:, 2:].mean()]])
        assert torch.equal(x[row, 0], blocks)
        assert y[row].tolist() == [1.0 if c == int(labels[k]) else 0.0 for c in range(4)]


def test_data_start_keeps_noise_in_the_rows_the_client_has_no_sample_for():
    """N = 2 samples, M = 5: two rows are the samples (each once), three keep the noise start: a repeated
    sample would stay a copy through the search and waste its bytes."""
    xs, labels = torch.randn(2, 1, 4, 4), torch.tensor([0, 1])
    nx, ny = _noise(5, (1, 4, 4), 4)
    x, y = data_start((xs, labels), nx, ny, torch.Generator().manual_seed(0), _ctx((1, 4, 4)))
    assert {tuple(r.tolist()) for r in x[:2].reshape(2, -1)} == {tuple(r.tolist()) for r in xs.reshape(2, -1)}
    assert torch.equal(x[2:], nx[2:]) and torch.equal(y[2:], ny[2:])
    assert sorted(y[:2].argmax(1).tolist()) == [0, 1] and y[:2].sum().item() == 2.0


def _first_point(comp, tau, ctx):
    """The point a search evaluates first: its start (x and y, flat)."""
    steps = comp.search(tau, ctx)
    try:
        return next(steps)[1]
    except StopIteration as stop:  # nothing to search: the (x, y) it returns
        x, y, _ = stop.value
        return torch.cat([x.reshape(-1), y.reshape(-1)])


def test_the_search_starts_from_the_data_and_never_sends_it_unsearched():
    """The first point evaluated is the data start (the two noise draws made first); with nothing to
    search (steps 0, or a zero target) the payload is the noise start, not the client's images."""
    xs, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    tau = torch.randn(_ctx().num_params, generator=torch.Generator().manual_seed(3)) * 0.01
    g = torch.Generator().manual_seed(0)
    nx, ny = torch.randn((3, 3, 4, 4), generator=g), torch.randn((3, 4), generator=g)
    x0, y0 = data_start((xs, labels), nx, ny, g, _ctx())
    comp = make_compressor("3sfc", samples=3, feature_bits=8, feature_res=4, steps=2, feature_init="data")
    assert torch.equal(_first_point(comp, tau, _ctx(data=(xs, labels))), torch.cat([x0.reshape(-1), y0.reshape(-1)]))
    noise = torch.cat([nx.reshape(-1), ny.reshape(-1)])
    for steps, target in ((0, tau), (2, torch.zeros_like(tau))):
        comp = make_compressor("3sfc", samples=3, feature_bits=8, feature_res=4, steps=steps, feature_init="data")
        assert torch.equal(_first_point(comp, target, _ctx(data=(xs, labels))), noise)
        z, y, alpha = comp.features(comp.decode(comp.encode(comp.compress(target, _ctx(data=(xs, labels)))[0]),
                                                _ctx()), _ctx())
        assert (z - nx).abs().max() <= nx.abs().max() / 127 / 2 + 1e-6   # the noise, to the 8-bit step
        if steps:  # a zero target: scale 0 (steps 0 scales the noise's gradient by least squares)
            assert float(torch.as_tensor(alpha).reshape(-1)[0]) == 0.0


def test_only_the_clients_searches_start_from_data(monkeypatch):
    """E-3SFC both ways: every data start is a client's (the server's downlink search has no data)."""
    import e3sfc.compress.threesfc as threesfc

    seen, orig = [], threesfc.data_start

    def spy(data, x, y, g, ctx):
        seen.append(ctx.client)
        return orig(data, x, y, g, ctx)

    monkeypatch.setattr(threesfc, "data_start", spy)
    sim = Simulation(RunConfig(**QUICK, model="lenet", method="e3sfc", samples=2, feature_res=4, clients=3, rounds=2,
                               feature_init="data"))
    sim.run()
    assert len(seen) == 6 and all(k >= 0 for k in seen)


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
    (["--method", "topk", "--downlink", "3sfc", "--feature-init", "data"],
     "--feature-init: 'data' is not allowed; expected noise with --method topk: only the clients' search starts"),
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


def test_addon_refuses_data_start():
    pytest.importorskip("flwr")
    from e3sfc.flower.addon import _Codec, settings

    with pytest.raises(ConfigError, match=r"^e3sfc add-on: feature_init=data is not allowed"):
        _Codec(lambda: build_model("lenet", (3, 8, 8), 4, seed=0), (3, 8, 8), 4, settings("3sfc", feature_init="data"))
