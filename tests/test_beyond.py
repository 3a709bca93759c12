"""Issue 16's options for the synthesis methods: per-tensor scales (``--scales tensor``), warm start
(``--warm-start``) and the broadcast's own M (``--downlink-samples``): exact bytes, the EF identity,
the objective's gradient, bit-identical replicas, resume, and one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from e3sfc import wire
from e3sfc.compress import ErrorFeedback, make_compressor
from e3sfc.compress.base import Context
from e3sfc.compress.search import cosine_match
from e3sfc.compress.synth import synth_grad
from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation, get_flat
from e3sfc.models import build_model
from conftest import assert_resume_equals_no_stop

QUICK = dict(dataset="digits", model="mlp", batch_size=32, lr=0.05, steps=2, max_iter=5, threads=1)


def _ctx(model="mlp", shape=(1, 8, 8), dtype=torch.float64, seed=0):
    m = build_model(model, shape, 10, seed=1).to(dtype)
    m.eval()
    return Context(m, get_flat(m), shape, 10, generator=torch.Generator().manual_seed(seed))


def _target(ctx, seed=3):
    """A target with some structure: the gradient of a few random labelled images plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((6, *ctx.input_shape), generator=g, dtype=ctx.weights.dtype)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (6,), generator=g), 10).to(ctx.weights.dtype)
    return -synth_grad(ctx.model, x, y) + 1e-3 * torch.randn(ctx.num_params, generator=g, dtype=ctx.weights.dtype)


# ------------------------------------------------------------------ per-tensor scales
@pytest.mark.parametrize("bits", [32, 16, 8])
def test_tensor_scales_exact_bytes(bits):
    """L float32 scales replace the one alpha: 4 (L - 1) more bytes of data, and for float features
    one more header dimension (the scale field is (L,) instead of a scalar)."""
    ctx = _ctx(shape=(1, 28, 28), dtype=torch.float32)
    L = len(ctx.param_shapes)  # 6 for the MLP
    one = make_compressor("3sfc", samples=2, feature_bits=bits, steps=1, max_iter=3)
    per = make_compressor("3sfc", samples=2, feature_bits=bits, steps=1, max_iter=3, scales="tensor")
    tau = _target(ctx)
    for c in (one, per):
        blob = c.encode(c.compress(tau, ctx)[0])
        assert len(blob) == c.payload_bytes(ctx)
    extra = 4 * (L - 1) + (4 if bits != 8 else 0)
    assert per.payload_bytes(ctx) - one.payload_bytes(ctx) == extra
    p = wire.decode(per.encode(per.compress(tau, ctx)[0]))
    assert p.fields[2].shape == ((L,) if bits != 8 else (2 + L,))


@pytest.mark.parametrize("model", ["mlp", "convnet-fast"])
def test_tensor_scales_ef_identity_float64(model):
    """||e||^2 = ||tau||^2 - sum_l (2 a_l <g_l, tau_l> - a_l^2 ||g_l||^2) with the scales a_l as sent;
    that is ||tau||^2 - sum_l <g_l, tau_l>^2 / ||g_l||^2 up to the float32 rounding of a_l."""
    ctx = _ctx(model, shape=(1, 28, 28) if model == "convnet-fast" else (1, 8, 8))
    comp = make_compressor("3sfc", samples=2, steps=2, max_iter=8, scales="tensor")
    ef = ErrorFeedback()
    ef.residuals[0] = _target(ctx, seed=5) * 0.1
    tau = ef.target(0, _target(ctx))
    payload, stats = comp.compress(tau, ctx)
    decoded = comp.decompress(comp.decode(comp.encode(payload), ctx), ctx)
    ef.update(0, tau, decoded)
    x, y, a = comp.features(payload, ctx)
    g = synth_grad(ctx.model, x, y)
    sizes = [math.prod(s) for s in ctx.param_shapes]
    q = torch.stack([gl @ tl for gl, tl in zip(g.split(sizes), tau.split(sizes))])
    n = torch.stack([gl @ gl for gl in g.split(sizes)])
    a = torch.as_tensor(np.asarray(a, np.float64))
    e2 = float(ef.residuals[0] @ ef.residuals[0])
    assert e2 == pytest.approx(float(tau @ tau - (2 * a * q - a * a * n).sum()), rel=1e-12)
    keep = n > 1e-12 * n.max()
    assert e2 == pytest.approx(float(tau @ tau - (q[keep] ** 2 / n[keep]).sum()), rel=1e-6)
    assert stats["cosine"] == pytest.approx(math.sqrt(1 - e2 / float(tau @ tau)), rel=1e-6)


