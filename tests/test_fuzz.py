"""Fuzzing the decoders: random and mutated payloads for every method end in the project's own
PayloadError or decode to finite tensors of the declared shapes, never another exception.
Seeded and bounded (a few seconds)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from e3sfc import wire
from e3sfc.compress import Context, available_methods, get_compressor_class, make_compressor
from e3sfc.errors import PayloadError
from e3sfc.federated.params import get_flat
from e3sfc.models import build_model

CASES = 150  # per method and kind of damage


def _ctx():
    m = build_model("mlp", (1, 8, 8), 10, seed=1)
    m.eval()
    return Context(m, get_flat(m), (1, 8, 8), 10, generator=torch.Generator().manual_seed(0))


EXTRA = {"3sfc-fp16": ("3sfc", {"feature_bits": 16, "samples": 2}),
         "3sfc-int8": ("3sfc", {"feature_bits": 8, "samples": 4}),
         "3sfc-tensor-scales": ("3sfc", {"scales": "tensor", "samples": 2}),
         "3sfc-int8-tensor-scales": ("3sfc", {"feature_bits": 8, "samples": 4, "scales": "tensor"}),
         "topk-golomb": ("topk", {"index_coding": "golomb"}),
         "topk-golomb-int8": ("topk", {"index_coding": "golomb", "value_bits": 8}),
         "topk-fp16": ("topk", {"value_bits": 16}),
         "topk-golomb-budget": ("topk", {"index_coding": "golomb", "max_bytes": 400}),
         "stc-golomb": ("stc", {"index_coding": "golomb"}),
         "stc-golomb-budget": ("stc", {"index_coding": "golomb", "max_bytes": 300}),
         "powersgd-fp16": ("powersgd", {"value_bits": 16}),
         "powersgd-int8": ("powersgd", {"value_bits": 8, "rank": 1})}
# (options with formats of their own)
CASES_METHODS = [*available_methods(), *EXTRA]


def _honest(case, ctx):
    method, extra = EXTRA.get(case, (case, {}))
    quick = {"steps": 1, "max_iter": 3, "synth_iters": 2, "ratio": 0.05, **extra}
    names = get_compressor_class(method).option_names()
    comp = make_compressor(method, **{k: v for k, v in quick.items() if k in names})
    tau = torch.randn(ctx.num_params, generator=torch.Generator().manual_seed(1)) * 0.01
    return comp, comp.encode(comp.compress(tau, ctx)[0])


def _mutate(blob: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(blob)
    what = rng.integers(0, 5)
    if what == 0:      # flip bytes (header and data alike)
        for i in rng.integers(0, len(b), rng.integers(1, 8)):
            b[i] = int(rng.integers(0, 256))
    elif what == 1:    # cut
        b = b[: int(rng.integers(0, len(b)))]
    elif what == 2:    # extend
        b += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif what == 3:    # a header byte set to an extreme
        i = int(rng.integers(0, min(len(b), 40)))
        b[i] = int(rng.choice([0, 1, 127, 128, 255]))
    else:              # overwrite data with random floats' bytes, extremes included
        vals = rng.choice(np.array([0, 1e38, -1e38, 1e-45, 3e38, 65504, 1e30], np.float32), 8)
        i = int(rng.integers(5, max(6, len(b) - 32)))
        b[i:i + 32] = vals.tobytes()[: len(b[i:i + 32])]
    return bytes(b)


def _check(comp, ctx, data):
    try:
        out = comp.decode_update(data, ctx)  # what the server calls on every reply
    except PayloadError:
        return "rejected"
    assert out.shape == (ctx.num_params,) and out.dtype == ctx.weights.dtype
    assert torch.isfinite(out).all()
    return "decoded"


@pytest.mark.parametrize("method", CASES_METHODS)
def test_decoders_survive_random_and_mutated_payloads(method):
    ctx = _ctx()
    comp, blob = _honest(method, ctx)
    rng = np.random.default_rng(zlib.crc32(method.encode()))
    seen = {"rejected": 0, "decoded": 0}
    for _ in range(CASES):
        noise = rng.integers(0, 256, int(rng.integers(0, 2 * len(blob))), dtype=np.uint8).tobytes()
        seen[_check(comp, ctx, noise)] += 1
        seen[_check(comp, ctx, _mutate(blob, rng))] += 1
        # a well-framed payload of the right method with random contents in every field
        p = wire.decode(blob)
        fields = []
        for a in p.fields:
            raw = rng.integers(0, 256, a.nbytes, dtype=np.uint8).tobytes()
            fields.append(np.frombuffer(raw, dtype=a.dtype).reshape(a.shape))
        seen[_check(comp, ctx, wire.encode(wire.Payload(p.method, tuple(fields))))] += 1
    assert seen["rejected"] > 0  # the fuzzer does reach the checks


@pytest.mark.parametrize("method", CASES_METHODS)
def test_declared_shapes_of_decoded_payloads_are_finite_or_rejected(method):
    """What passes the decoder is finite at the wire level (NaN/inf floats never get through)."""
    ctx = _ctx()
    comp, blob = _honest(method, ctx)
    rng = np.random.default_rng(7)
    for _ in range(CASES):
        data = _mutate(blob, rng)
        try:
            p = comp.decode(data, ctx)
        except PayloadError:
            continue
        specs = comp.fields(ctx)  # (a variable field, a coded one: at most its declared shape)
        assert len(p.fields) == len(specs) and all(s.admits(a.dtype, a.shape) for a, s in zip(p.fields, specs))
        assert all(np.isfinite(a).all() for a in p.fields if a.dtype.kind == "f")
