"""Coded positions (``--index-coding golomb``) and quantized values (``--value-bits``) of the sparsifiers:
the Golomb-Rice code round-trips, decodes to the update int32 gives, takes fewer bytes, is counted exactly
in the ledger, fills a ``match:`` budget to the last position that fits, and refuses malformed codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from e3sfc import wire
from e3sfc.compress import Context, build_compressor, make_compressor
from e3sfc.compress._bits import (GOLOMB_MAX_B, golomb_best_b, golomb_bits, golomb_decode, golomb_encode,
                                  golomb_gaps, golomb_max_bits)
from e3sfc.config import RunConfig
from e3sfc.errors import PayloadError
from e3sfc.federated import Simulation, get_flat
from e3sfc.federated.server import admit
from e3sfc.models import build_model


def _ctx(shape=(1, 8, 8)):
    m = build_model("mlp", shape, 10, seed=1)
    m.eval()
    return Context(m, get_flat(m), shape, 10, generator=torch.Generator().manual_seed(0))


def _tau(ctx, seed=1):
    return torch.randn(ctx.num_params, generator=torch.Generator().manual_seed(seed))


def _roundtrip(pos, p, b=None):
    gaps = golomb_gaps(pos)
    b = golomb_best_b(gaps) if b is None else b
    code = golomb_encode(gaps, b)
    assert code.size == (golomb_bits(gaps, b) + 7) // 8
    out = golomb_decode(code, len(pos), b, p)
    np.testing.assert_array_equal(out, pos)
    return code, b


@pytest.mark.parametrize("p,k,seed", [(1, 1, 0), (2, 1, 0), (2, 2, 0), (100, 1, 1), (100, 100, 2), (1000, 10, 3),
                                      (5000, 50, 4), (5000, 2500, 5), (70000, 700, 6)])
def test_golomb_roundtrips_random_position_sets(p, k, seed):
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(p, k, replace=False)).astype(np.int64)
    code, b = _roundtrip(pos, p)
    assert code.size * 8 <= golomb_max_bits(k, p) + 7  # within the announced bound
    for other in (0, 1, 5, GOLOMB_MAX_B):  # every b decodes what it encodes
        _roundtrip(pos, p, other)


@pytest.mark.parametrize("pos,p", [
    ([0], 1), ([0], 10), ([9], 10), ([0, 9], 10), (list(range(10)), 10), ([3, 4, 5, 6], 10),
    ([0, 1, 2, 50000, 99998, 99999], 100000), ([99999], 100000),
])
def test_golomb_edge_cases(pos, p):
    _roundtrip(np.array(pos, np.int64), p)


def test_best_b_is_shortest_and_near_the_stc_papers_parameter():
    rng = np.random.default_rng(0)
    p, k = 199210, 1992
    gaps = golomb_gaps(np.sort(rng.choice(p, k, replace=False)))
    b = golomb_best_b(gaps)
    assert all(golomb_bits(gaps, b) <= golomb_bits(gaps, o) for o in range(GOLOMB_MAX_B + 1))
    phi = (1 + 5 ** 0.5) / 2
    paper = 1 + int(np.floor(np.log2(np.log(phi - 1) / np.log(1 - k / p))))
    assert abs(b - paper) <= 1 and golomb_bits(gaps, b) <= golomb_bits(gaps, paper)


@pytest.mark.parametrize("method", ["topk", "stc"])
@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_golomb_decodes_to_the_int32_update_in_fewer_bytes(method, scope):
    ctx = _ctx((1, 28, 28))  # the reference MLP, 199,210 parameters
    tau = _tau(ctx)
    plain = make_compressor(method, ratio=0.01, topk_scope=scope)
    coded = make_compressor(method, ratio=0.01, topk_scope=scope, index_coding="golomb")
    a, b = plain.encode(plain.compress(tau, ctx)[0]), coded.encode(coded.compress(tau, ctx)[0])
    assert torch.equal(plain.decode_update(a, ctx), coded.decode_update(b, ctx))
    assert len(a) == plain.payload_bytes(ctx)
    assert len(b) <= coded.payload_bytes(ctx) < len(a)
    saved = 4 * plain.k(ctx) - (len(a) - len(b))  # what golomb spends on the positions
    assert saved < 0.3 * 4 * plain.k(ctx)  # ~7 bits a position at 1% density, not 32


@pytest.mark.parametrize("bits", [32, 16, 8])
@pytest.mark.parametrize("coding", ["int32", "golomb"])
def test_value_bits(bits, coding):
    ctx = _ctx()
    tau = _tau(ctx)
    c = make_compressor("topk", ratio=0.05, value_bits=bits, index_coding=coding)
    ref = make_compressor("topk", ratio=0.05)
    blob = c.encode(c.compress(tau, ctx)[0])
    if coding == "int32":
        assert len(blob) == c.payload_bytes(ctx)
    dec, exact = c.decode_update(blob, ctx), ref.decode_update(ref.encode(ref.compress(tau, ctx)[0]), ctx)
    assert torch.equal(dec != 0, exact != 0)
    k = c.k(ctx)
    assert len(ref.encode(ref.compress(tau, ctx)[0])) - (len(blob) if coding == "int32" else 0) == \
        {32: 0, 16: 2 * k, 8: 3 * k - 6}[bits] or coding == "golomb"
    err = float((dec - exact).abs().max() / exact.abs().max())
    assert err <= {32: 0, 16: 1e-3, 8: 1 / 254 + 1e-6}[bits]


def test_value_bits_residual_keeps_the_rounding():
    """The client's EF residual is target - decoded, so 8-bit rounding is carried, not lost."""
    ctx = _ctx()
    tau = _tau(ctx)
    c = make_compressor("topk", ratio=0.05, value_bits=8)
    p, _ = c.compress(tau, ctx)
    assert torch.equal(c.decompress(p, ctx), c.decode_update(c.encode(p), ctx))


