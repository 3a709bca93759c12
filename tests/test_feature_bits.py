"""Low-precision synthetic features (``--feature-bits 16|8``): exact bytes, the EF identity through the
rounding, bit-identical replicas, resume, and decoders that refuse what they must."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from e3sfc import wire
from e3sfc.compress import make_compressor
from e3sfc.compress.base import Context
from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError, PayloadError
from e3sfc.federated import Simulation, get_flat
from e3sfc.models import build_model
from conftest import assert_resume_equals_no_stop
from conftest import ef_round_trip

QUICK = dict(dataset="digits", model="mlp", batch_size=32, lr=0.05, steps=2, max_iter=5, threads=1)


def _ctx(shape=(1, 28, 28), dtype=torch.float32, seed=0):
    m = build_model("mlp", shape, 10, seed=1).to(dtype)
    m.eval()
    return Context(m, get_flat(m), shape, 10, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits,m", [(32, 1), (16, 2), (8, 4)])
def test_same_bytes_as_one_float32_sample(bits, m):
    """On the reference MLP (28x28, 10 classes) M = 2 at 16 bits and M = 4 at 8 bits cost 3,215 bytes."""
    ctx = _ctx()
    comp = make_compressor("3sfc", samples=m, feature_bits=bits, steps=1, max_iter=3)
    blob = comp.encode(comp.compress(torch.randn(ctx.num_params) * 0.01, ctx)[0])
    assert len(blob) == comp.payload_bytes(ctx) == 3215


@pytest.mark.parametrize("bits", [16, 8])
def test_ef_identity_through_the_rounding_float64(bits):
    ctx = _ctx(shape=(1, 8, 8), dtype=torch.float64)
    ctx.client = 0
    comp = make_compressor("3sfc", samples=3, feature_bits=bits, steps=2, max_iter=8)
    tau, decoded, stats = ef_round_trip(comp, ctx)
    # the reported cosine is that of what the decoder gets, not of the unrounded search result
    cos = abs(float(torch.nn.functional.cosine_similarity(decoded, tau, dim=0)))
    assert stats["cosine"] == pytest.approx(cos, rel=1e-6)


def test_eight_bit_features_are_symmetric_integers_with_a_scale():
    ctx = _ctx(shape=(1, 8, 8))
    comp = make_compressor("3sfc", samples=2, feature_bits=8, steps=1, max_iter=3)
    p = wire.decode(comp.encode(comp.compress(torch.randn(ctx.num_params) * 0.01, ctx)[0]))
    xq, yq, s = p.fields
    assert xq.dtype == np.uint8 and xq.shape == (2 * 64,) and yq.shape == (2, 10) and s.shape == (3,)
    assert xq.min() >= 1 and yq.min() >= 1      # -127..127 sent as 1..255
    assert 255 in (int(xq.max()), 256 - int(xq.min()))  # the largest magnitude uses the whole range


@pytest.mark.parametrize("bits", [16, 8])
def test_e3sfc_replicas_bit_identical_and_resume_equals_no_stop(bits, tmp_path):
    cfg = RunConfig(**QUICK, method="e3sfc", samples=2, feature_bits=bits, clients=6, fraction=0.5, rounds=4,
                    checkpoint_every=1)
    whole = Simulation(cfg)
    whole.run()
    for k in range(6):
        assert torch.equal(whole.sync(whole.round + 1, k), whole.weights)
    assert_resume_equals_no_stop(cfg, whole, tmp_path / "r", stop_after=2)


def test_decoders_refuse_wrong_fields():
    ctx = _ctx(shape=(1, 8, 8))
    eight = make_compressor("3sfc", samples=2, feature_bits=8)
    f32 = make_compressor("3sfc", samples=2)
    blob = f32.encode(f32.compress(torch.randn(ctx.num_params) * 0.01, ctx)[0])
    with pytest.raises(PayloadError, match="expected"):
        eight.decode_update(blob, ctx)  # a float32 payload is not an 8-bit one
    bad = wire.encode(wire.Payload(1, (np.zeros(128, np.uint8), np.zeros((2, 10), np.uint8),
                                       np.array([np.inf, 1, 1], np.float32))))
    with pytest.raises(PayloadError):
        eight.decode_update(bad, ctx)


def test_bad_feature_bits_is_one_clear_error():
    with pytest.raises(ConfigError, match="--feature-bits: 12 is not allowed; expected one of 32, 16, 8, 4"):
        RunConfig(method="3sfc", feature_bits=12)
    with pytest.raises(ConfigError, match="3sfc: feature_bits: 12 is not allowed; expected one of 32, 16, 8, 4"):
        make_compressor("3sfc", feature_bits=12)
