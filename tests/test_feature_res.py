"""Low-resolution synthetic features (``--feature-res R``): 3SFC searches and sends z (M, C, R, R') and the
model sees x = bilinear upsample(z); 4-bit features; and the synthesis methods' refusal of BatchNorm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import CLI_FAST, assert_resume_equals_no_stop, one_line_error
from e3sfc.cli import main
from e3sfc.compress import build_compressor, make_compressor
from e3sfc.compress.base import Context
from e3sfc.compress.search import cosine_match
from e3sfc.compress.synth import CosineMatch, CosineMatchBatch, synth_grad, upsample
from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation, get_flat
from e3sfc.models import batchnorm_to_groupnorm, build_model, has_batchnorm, num_params, synthetic_shape
from conftest import ef_round_trip

QUICK = dict(dataset="digits", batch_size=32, lr=0.05, steps=2, max_iter=5, threads=1)


def _ctx(name="lenet", shape=(3, 32, 32), dtype=torch.float32, seed=0, model=None):
    m = (model or build_model(name, shape, 10, seed=1)).to(dtype).eval()
    return Context(m, get_flat(m), shape, 10, client=0, generator=torch.Generator().manual_seed(seed))


def _header(*ndims: int) -> int:
    return 5 + sum(2 + 4 * n for n in ndims)


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
@pytest.mark.parametrize("name,shape,res", [("lenet", (3, 32, 32), 8), ("mlp", (1, 28, 28), 7),
                                            ("lenet", (1, 12, 20), 6)])
def test_decoded_update_is_the_gradient_at_the_upsampled_features(name, shape, res, bits):
    """Bit for bit: the decoder's update is alpha g(upsample(z), y) for the z and y on the wire."""
    ctx = _ctx(name, shape)
    comp = make_compressor("3sfc", samples=3, feature_bits=bits, feature_res=res, steps=1, max_iter=4)
    comp.check_context(ctx)
    blob = comp.encode(comp.compress(torch.randn(ctx.num_params) * 0.01, ctx)[0])
    z, y, alpha = comp.features(comp.decode(blob, ctx), ctx)
    c, h, w = shape
    assert z.shape == ((3, c, res, res * w // h) if h <= w else (3, c, res * h // w, res))
    x = torch.nn.functional.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
    assert torch.equal(x, upsample(z, (h, w)))
    expect = float(np.asarray(alpha).reshape(-1)[0]) * synth_grad(ctx.model, x, y)
    assert torch.equal(comp.decode_update(blob, ctx), expect)


IMAGE_MODELS = {"mlp": (1, 28, 28), "mnistnet": (1, 28, 28), "convnet": (1, 28, 28), "convnet-fast": (1, 28, 28),
                "lenet": (3, 32, 32), "quickcnn": (3, 32, 32), "resnet18": (3, 32, 32), "vgg11": (3, 32, 32),
                "regnet": (3, 32, 32)}


def test_every_image_model_of_the_registry_is_covered_below():
    from e3sfc.models import _TEXT, BUILTIN_MODELS

    assert set(IMAGE_MODELS) == set(BUILTIN_MODELS) - set(_TEXT)  # other tests register models of their own


@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
def test_every_image_model_decodes_the_gradient_at_the_upsampled_features_with_exact_bytes(name):
    """Each model of the registry, through the search a CPU run uses for it (batched where that is the
    default, else one at a time): the wire carries R x R features, its bytes are the compressor's
    payload_bytes, and the decoded update is alpha g(upsample(z), y)."""
    from e3sfc.config import FAST_SEARCH_CPU

    shape, batched = IMAGE_MODELS[name], name in FAST_SEARCH_CPU
    ctx = _ctx(name, shape)
    comp = make_compressor("3sfc", samples=2, feature_bits=8, feature_res=7, steps=1, max_iter=2, batch_search=batched)
    comp.check_context(ctx)
    tau = torch.randn(ctx.num_params, generator=torch.Generator().manual_seed(1)) * 0.01
    ((payload, _),) = comp.compress_many([tau], [ctx]) if batched else [comp.compress(tau, ctx)]
    blob = comp.encode(payload)
    assert len(blob) == comp.payload_bytes(ctx) == 2 * shape[0] * 7 * 7 + 2 * 10 + 12 + _header(1, 2, 1)
    z, y, alpha = comp.features(comp.decode(blob, ctx), ctx)
    assert tuple(z.shape) == (2, shape[0], 7, 7)
    expect = float(np.asarray(alpha).reshape(-1)[0]) * synth_grad(ctx.model, upsample(z, shape[1:]), y)
    assert torch.equal(comp.decode_update(blob, ctx), expect)


@pytest.mark.parametrize("res", [32, 16, 8])
@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_payload_bytes_by_hand(res, bits):
    """3x32x32 CNN, M = 4, 10 classes: the features are M C R R numbers at the wire's precision."""
    ctx, m, c, k = _ctx(), 4, 3, 10
    comp = make_compressor("3sfc", samples=m, feature_bits=bits, feature_res=res, steps=1, max_iter=2)
    blob = comp.encode(comp.compress(torch.randn(ctx.num_params) * 0.01, ctx)[0])
    d = c * res * res
    expect = {32: 4 * (m * d + m * k + 1) + _header(4, 2, 0),
              16: 2 * (m * d + m * k) + 4 + _header(4, 2, 0),
              8: m * d + m * k + 12 + _header(1, 2, 1),
              4: m * math.ceil(d / 2) + m * math.ceil(k / 2) + 12 + _header(2, 2, 1)}[bits]
    assert len(blob) == comp.payload_bytes(ctx) == expect
    if (res, bits) == (32, 32):
        assert expect == make_compressor("3sfc", samples=m).payload_bytes(ctx)  # R = the input size: as before


def test_full_resolution_is_the_published_parametrization():
    """R = the input size (and the default 0) search and send exactly what the published 3SFC does."""
    ctx = _ctx("lenet", (1, 8, 8))
    tau = torch.randn(ctx.num_params) * 0.01
    blobs = []
    for res in (0, 8):
        ctx.generator = torch.Generator().manual_seed(3)
        comp = make_compressor("3sfc", samples=2, feature_res=res, steps=1, max_iter=4)
        assert comp.upsample_size(ctx) is None
        blobs.append(comp.encode(comp.compress(tau, ctx)[0]))
    assert blobs[0] == blobs[1]


@pytest.mark.parametrize("bits", [32, 8, 4])
@pytest.mark.parametrize("name", ["lenet", "mlp"])
def test_ef_identity_float64(name, bits):
    ctx = _ctx(name, (1, 8, 8), dtype=torch.float64)
    comp = make_compressor("3sfc", samples=3, feature_bits=bits, feature_res=4, steps=2, max_iter=8)
    tau, decoded, stats = ef_round_trip(comp, ctx)
    cos = abs(float(torch.nn.functional.cosine_similarity(decoded, tau, dim=0)))
    assert stats["cosine"] == pytest.approx(cos, rel=1e-6) and cos > 0


@pytest.mark.parametrize("name", ["lenet", "mlp"])
def test_objective_gradient_is_autograd_through_the_upsampling_and_batches(name):
    """The objective at z equals 1 - |cos| of g(upsample(z)); its gradient is autograd's; the batched
    evaluation (vmap; the MLP: the closed form's batch) agrees with each alone."""
    from e3sfc.compress.search import Upsampled, UpsampledBatch

    ctx = _ctx(name, (1, 8, 8), dtype=torch.float64)
    xs, ys, size = (2, 1, 4, 4), (2, 10), (8, 8)
    taus = [torch.randn(ctx.num_params, dtype=torch.float64) for _ in range(2)]
    fs = [cosine_match(ctx.model, t, xs, ys, size=size) for t in taus]
    zs = [torch.randn(32 + 20, dtype=torch.float64) for _ in range(2)]
    for f, z, tau in zip(fs, zs, taus):
        val, cos, grad = f(z)
        zz = z.clone().requires_grad_(True)
        x, y = zz[:32].view(xs), zz[32:].view(ys)
        g = synth_grad(ctx.model, upsample(x, size), y, create_graph=True)
        ref = 1 - torch.nn.functional.cosine_similarity(g, tau, dim=0).abs()
        (dz,) = torch.autograd.grad(ref, zz)
        assert val == pytest.approx(float(ref.detach()), abs=1e-12) and cos == pytest.approx(1 - val, abs=1e-12)
        torch.testing.assert_close(grad, dz, rtol=1e-7, atol=1e-10)
    batch = UpsampledBatch if name == "mlp" else CosineMatchBatch
    assert isinstance(fs[0], Upsampled) == (name == "mlp")
    for (v1, c1, g1), (v2, c2, g2) in zip(batch(fs)(zs), [f(z) for f, z in zip(fs, zs)]):
        assert v1 == pytest.approx(v2, abs=1e-10)
        torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("model,bits,init", [("lenet", 8, "noise"), ("mlp", 4, "noise"), ("lenet", 8, "data")])
def test_e3sfc_replicas_bit_identical_and_resume_equals_no_stop(model, bits, init, tmp_path):
    """Both ways at R = 4 on 8x8 digits (lenet's batched search is on by default on a CPU); ``data``: the
    clients' searches start from their samples (--feature-init data)."""
    cfg = RunConfig(**QUICK, model=model, method="e3sfc", samples=2, feature_bits=bits, feature_res=4, clients=6,
                    fraction=0.5, rounds=3, checkpoint_every=1, feature_init=init)
    whole = Simulation(cfg)
    whole.run()
    for k in range(6):
        assert torch.equal(whole.sync(whole.round + 1, k), whole.weights)
    assert all(math.isfinite(r["accuracy"]) for r in whole.metrics)
    assert_resume_equals_no_stop(cfg, whole, tmp_path / "r", stop_after=1)


def test_3sfc_run_bytes_shrink_with_the_resolution():
    up = {}
    for res in (0, 4):
        sim = Simulation(RunConfig(**QUICK, model="mlp", method="3sfc", samples=2, feature_res=res, clients=3,
                                   rounds=1))
        sim.run()
        up[res] = sim.metrics[-1]["uplink_bytes"]
    assert up[4] == up[0] - 3 * 4 * 2 * (64 - 16)  # 3 clients, float32, 2 samples of 8x8 -> 4x4


@pytest.mark.parametrize("value,needle", [
    ("-1", "--feature-res: -1 is not allowed; expected an integer >= 0 (0 = the input size; at most its smaller side)"),
    ("9", "--feature-res: 9 is not allowed; expected an integer in 0..8 (0 = the input size; the inputs are 8x8)"),
    ("2.5", "--feature-res: '2.5' is not a valid int"),
    ("x", "--feature-res: 'x' is not a valid int"),
])
def test_bad_feature_res_is_one_line_exit_2(value, needle, capsys):
    assert main(["run", *CLI_FAST, "--method", "3sfc", "--feature-res", value]) == 2
    assert needle in one_line_error(capsys)


def test_feature_res_with_a_method_that_does_not_take_it_is_refused(capsys):
    assert main(["run", *CLI_FAST, "--method", "topk", "--feature-res", "4"]) == 2
    assert "--feature-res: 4 is not allowed; expected the default with --method topk" in one_line_error(capsys)


@pytest.mark.parametrize("name", ["textbag", "transformer"])
def test_feature_res_with_a_text_model_is_refused(name):
    model = build_model(name, (24,), 4, seed=0, vocab_size=50).eval()
    ctx = Context(model, get_flat(model), synthetic_shape(model, (24,)), 4)
    with pytest.raises(ConfigError, match=r"^--feature-res: 4 is not allowed; expected 0 with this model \(its "
                       r"synthetic samples, of shape \(.*\), are not images\)$"):
        build_compressor("e3sfc", {"feature_res": 4}, "0.01", ctx)
    build_compressor("e3sfc", {"feature_res": 0}, "0.01", ctx)


def test_feature_res_text_run_is_one_line_exit_2(tmp_path, capsys):
    from test_text import write_csv

    root = str(write_csv(tmp_path / "ag", 4, n_train=60, n_test=20))
    assert main(["run", "--dataset", "agnews", "--data-dir", root, "--model", "textbag", "--method", "3sfc",
                 "--clients", "2", "--rounds", "1", "--max-len", "16", "--feature-res", "4"]) == 2
    assert "--feature-res: 4 is not allowed; expected 0 with this model" in one_line_error(capsys)


def test_flower_run_config_carries_feature_res():
    cfg = RunConfig.from_run_config({"method": "e3sfc", "feature-res": 4, "feature-bits": 4})
    assert (cfg.feature_res, cfg.feature_bits) == (4, 4)


# ------------------------------------------------------------------------------------ BatchNorm
class BNNet(nn.Module):
    def __init__(self, input_shape=(1, 8, 8), num_classes=10):
        super().__init__()
        c = input_shape[0]
        self.body = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(8 * input_shape[1] * input_shape[2], 16), nn.BatchNorm1d(16), nn.ReLU(),
                                  nn.Linear(16, num_classes))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("method", ["3sfc", "e3sfc", "fedsynth"])
def test_synthesis_methods_refuse_batchnorm_with_one_line(method):
    ctx = _ctx(model=BNNet(), shape=(1, 8, 8))
    with pytest.raises(ConfigError) as err:
        build_compressor(method, {}, "0.01", ctx)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"--model: BNNet has BatchNorm, which --method {method} cannot decode")
    assert "running statistics" in msg and "e3sfc.models.batchnorm_to_groupnorm(model)" in msg