@pytest.mark.parametrize("method", ["topk", "stc"])
@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_match_fits_the_exact_coded_size(method, scope):
    ctx = _ctx((1, 28, 28))
    tau = _tau(ctx, 3)
    budget = make_compressor("3sfc").payload_bytes(ctx)
    c = build_compressor(method, {"index_coding": "golomb", "topk_scope": scope}, "match:3sfc", ctx)
    assert not c.fixed_size and c.payload_bytes(ctx) == budget
    p, _ = c.compress(tau, ctx)
    blob = c.encode(p)
    assert len(blob) <= budget
    k = int(p.fields[0])
    upd = c.decode_update(blob, ctx)
    assert int((upd != 0).sum()) == k or method == "stc"
    if scope == "global":  # one more position would not fit: K + 1 at the same scope, coded exactly
        more = make_compressor(method, index_coding="golomb", topk_scope=scope, ratio=(k + 1) / ctx.num_params)
        assert more.k(ctx) == k + 1
        assert len(more.encode(more.compress(tau, ctx)[0])) + 6 > budget  # + the K field (u4, 2 + 4 bytes)
        same = make_compressor(method, index_coding="golomb", topk_scope=scope, ratio=k / ctx.num_params)
        assert len(same.encode(same.compress(tau, ctx)[0])) + 6 == len(blob)
        assert torch.equal(same.decode_update(same.encode(same.compress(tau, ctx)[0]), ctx), upd)
    # more positions than int32 fits in the same bytes
    plain = build_compressor(method, {"topk_scope": scope}, "match:3sfc", ctx)
    assert k > 1.5 * plain.k(ctx)


