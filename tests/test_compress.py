from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from e3sfc import wire
from e3sfc.compress import ErrorFeedback, available_methods, get_compressor_class, make_compressor
from e3sfc.compress.base import Context
from torch import nn
from e3sfc.compress.lbfgs import FlatLBFGS
from e3sfc.compress.synth import CosineMatch, synth_grad
from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError, PayloadError
from e3sfc.federated import get_flat, local_train
from e3sfc.federated.client import ef_target, finish_update
from e3sfc.federated.runtime import uplink_compressor
from e3sfc.models import build_model
from e3sfc.wire import Payload

FAST = {"steps": 2, "max_iter": 5, "synth_iters": 3}  # keep the synthesis methods quick


def make(method, **options):
    """``method`` with those of ``options`` that it has (each method refuses options it does not have)."""
    names = get_compressor_class(method).option_names()
    return make_compressor(method, **{k: v for k, v in options.items() if k in names})


def small_ctx(seed=0, shape=(1, 8, 8), model="mlp", dtype=torch.float32):
    m = build_model(model, shape, 10, seed=1).to(dtype)
    m.eval()
    return Context(m, get_flat(m), shape, 10, generator=torch.Generator().manual_seed(seed))


def target_like(ctx, seed=0, dtype=torch.float32):
    return torch.randn(ctx.num_params, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 0.01


@pytest.mark.parametrize("method", available_methods())
def test_contract(method):
    ctx = small_ctx()
    comp = make(method, **FAST)
    tau = target_like(ctx)
    before = tau.clone()
    w_before = [p.detach().clone() for p in ctx.model.parameters()]
    payload, stats = comp.compress(tau, ctx)
    blob = comp.encode(payload)
    assert torch.equal(tau, before), "input mutated"
    assert all(torch.equal(a, p) for a, p in zip(w_before, ctx.model.parameters())), "model modified"
    assert all(p.grad is None for p in ctx.model.parameters())
    assert len(blob) == comp.payload_bytes(ctx)
    out = comp.decompress(comp.decode(blob, ctx), ctx)
    assert out.shape == tau.shape and torch.isfinite(out).all()
    # seeded determinism
    blob2 = comp.encode(comp.compress(tau, small_ctx())[0])
    assert blob == blob2
    dense = 4 * ctx.num_params + 11
    assert (len(blob) == dense) if method == "fedavg" else (len(blob) < dense)


@pytest.mark.parametrize("method", [m for m in available_methods() if make_compressor(m).biased])
def test_ef_identity_float64(method):
    ctx = small_ctx(dtype=torch.float64)
    comp = make(method, **FAST)
    ef = ErrorFeedback()
    ef.residuals[0] = target_like(ctx, 5, torch.float64)
    tau = ef.target(0, target_like(ctx, 6, torch.float64))
    ctx.client = 0
    payload, _ = comp.compress(tau, ctx)
    ef.update(0, tau, comp.decompress(payload, ctx).to(torch.float64))   # what the client keeps
    received = comp.decompress(comp.decode(comp.encode(payload), ctx), ctx).to(torch.float64)  # what the server gets
    # through the wire: the server's decoded update and the client's residual add up to the target
    torch.testing.assert_close(received + ef.residuals[0], tau, rtol=0, atol=1e-12)


def test_client_step_ef_identity_through_the_wire():
    ctx = small_ctx()
    ctx.client = 2
    comp = make_compressor("topk", ratio=0.05)
    ef = ErrorFeedback()
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    train = build_model("mlp", (1, 8, 8), 10, seed=1)
    delta = local_train(train, ctx.weights, x, y, epochs=1, batch_size=8, lr=0.1,
                        generator=torch.Generator().manual_seed(0))
    p = ef_target(ctx, delta.clone(), compressor=comp, ef=ef, num_samples=40)
    u = finish_update(p, comp, ef, *comp.compress_many([p.target], [p.ctx])[0])
    decoded = comp.decompress(comp.decode(u.blob, ctx), ctx)
    # tau = delta (first round, no residual yet); decoded + e == tau
    torch.testing.assert_close(decoded + ef.residuals[2], delta, rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["powersgd", "topk"])
def test_diverged_update_resets_the_residual(method, caplog):
    """A client whose local training diverged (NaN in its update) keeps no residual of it: the next
    round's target is that round's update alone, finite."""
    ctx = small_ctx()
    ctx.client = 3
    comp = make_compressor(method)
    ef = ErrorFeedback()
    ef.residuals[3] = target_like(ctx, 1)
    bad = target_like(ctx, 2)
    bad[::7] = float("nan")
    p = ef_target(ctx, bad, compressor=comp, ef=ef, num_samples=10)
    with caplog.at_level("WARNING", logger="e3sfc.federated.client"):
        finish_update(p, comp, ef, *comp.compress(p.target, p.ctx))
    assert "not finite" in caplog.text
    assert torch.equal(ef.residuals[3], torch.zeros_like(bad))
    good = target_like(ctx, 4)
    p = ef_target(ctx, good.clone(), compressor=comp, ef=ef, num_samples=10)
    assert torch.equal(p.target, good)
    finish_update(p, comp, ef, *comp.compress(p.target, p.ctx))
    assert torch.isfinite(ef.residuals[3]).all()


def _single_tensor_ctx(values):
    lin = torch.nn.Linear(len(values), 1, bias=False)  # P = len(values), one tensor
    return Context(lin, torch.zeros(len(values)), (len(values),), 1)


def test_topk_hand_case():
    v = torch.tensor([0.1, -3.0, 2.0, 0.5, -0.2, 4.0])
    ctx = _single_tensor_ctx(v)
    comp = make_compressor("topk", ratio=0.5)
    p, _ = comp.compress(v, ctx)
    assert p.fields[0].tolist() == [1, 2, 5] and p.fields[1].tolist() == [-3.0, 2.0, 4.0]
    assert comp.decompress(p, ctx).tolist() == [0, -3.0, 2.0, 0, 0, 4.0]
    assert len(comp.encode(p)) == 8 * 3 + 17


def test_stc_hand_case():
    v = torch.tensor([0.1, -3.0, 2.0, 0.5, -0.2, 4.0])
    ctx = _single_tensor_ctx(v)
    comp = make_compressor("stc", ratio=0.5)
    p, _ = comp.compress(v, ctx)
    assert float(p.fields[2]) == 3.0  # mean |kept| = (3 + 2 + 4) / 3
    assert comp.decompress(p, ctx).tolist() == [0, -3.0, 3.0, 0, 0, 3.0]
    assert len(comp.encode(p)) == 4 * 3 + 1 + 4 + 19


def test_sign_hand_case():
    v = torch.tensor([1.0, -2.0, 3.0, -4.0, 0.0])
    ctx = _single_tensor_ctx(v)
    comp = make_compressor("sign")
    p, _ = comp.compress(v, ctx)
    assert float(p.fields[1]) == 2.0  # ||v||_1 / d = 10 / 5
    assert comp.decompress(p, ctx).tolist() == [2.0, -2.0, 2.0, -2.0, 2.0]
    assert len(comp.encode(p)) == 1 + 4 + 13


def test_qsgd_hand_case_and_unbiased():
    v = torch.tensor([3.0, -4.0])  # norm 5; with s = 5 every |v_i| s / norm is an integer
    ctx = _single_tensor_ctx(v)
    ctx.generator = torch.Generator().manual_seed(0)
    comp = make_compressor("qsgd", levels=5)
    p, _ = comp.compress(v, ctx)
    assert comp.decompress(p, ctx).tolist() == [3.0, -4.0]
    # unbiased: the mean of many draws approaches v
    v = torch.tensor([0.3, -0.05, 0.7, 0.0, -0.2])
    ctx = _single_tensor_ctx(v)
    ctx.generator = torch.Generator().manual_seed(1)
    comp = make_compressor("qsgd", levels=2)
    n = 4000
    draws = torch.stack([comp.decompress(comp.compress(v, ctx)[0], ctx) for _ in range(n)])
    sd = draws.std(0) / math.sqrt(n)
    assert ((draws.mean(0) - v).abs() <= 4 * sd + 1e-6).all()
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[1], draws[2])