def test_tensor_scales_capture_at_least_one_scale():
    """At the same features, per-tensor scales project onto a larger span: they capture at least as
    much of the target as the one alpha (the search then maximises that)."""
    ctx = _ctx()
    tau = _target(ctx)
    comp = make_compressor("3sfc", samples=2, steps=2, max_iter=8)
    x, y, _ = comp.features(comp.compress(tau, ctx)[0], ctx)
    g = synth_grad(ctx.model, x, y)
    one = abs(float(torch.nn.functional.cosine_similarity(g, tau, dim=0)))
    f = cosine_match(ctx.model, tau, tuple(x.shape), tuple(y.shape), per_tensor=True)
    _, per, _ = f(torch.cat([x.reshape(-1), y.reshape(-1)]))
    assert per >= one - 1e-12


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_tensor_objective_gradient_is_autograd(model):
    """Value and gradient of 1 - sqrt(E) + lambda (||x|| + ||y||), closed form (mlp) and the
    two-pass autograd form (lenet), against autograd straight through E."""
    ctx = _ctx(model, shape=(1, 28, 28) if model == "lenet" else (1, 8, 8))
    tau = _target(ctx)
    m = 2
    f = cosine_match(ctx.model, tau, (m, *ctx.input_shape), (m, 10), lambd=0.01, per_tensor=True)
    z = torch.randn(f.nx + m * 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    val, cos, grad = f(z)
    zz = z.clone().requires_grad_(True)
    x, y = zz[:f.nx].view(m, *ctx.input_shape), zz[f.nx:].view(m, 10)
    params = list(ctx.model.parameters())
    gs = torch.autograd.grad(-(y * torch.log_softmax(ctx.model(x), 1)).sum(1).mean(), params, create_graph=True)
    tb = tau.split([p.numel() for p in params])
    E = sum((gl.reshape(-1) @ tl) ** 2 / (gl * gl).sum() for gl, tl in zip(gs, tb)) / (tau @ tau)
    obj = 1 - E.sqrt() + 0.01 * (x.norm() + y.norm())
    (ref,) = torch.autograd.grad(obj, zz)
    assert val == pytest.approx(float(obj.detach()), rel=1e-10)
    assert cos == pytest.approx(float(E.sqrt()), rel=1e-10)
    torch.testing.assert_close(grad, ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_tensor_objective_batched_equals_alone(model):
    ctx = _ctx(model, shape=(1, 28, 28) if model == "lenet" else (1, 8, 8))
    comp = make_compressor("3sfc", samples=2, steps=1, max_iter=4, scales="tensor", batch_search=True)
    targets = [_target(ctx, seed=s) for s in (3, 4, 5)]
    ctxs = [Context(ctx.model, ctx.weights, ctx.input_shape, 10, client=k,
                    generator=torch.Generator().manual_seed(k)) for k in range(3)]
    together = comp.compress_many(targets, ctxs)
    for k in range(3):
        ctxs[k].generator = torch.Generator().manual_seed(k)
    alone = [comp.compress(t, c) for t, c in zip(targets, ctxs)]
    for (pa, sa), (pb, sb) in zip(together, alone):
        assert sa["cosine"] == pytest.approx(sb["cosine"], rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------ warm start
def test_warm_start_starts_from_the_better_of_noise_and_last_features():
    ctx = _ctx()
    tau = _target(ctx)
    comp = make_compressor("3sfc", samples=2, steps=2, max_iter=8, warm_start=True)
    payload, _ = comp.compress(tau, ctx)
    carried = comp.carry(payload, ctx)
    x, y, _ = comp.features(payload, ctx)
    assert torch.equal(carried, torch.cat([x.reshape(-1), y.reshape(-1)]))
    assert make_compressor("3sfc").carry(payload, ctx) is None  # nothing kept without the option
    # its first evaluations: fresh noise, then the carried point; the search goes on from the better
    ctx.start = carried
    ctx.generator = torch.Generator().manual_seed(0)
    steps = comp.search(tau, ctx)
    f, z0 = next(steps)
    f1 = f(z0)
    f_, z1 = steps.send(f1)
    assert torch.equal(z1, carried)
    f2 = f(z1)
    _, z2 = steps.send(f2)
    assert torch.equal(z2, carried if f2[0] < f1[0] else z0)
    # a carried point of another size (M changed) is not used
    ctx.start = carried[:-1]
    ctx.generator = torch.Generator().manual_seed(0)
    steps = comp.search(tau, ctx)
    f, z0 = next(steps)
    _, z1 = steps.send(f(z0))
    assert not torch.equal(z1, carried[:-1]) and z1.numel() == carried.numel()


# ------------------------------------------------------------------ runs: bytes, replicas, resume
OPTIONS = {
    "tensor-scales": dict(scales="tensor", feature_bits=8, samples=3),
    "warm-start": dict(warm_start=True, feature_bits=8, samples=3),
    "downlink-samples": dict(samples=1, downlink_samples=3, feature_bits=8),
    "all": dict(scales="tensor", warm_start=True, samples=2, downlink_samples=4, feature_bits=16),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_e3sfc_options_exact_bytes_replicas_and_resume(name, tmp_path):
    cfg = RunConfig(**QUICK, method="e3sfc", clients=6, fraction=0.5, rounds=4, checkpoint_every=1, **OPTIONS[name])
    whole = Simulation(cfg)
    whole.run()
    for k in range(6):
        assert torch.equal(whole.sync(whole.round + 1, k), whole.weights)
    up = whole.server.compressor.payload_bytes(whole.server.context(0, cfg.samples))
    down = whole.server.downlink.compressor.payload_bytes(whole.server.context(0, cfg.downlink_samples or cfg.samples))
    for r in whole.metrics:
        assert r["uplink_bytes"] == 3 * up
    for t in range(1, 5):  # every blob in the history has the broadcast's size
        if t in whole.server.downlink.history:
            assert len(whole.server.downlink.history[t][0]) == down
    assert_resume_equals_no_stop(cfg, whole, tmp_path / "r", stop_after=2)


def test_one_way_3sfc_with_options_resumes(tmp_path):
    cfg = RunConfig(**QUICK, method="3sfc", clients=4, rounds=3, checkpoint_every=1, scales="tensor",
                    warm_start=True, samples=2)
    whole = Simulation(cfg)
    whole.run()
    assert_resume_equals_no_stop(cfg, whole, tmp_path / "r", stop_after=1)


def test_bad_values_are_one_clear_error():
    with pytest.raises(ConfigError, match="--scales: 'layer' is not allowed; expected one of one, tensor"):
        RunConfig(method="3sfc", scales="layer")
    with pytest.raises(ConfigError, match="--scales: 'tensor' is not allowed; expected the default with --method topk"):
        RunConfig(method="topk", scales="tensor")
    with pytest.raises(ConfigError, match="--warm-start: True is not allowed"):
        RunConfig(method="fedsynth", warm_start=True)
    with pytest.raises(ConfigError, match="--downlink-samples: -1 is not allowed; expected an integer >= 0"):
        RunConfig(method="e3sfc", downlink_samples=-1)
    with pytest.raises(ConfigError, match="--downlink-samples: 3 is not allowed; expected 0 unless --downlink"):
        RunConfig(method="3sfc", downlink_samples=3)
    with pytest.raises(ConfigError, match="3sfc: scales: .block. is not allowed; expected one of one, tensor"):
        make_compressor("3sfc", scales="block")