@pytest.mark.parametrize("coding", ["int32", "golomb"])
def test_bytes_budget_fits_and_equals_match_at_the_same_size(coding):
    """--ratio bytes:N is match:METHOD with the budget given in bytes: the same compressor, every payload <= N."""
    ctx = _ctx((1, 28, 28))
    budget = make_compressor("3sfc").payload_bytes(ctx)
    a = build_compressor("topk", {"index_coding": coding}, f"bytes:{budget}", ctx)
    b = build_compressor("topk", {"index_coding": coding}, "match:3sfc", ctx)
    assert a.payload_bytes(ctx) == b.payload_bytes(ctx) <= budget
    tau = _tau(ctx, 5)
    blob = a.encode(a.compress(tau, ctx)[0])
    assert blob == b.encode(b.compress(tau, ctx)[0]) and len(blob) <= budget
    small = build_compressor("topk", {"index_coding": coding}, "bytes:900", ctx)
    assert len(small.encode(small.compress(tau, ctx)[0])) <= 900


@pytest.mark.parametrize("text", ["bytes:", "bytes:0", "bytes:-5", "bytes:1.5", "bytes:x", "bytes:99999999999999"])
def test_bad_bytes_budget_is_one_config_error(text):
    from e3sfc.compress import parse_ratio
    from e3sfc.errors import ConfigError

    with pytest.raises(ConfigError, match="bytes: followed by a whole number"):
        parse_ratio(text)


def test_match_takes_the_matched_methods_knobs():
    """``--ratio match:powersgd --rank 1``: the rank sizes PowerSGD's payload (not refused as unused), and
    the sparsifier fits that payload, not rank 2's (the default)."""
    from e3sfc.errors import ConfigError

    cfg = RunConfig.from_sources(None, method="topk", ratio="match:powersgd", rank=1, index_coding="golomb")
    ctx = _ctx((1, 28, 28))
    budgets = {r: make_compressor("powersgd", rank=r).payload_bytes(ctx) for r in (1, 2)}
    assert budgets[1] < budgets[2]
    c = build_compressor("topk", cfg.to_dict(), cfg.ratio, ctx)
    assert c.payload_bytes(ctx) == budgets[1]
    assert len(c.encode(c.compress(_tau(ctx), ctx)[0])) <= budgets[1]
    with pytest.raises(ConfigError, match="--rank: 1 is not allowed; expected the default with --method topk"):
        RunConfig.from_sources(None, method="topk", ratio="0.01", rank=1)
    for method in ("3sfc", "fedavg"):  # a method without a ratio does not use the match: --rank stays unused
        with pytest.raises(ConfigError, match=f"--rank: 1 is not allowed; expected the default with --method {method}"):
            RunConfig.from_sources(None, method=method, ratio="match:powersgd", rank=1)
    # the downlink's ratio: --downlink-ratio match:powersgd takes --rank; a --ratio it replaces does not
    RunConfig.from_sources(None, method="3sfc", downlink="topk", downlink_ratio="match:powersgd", rank=1)
    RunConfig.from_sources(None, method="3sfc", downlink="topk", ratio="match:powersgd", rank=1)
    with pytest.raises(ConfigError, match="--rank: 1 is not allowed"):
        RunConfig.from_sources(None, method="3sfc", downlink="topk", downlink_ratio="0.01", ratio="match:powersgd",
                               rank=1)


def test_match_with_a_budget_too_small_is_refused():
    from e3sfc.errors import ConfigError
    from e3sfc.compress import match_bytes

    ctx = _ctx()
    with pytest.raises(ConfigError, match="cannot fit"):
        match_bytes("topk", 20, ctx, {"index_coding": "golomb"})


def _coded(method="topk", **kw):
    ctx = _ctx()
    c = make_compressor(method, ratio=0.05, index_coding="golomb", **kw)
    return ctx, c, wire.decode(c.encode(c.compress(_tau(ctx), ctx)[0]))


def _with(p, i, a):
    f = list(p.fields)
    f[i] = a
    return wire.encode(wire.Payload(p.method, tuple(f)))