@pytest.mark.parametrize("method", ["topk", "sign", "qsgd", "powersgd", "fedavg"])
def test_other_methods_take_batchnorm(method):
    build_compressor(method, {}, "0.01", _ctx(model=BNNet(), shape=(1, 8, 8)))


def test_registry_model_with_batchnorm_is_refused_by_3sfc_and_runs_with_topk(monkeypatch, capsys):
    from e3sfc import models

    monkeypatch.setitem(models._REGISTRY, "bnnet", BNNet)
    assert main(["run", *CLI_FAST, "--model", "bnnet", "--method", "3sfc", "--steps", "1"]) == 2
    assert "--model: BNNet has BatchNorm" in one_line_error(capsys)
    sim = Simulation(RunConfig(**QUICK, model="bnnet", method="topk", clients=3, rounds=1))
    sim.run()
    monkeypatch.setitem(models._REGISTRY, "gnnet", lambda s, c: batchnorm_to_groupnorm(BNNet(s, c)))
    Simulation(RunConfig(**QUICK, model="gnnet", method="3sfc", clients=3, rounds=1)).run()


def test_batchnorm_to_groupnorm_same_parameters_and_trains():
    torch.manual_seed(0)
    bn = BNNet()
    with torch.no_grad():
        for m in bn.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    ref = {n: p.clone() for n, p in bn.named_parameters()}
    gn = batchnorm_to_groupnorm(bn)
    assert gn is bn and not has_batchnorm(gn) and num_params(gn) == sum(p.numel() for p in ref.values())
    assert [n for n, _ in gn.named_parameters()] == list(ref)
    assert all(torch.equal(p, ref[n]) for n, p in gn.named_parameters())  # affine weights kept
    norms = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(8, 8), (1, 16)]
    x = torch.randn(64, 1, 8, 8)
    y = x.flatten(1)[:, :10].argmax(1)
    opt = torch.optim.SGD(gn.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(gn(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    # per-sample: a sample's output does not depend on its batch
    gn.eval()
    assert torch.allclose(gn(x[:1]), gn(x)[:1], atol=1e-6)
    build_compressor("3sfc", {}, "0.01", _ctx(model=gn, shape=(1, 8, 8)))


def test_addon_refuses_batchnorm_for_a_synthesis_method():
    pytest.importorskip("flwr")
    from e3sfc.flower.addon import _Codec, settings

    with pytest.raises(ConfigError, match="BNNet has BatchNorm, which --method 3sfc cannot decode"):
        _Codec(BNNet, (1, 8, 8), 10, settings("3sfc"))
    with pytest.raises(ConfigError, match="BNNet has BatchNorm, which --method 3sfc cannot decode"):
        _Codec(BNNet, (1, 8, 8), 10, settings("topk", downlink="3sfc", ratio="0.05"))
    _Codec(BNNet, (1, 8, 8), 10, settings("topk", ratio="0.05"))


def test_four_bit_features_are_nibbles_two_a_byte_with_a_scale():
    """Rows of z (3 x 3 x 3 = 27 numbers, odd) and y (10): values -7..7 sent as 1..15, the odd row's last
    high nibble 0; the largest magnitude uses the whole range."""
    from e3sfc import wire

    ctx = _ctx("lenet", (3, 8, 8))
    comp = make_compressor("3sfc", samples=2, feature_bits=4, feature_res=3, steps=1, max_iter=3)
    p = wire.decode(comp.encode(comp.compress(torch.randn(ctx.num_params) * 0.01, ctx)[0]))
    xq, yq, s = p.fields
    assert xq.shape == (2, 14) and yq.shape == (2, 5) and s.shape == (3,) and xq.dtype == np.uint8
    lo, hi = xq & 15, xq >> 4
    assert lo.min() >= 1 and hi[:, :-1].min() >= 1 and not hi[:, -1].any()
    nib = np.concatenate([lo.ravel(), hi[:, :-1].ravel()])
    assert 15 in (int(nib.max()), 16 - int(nib.min()))


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("lambd", [0.0, 0.01])
def test_mlp_closed_form_through_the_upsampling_equals_autograd(per_tensor, lambd):
    """--feature-res on the MLP: the closed form at x = upsample(z), carried back to z by the upsampling's
    adjoint (search.Upsampled), gives the autograd objective's value, |cos| and df/dz (float64); a batch of
    them gives each one's."""
    from e3sfc.compress.search import Upsampled, UpsampledBatch

    ctx = _ctx("mlp", (1, 12, 12), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    z_shape, y_shape, size = (3, 1, 5, 5), (3, 10), (12, 12)
    fs, zs = [], []
    for k in range(3):
        tau = torch.randn(ctx.num_params, generator=g, dtype=torch.float64)
        fast = cosine_match(ctx.model, tau, z_shape, y_shape, lambd, per_tensor, size)
        assert isinstance(fast, Upsampled)
        ref = CosineMatch(ctx.model, tau, z_shape, y_shape, lambd, per_tensor, size)
        z = torch.randn(math.prod(z_shape) + math.prod(y_shape), generator=g, dtype=torch.float64)
        (fo, fc, fg), (ro, rc, rg) = fast(z), ref(z)
        assert fo == pytest.approx(ro, rel=1e-10) and fc == pytest.approx(rc, rel=1e-10)
        torch.testing.assert_close(fg, rg, rtol=1e-8, atol=1e-12)
        assert [t.shape for t in fast.split(z)] == [torch.Size(z_shape), torch.Size(y_shape)]
        fs.append(fast)
        zs.append(z)
    for (bo, bc, bg), f, z in zip(UpsampledBatch(fs)(zs), fs, zs):
        so, sc, sg = f(z)
        assert bo == pytest.approx(so, rel=1e-10) and bc == pytest.approx(sc, rel=1e-10)
        torch.testing.assert_close(bg, sg, rtol=1e-8, atol=1e-12)