def sgd_like_target(ctx, seed=0):
    """A realistic update: -0.1 x the cross-entropy gradient on a random labelled batch."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, *ctx.input_shape, generator=g), torch.randint(0, 10, (16,), generator=g)
    loss = torch.nn.functional.cross_entropy(ctx.model(x), y)
    return -0.1 * torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(ctx.model.parameters()))])


def test_threesfc_scale_and_residual_identity():
    ctx = small_ctx()
    comp = make_compressor("3sfc", steps=3, max_iter=10)
    tau = sgd_like_target(ctx)
    p, stats = comp.compress(tau, ctx)
    x, y, alpha = p.tensor(0), p.tensor(1), float(p.fields[2])
    g = synth_grad(ctx.model, x, y).double()
    t = tau.double()
    assert alpha == pytest.approx(float(g.dot(t) / g.dot(g)), rel=1e-6)
    e = t - alpha * g
    cos = float(g.dot(t) / (g.norm() * t.norm()))
    assert float(e.dot(e)) == pytest.approx((1 - cos**2) * float(t.dot(t)), rel=1e-6)
    assert stats["cosine"] == pytest.approx(abs(cos), rel=1e-4)
    torch.testing.assert_close(comp.decompress(p, ctx).double(), alpha * g, rtol=1e-6, atol=1e-9)
    assert abs(cos) > 0.1  # the search found a direction that correlates with the target


def test_threesfc_search_improves_on_random_features():
    ctx = small_ctx()
    tau = sgd_like_target(ctx)
    c0 = make_compressor("3sfc", steps=0).compress(tau, small_ctx())[1]["cosine"]
    c1 = make_compressor("3sfc", steps=3, max_iter=10).compress(tau, small_ctx())[1]["cosine"]
    assert c1 > c0 + 0.05


def test_fedsynth_decode_is_the_sgd_unroll():
    ctx = small_ctx()
    comp = make_compressor("fedsynth", unroll=1, synth_iters=2)
    p, _ = comp.compress(target_like(ctx), ctx)
    x, y, eta = p.tensor(0), p.tensor(1), float(p.fields[2])
    expect = -eta * synth_grad(ctx.model, x, y)  # one SGD step on (x, y)
    torch.testing.assert_close(comp.decompress(p, ctx), expect, rtol=1e-5, atol=1e-8)


def test_exact_bytes_on_the_reference_mlp():
    ctx = small_ctx(shape=(1, 28, 28))
    assert ctx.num_params == 199_210
    expected = {
        "fedavg": 4 * 199_210 + 11,                                    # 796,851
        "3sfc": 4 * (784 + 10 + 1) + 5 + (2 + 16) + (2 + 8) + 2,       # 3,215
        "fedsynth": 3_215,
        "topk": 8 * (1568 + 2 + 400 + 2 + 20 + 1) + 17,               # ratio 0.01 per tensor
        "stc": 4 * 1993 + 250 + 4 + 19,
        "sign": 24_902 + 4 + 13,
        "qsgd": 4 + 24_902 + 124_507 + 19,                             # s = 16: 5 bits per level
    }
    for method, n in expected.items():
        comp = make(method, ratio=0.01)
        assert comp.payload_bytes(ctx) == n, method
    assert expected["3sfc"] == 3_215 and expected["fedavg"] // expected["3sfc"] >= 247


def test_ratio_match_gives_equal_or_fewer_bytes():
    ctx = small_ctx(shape=(1, 28, 28))
    budget = make_compressor("3sfc").payload_bytes(ctx)
    for method in ("topk", "stc"):
        comp = uplink_compressor(RunConfig(method=method, ratio="match:3sfc"), ctx)
        assert comp.payload_bytes(ctx) <= budget
        bigger = make_compressor(method, ratio=comp.ratio * 1.02)
        assert bigger.payload_bytes(ctx) > budget or bigger.k(ctx) == comp.k(ctx)
    with pytest.raises(ConfigError, match="--ratio"):
        RunConfig(method="topk", ratio="match:nope")
    with pytest.raises(ConfigError, match="--ratio"):
        RunConfig(method="topk", ratio="2")


def test_decode_rejects_wrong_shape_and_bad_indices():
    ctx = small_ctx()
    comp = make_compressor("3sfc")
    two = Payload.of(1, np.zeros((2, 1, 8, 8), np.float32), np.zeros((2, 10), np.float32), np.float32(1))
    with pytest.raises(PayloadError, match="expected"):
        comp.decode(wire.encode(two), ctx)
    tk = make_compressor("topk", ratio=0.01)
    k = tk.k(ctx)
    bad = Payload.of(2, np.full(k, ctx.num_params + 5, np.int32), np.ones(k, np.float32))
    with pytest.raises(PayloadError, match="indices"):
        tk.decompress(tk.decode(wire.encode(bad), ctx), ctx)


@pytest.mark.parametrize("model", ["mnistnet", "convnet-fast", "lenet", "resnet18", "vgg11", "regnet"])
def test_synthesis_methods_work_with_every_model(model):
    """Double backprop (3SFC) and the differentiable unroll (FedSynth) through every architecture."""
    shape = (3, 32, 32)
    m = build_model(model, shape, 10, seed=0)
    m.eval()
    for method in ("3sfc", "fedsynth"):
        ctx = Context(m, get_flat(m), shape, 10, generator=torch.Generator().manual_seed(0))
        comp = make(method, steps=1, max_iter=2, synth_iters=1)
        p, _ = comp.compress(target_like(ctx), ctx)
        out = comp.decompress(comp.decode(comp.encode(p), ctx), ctx)
        assert out.shape == (ctx.num_params,) and torch.isfinite(out).all() and out.abs().sum() > 0


def _torch_lbfgs_path(f, z0, steps, max_iter, history):
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, history_size=history, line_search_fn=None)
    path = []

    def closure():
        val = f(z)
        z.grad = torch.autograd.grad(val, [z])[0]
        path.append(z.detach().clone())
        return val.detach()

    for _ in range(steps):
        opt.step(closure)
    return path


def _flat_lbfgs_path(f, z0, steps, max_iter, history):
    z = z0.clone()
    path = []

    def objective(zk):
        with torch.enable_grad():
            zz = zk.detach().requires_grad_(True)
            val = f(zz)
            (g,) = torch.autograd.grad(val, [zz])
        path.append(zk.clone())
        return float(val), g

    opt = FlatLBFGS(z, max_iter=max_iter, history=history)
    for _ in range(steps):  # one torch LBFGS.step: one run of steps(), its points evaluated as they come
        gen = opt.steps()
        try:
            zk = next(gen)
            while True:
                zk = gen.send(objective(zk))
        except StopIteration:
            pass
    return path


@pytest.mark.parametrize("history", [100, 3])  # 3: the history fills and shifts
def test_flat_lbfgs_follows_torch_lbfgs(history):
    """Same iterates as torch.optim.LBFGS (no line search), float64, across steps (runs of steps())."""
    n = 40
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hess = a @ a.T / 4 + 0.01 * torch.eye(n, dtype=torch.float64)  # ill-conditioned: no early convergence
    b = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def f(z):  # convex, not quadratic: curvature pairs change from step to step
        return 0.5 * z @ hess @ z - b @ z + 0.1 * torch.log(torch.cosh(3 * z)).sum()

    z0 = torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    ref = _torch_lbfgs_path(f, z0, steps=3, max_iter=6, history=history)
    ours = _flat_lbfgs_path(f, z0, steps=3, max_iter=6, history=history)
    assert len(ours) == len(ref) == 18  # 6 evaluations per step, the last move of a step unevaluated
    for r, o in zip(ref, ours):
        torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)
    assert float(f(ours[-1])) < float(f(z0)) - 1.0


def test_cosine_match_gradient_is_autograd_through_cos():
    ctx = small_ctx(dtype=torch.float64)
    tau = target_like(ctx, dtype=torch.float64)
    f = CosineMatch(ctx.model, tau, (2, 1, 8, 8), (2, 10), lambd=0.01)
    z = torch.randn(2 * 64 + 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    val, cos, grad = f(z)
    zz = z.clone().requires_grad_(True)
    x, y = f.split(zz)
    g = synth_grad(ctx.model, x, y, create_graph=True)
    c = g.dot(tau) / (g.norm() * tau.norm())
    ref = 1 - c.abs() + 0.01 * (x.norm() + y.norm())
    (ref_grad,) = torch.autograd.grad(ref, [zz])
    assert val == pytest.approx(float(ref), rel=1e-10)
    assert cos == pytest.approx(abs(float(c)), rel=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-12)


def _chain(sizes, bias=True):
    from torch import nn

    layers: list = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b, bias=bias or i % 2 == 1), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double()


@pytest.mark.parametrize("sizes,bias,m", [((64, 20, 20, 10), True, 1), ((64, 20, 20, 10), True, 3),
                                          ((64, 10), True, 2), ((64, 16, 12, 8, 10), False, 2)])
def test_closed_form_objective_equals_autograd(sizes, bias, m):
    """synth_mlp.MLPCosineMatch: value, |cos| and gradient of the 3SFC objective equal autograd
    through cos (float64), for 1 to 4 layers, with and without biases, M = 1..3."""
    from e3sfc.compress.synth_mlp import MLPCosineMatch, linear_relu_chain

    torch.manual_seed(0)
    model = _chain(sizes, bias)
    lins = linear_relu_chain(model)
    assert lins is not None and len(lins) == len(sizes) - 1
    n = sum(p.numel() for p in model.parameters())
    tau = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = MLPCosineMatch(lins, model, tau, (m, 1, 8, 8), (m, 10), lambd=0.01)
    z = torch.randn(m * 74, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    val, cos, grad = f(z)
    zz = z.clone().requires_grad_(True)
    x, y = f.split(zz)
    g = synth_grad(model, x, y, create_graph=True)
    c = g.dot(tau) / (g.norm() * tau.norm())
    ref = 1 - c.abs() + 0.01 * (x.norm() + y.norm())
    (ref_grad,) = torch.autograd.grad(ref, [zz])
    assert val == pytest.approx(float(ref), rel=1e-10)
    assert cos == pytest.approx(abs(float(c)), rel=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-12)


def test_closed_form_is_used_only_for_linear_relu_chains():
    from torch import nn

    from e3sfc.compress.search import cosine_match
    from e3sfc.compress.synth_mlp import MLPCosineMatch, linear_relu_chain

    mlp = build_model("mlp", (1, 8, 8), 10, seed=0)
    assert linear_relu_chain(mlp) is not None
    tau = torch.zeros(sum(p.numel() for p in mlp.parameters()))
    assert isinstance(cosine_match(mlp, tau, (1, 1, 8, 8), (1, 10)), MLPCosineMatch)
    conv = build_model("convnet-fast", (1, 28, 28), 10, seed=0)
    assert linear_relu_chain(conv) is None
    tau = torch.zeros(sum(p.numel() for p in conv.parameters()))
    assert isinstance(cosine_match(conv, tau, (1, 1, 28, 28), (1, 10)), CosineMatch)

    class Doubled(nn.Sequential):  # a Sequential whose forward is not the chain
        def forward(self, x):
            return 2 * super().forward(x)

    for other in (nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Tanh(), nn.Linear(10, 10)),
                  nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU()),
                  nn.Sequential(nn.Flatten(0), nn.Linear(64, 10)),
                  Doubled(nn.Flatten(), nn.Linear(64, 10))):
        assert linear_relu_chain(other) is None


def test_threesfc_search_same_with_closed_form_and_autograd(monkeypatch):
    """The 3SFC encoder finds the same synthetic data whichever objective form it uses (float64)."""
    import e3sfc.compress.synth_mlp as sm

    ctx = small_ctx(dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)  # target: the gradient of 8 random labelled inputs
    xr = torch.randn(8, 1, 8, 8, generator=gen, dtype=torch.float64)
    tau = synth_grad(ctx.model, xr, torch.eye(10, dtype=torch.float64)[torch.arange(8)])
    comp = make_compressor("3sfc", steps=2, max_iter=10)
    fast = comp.synthesize(tau, Context(ctx.model, ctx.weights, ctx.input_shape, 10,
                                        generator=torch.Generator().manual_seed(5)))
    monkeypatch.setattr(sm, "linear_relu_chain", lambda model: None)
    slow = comp.synthesize(tau, Context(ctx.model, ctx.weights, ctx.input_shape, 10,
                                        generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-6, atol=1e-9)
    assert fast[2] == pytest.approx(slow[2], rel=1e-8) and fast[2] > 0.3


def test_threesfc_searches_driven_together_equal_each_alone():
    """search() hands its evaluations out: three searches whose points are evaluated round-robin
    (as a batching driver would) end exactly where each ends alone, early stops included."""
    ctx = small_ctx()
    gen = torch.Generator().manual_seed(11)
    taus = [synth_grad(ctx.model, torch.randn(4, 1, 8, 8, generator=gen), torch.randn(4, 10, generator=gen))
            for _ in range(3)]
    comp = make_compressor("3sfc", steps=3, max_iter=10, patience=4)

    def c(k):
        return Context(ctx.model, ctx.weights, ctx.input_shape, 10, generator=torch.Generator().manual_seed(k))

    alone = [comp.synthesize(tau, c(k)) for k, tau in enumerate(taus)]
    searches = {k: comp.search(tau, c(k)) for k, tau in enumerate(taus)}
    pending = {k: next(s) for k, s in searches.items()}
    together, evals = {}, 0
    while pending:
        for k in list(pending):
            f, z = pending.pop(k)
            evals += 1
            try:
                pending[k] = searches[k].send(f(z))
            except StopIteration as done:
                together[k] = done.value
    assert evals > 3
    for k in range(3):
        assert torch.equal(together[k][0], alone[k][0]) and torch.equal(together[k][1], alone[k][1])
        assert together[k][2] == alone[k][2]


@pytest.mark.parametrize("m,lambd,bias", [(1, 0.0, True), (3, 0.01, True), (2, 0.0, False)])
def test_mlp_objectives_evaluated_in_one_batch_equal_each_alone(m, lambd, bias):
    from e3sfc.compress.synth_mlp import MLPCosineMatch, MLPCosineMatchBatch, linear_relu_chain

    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16, bias=bias), nn.ReLU(), nn.Linear(16, 10, bias=bias)).double()
    lins = linear_relu_chain(model)
    P = sum(p.numel() for p in model.parameters())
    fs = [MLPCosineMatch(lins, model, torch.randn(P, generator=gen, dtype=torch.float64), (m, 1, 8, 8), (m, 10),
                         lambd) for _ in range(4)]
    zs = [torch.randn(m * 74, generator=gen, dtype=torch.float64) for _ in range(4)]
    for f, z, (val, cos, grad) in zip(fs, zs, MLPCosineMatchBatch(fs)(zs)):
        val1, cos1, grad1 = f(z)
        assert val == pytest.approx(val1, rel=1e-12, abs=1e-14) and cos == pytest.approx(cos1, rel=1e-12)
        torch.testing.assert_close(grad, grad1, rtol=1e-10, atol=1e-14)
    other = MLPCosineMatch(lins, model, fs[0].tau, (m, 1, 8, 8), (m, 10), lambd + 1.0)
    with pytest.raises(ValueError, match="different models, shapes or lambdas"):
        MLPCosineMatchBatch([fs[0], other])


@pytest.mark.parametrize("model,shape,m,lambd,chunk", [("convnet-fast", (1, 28, 28), 1, 0.0, None),
                                                      ("lenet", (1, 28, 28), 2, 0.01, 2),
                                                      ("resnet18", (3, 16, 16), 1, 0.0, 2)])
def test_autograd_objectives_evaluated_in_one_batch_equal_each_alone(model, shape, m, lambd, chunk, monkeypatch):
    """CosineMatchBatch (torch.func: vmap of grad, one vjp) gives each objective's value, |cos| and
    gradient as CosineMatch alone does; also when a large model is cut into chunks."""
    from e3sfc.compress.synth import CosineMatch, CosineMatchBatch

    ctx = small_ctx(shape=shape, model=model, dtype=torch.float64)
    P = ctx.num_params
    if chunk:
        monkeypatch.setattr(CosineMatchBatch, "max_floats", chunk * P)
    gen = torch.Generator().manual_seed(5)
    nz = m * (math.prod(shape) + 10)
    fs = [CosineMatch(ctx.model, torch.randn(P, generator=gen, dtype=torch.float64), (m, *shape), (m, 10), lambd)
          for _ in range(3)]
    zs = [torch.randn(nz, generator=gen, dtype=torch.float64) for _ in range(3)]
    batch = CosineMatchBatch(fs)
    assert batch.chunk == (chunk or batch.chunk) and len(batch(zs)) == 3
    for f, z, (val, cos, grad) in zip(fs, zs, batch(zs)):
        val1, cos1, grad1 = f(z)
        assert val == pytest.approx(val1, rel=1e-10, abs=1e-12) and cos == pytest.approx(cos1, rel=1e-10)
        torch.testing.assert_close(grad, grad1, rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="different models, shapes or lambdas"):
        CosineMatchBatch([fs[0], CosineMatch(ctx.model, fs[0].tau, (m, *shape), (m, 10), lambd + 1.0)])


@pytest.mark.parametrize("model,shape", [("mlp", (1, 8, 8)), ("convnet-fast", (1, 28, 28))])
def test_searches_run_together_match_each_alone_float64(model, shape):
    """run_together (the simulator's --batch-search) batches the objective evaluations of several
    3SFC searches (closed form for the MLP, torch.func for the ConvNet); in float64 every search
    ends where it ends alone, to rounding."""
    from e3sfc.compress.search import run_together, start

    ctx = small_ctx(shape=shape, model=model, dtype=torch.float64)
    gen = torch.Generator().manual_seed(12)
    taus = [synth_grad(ctx.model, torch.randn(4, *shape, generator=gen, dtype=torch.float64),
                       torch.randn(4, 10, generator=gen, dtype=torch.float64)) for _ in range(3)]
    comp = make_compressor("3sfc", steps=2, max_iter=8, patience=5)

    def c(k):
        return Context(ctx.model, ctx.weights, ctx.input_shape, 10, generator=torch.Generator().manual_seed(k))

    alone = [comp.synthesize(tau, c(k)) for k, tau in enumerate(taus)]
    started = {}
    for k, tau in enumerate(taus):
        started[k] = start(comp.search(tau, c(k)))
    together = run_together(started)
    for k in range(3):
        torch.testing.assert_close(together[k][0], alone[k][0], rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(together[k][1], alone[k][1], rtol=1e-7, atol=1e-9)
        assert together[k][2] == pytest.approx(alone[k][2], rel=1e-8)


def test_options_are_the_methods_own():
    """A method takes only its own options, named as the run settings; anything else is one clear error."""
    assert make_compressor("topk", ratio=0.1, topk_scope="global").topk_scope == "global"
    with pytest.raises(ConfigError, match="topk: unknown option.*samples.*allowed: ratio, topk_scope"):
        make_compressor("topk", samples=2)
    with pytest.raises(ConfigError, match="qsgd: levels: 0 is not allowed; expected an integer in 1..65535"):
        make_compressor("qsgd", levels=0)
    assert get_compressor_class("e3sfc").downlink == "3sfc" and get_compressor_class("topk").downlink == "dense"
    assert get_compressor_class("3sfc").sized_by_samples and not get_compressor_class("stc").sized_by_samples


def test_compress_many_with_batch_search_equals_one_by_one_float64():
    """ThreeSFC.compress_many with batch_search: the round's searches together, the same payloads to rounding."""
    ctx = small_ctx(dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    taus = [target_like(ctx, k, torch.float64) for k in range(3)]

    def ctxs():
        return [Context(ctx.model, ctx.weights, ctx.input_shape, 10, generator=torch.Generator().manual_seed(k))
                for k in range(3)]

    alone = make_compressor("3sfc", steps=2, max_iter=8).compress_many(taus, ctxs())
    batched = make_compressor("3sfc", steps=2, max_iter=8, batch_search=True)
    assert batched.batch_limit is None and make_compressor("3sfc").batch_limit == 1
    together = batched.compress_many(taus, ctxs())
    for (pa, sa), (pb, sb) in zip(alone, together):
        for fa, fb in zip(pa.fields, pb.fields):
            np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-7)
        assert sa["cosine"] == pytest.approx(sb["cosine"], rel=1e-6)
    del gen


def test_deterministic_cudnn_holds_its_flags_inside_and_restores_them_even_on_error():
    from e3sfc.compress.synth import deterministic_cudnn
    b = torch.backends.cudnn
    before = b.deterministic, b.benchmark
    b.deterministic, b.benchmark = False, True
    try:
        with pytest.raises(KeyError):
            with deterministic_cudnn():
                assert (b.deterministic, b.benchmark) == (True, False)
                raise KeyError("x")
        assert (b.deterministic, b.benchmark) == (False, True)
        with deterministic_cudnn(on=False):
            assert (b.deterministic, b.benchmark) == (False, True)
        with deterministic_cudnn():  # nested (another thread decoding meanwhile): the outer exit restores
            with deterministic_cudnn():
                pass
            assert (b.deterministic, b.benchmark) == (True, False)
        assert (b.deterministic, b.benchmark) == (False, True)
    finally:
        b.deterministic, b.benchmark = before