@pytest.mark.parametrize("method", ["topk", "stc"])
def test_malformed_codes_raise_payload_error(method):
    ctx, c, p = _coded(method)
    code = p.fields[1]
    k, n = c.k(ctx), ctx.num_params
    bad = {
        "truncated": _with(p, 1, code[:-3]),
        "b out of range": _with(p, 0, np.uint8(GOLOMB_MAX_B + 1)),
        "b 255": _with(p, 0, np.uint8(255)),
        "trailing byte": _with(p, 1, np.append(code, np.uint8(0))),
        "trailing bits": _with(p, 1, np.append(code[:-1], code[-1] | np.uint8(0x80))) if code[-1] < 0x80 else None,
        "gaps past P": _with(p, 1, golomb_encode(np.full(k, n // k + 1, np.int64), 6)[: code.size]),
        "one gap past P": _with(p, 1, golomb_encode(np.array([n] + [0] * (k - 1), np.int64), 20)),
        "all ones": _with(p, 1, np.full(code.size, 255, np.uint8)),
        "empty": _with(p, 1, np.zeros(0, np.uint8)),
        "oversized code": _with(p, 1, np.zeros(code.size + 10_000, np.uint8)),
    }
    for what, blob in bad.items():
        if blob is None:
            continue
        with pytest.raises(PayloadError):
            c.decode_update(blob, ctx)
    assert c.decode_update(wire.encode(p), ctx).shape == (n,)


def test_malformed_budgeted_payloads_raise_payload_error():
    ctx = _ctx()
    c = build_compressor("topk", {"index_coding": "golomb"}, "match:3sfc", ctx)
    p = wire.decode(c.encode(c.compress(_tau(ctx), ctx)[0]))
    k = int(p.fields[0])
    for kk in (0, k - 1, k + 1, ctx.num_params + 1, 2 ** 32 - 1):
        with pytest.raises(PayloadError):
            c.decode_update(_with(p, 0, np.uint32(kk)), ctx)
    with pytest.raises(PayloadError, match="oversized"):  # each field within its bound, the whole over budget
        c.decode_update(_with(p, 3, np.zeros(c.payload_bytes(ctx), np.float32)), ctx)


def test_admission_is_at_most_for_variable_size_methods():
    from e3sfc.federated.client import ClientUpdate

    replies = [ClientUpdate(0, b"x" * 90, 1), ClientUpdate(1, b"x" * 100, 1), ClientUpdate(2, b"x" * 101, 1)]
    ok, refused, received = admit(replies, {0, 1, 2}, 100, exact=False)
    assert [u.client for u in ok] == [0, 1] and "at most 100" in refused[2]
    assert received == {0: 90, 1: 100, 2: 101}
    ok, refused, _ = admit(replies, {0, 1, 2}, 100)
    assert [u.client for u in ok] == [1] and "exactly 100" in refused[0]


@pytest.mark.parametrize("method,ratio", [("topk", "0.05"), ("stc", "match:3sfc")])
def test_ledger_counts_each_coded_payload_exactly(method, ratio, monkeypatch):
    from e3sfc.compress.topk import TopK

    sent: list[int] = []
    encode = TopK.encode

    def spy(self, payload):
        blob = encode(self, payload)
        sent.append(len(blob))
        return blob

    monkeypatch.setattr(TopK, "encode", spy)
    sim = Simulation(RunConfig(dataset="digits", model="mlp", clients=4, rounds=3, batch_size=32, lr=0.05,
                               method=method, ratio=ratio, index_coding="golomb"))
    sim.run()
    up = [n for t in range(1, 4) for n in sim.ledger.per_client(t, "up").values()]
    assert sorted(up) == sorted(sent) and len(sent) == 12
    most = sim.server.compressor.payload_bytes(sim.server.context(1, None))
    assert max(sent) <= most  # all within the bound
    assert len(set(sent)) > 1 or ratio.startswith("match:")  # the sizes vary (a budget may be filled each time)
    assert sim.summary()["total_uplink_bytes"] == sum(sent)
    assert all(m["rejected"] == 0 for m in sim.metrics)
