"""PowerSGD (``--method powersgd``): exact bytes, rank-r reconstruction, error feedback in float64, the
warm start carried, checkpointed and checked, bit-identical replicas under its own downlink, resume,
bad input, Flower."""

from __future__ import annotations

import pytest
import torch

from conftest import CLI_FAST as FAST, one_line_error as _err
from e3sfc.cli import main
from e3sfc.compress import Context, ErrorFeedback, make_compressor
from e3sfc.compress.powersgd import layout, max_rank, orthogonalize
from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation
from e3sfc.federated.checkpoint import check_state, read_checkpoint
from e3sfc.federated.params import get_flat
from e3sfc.io import read_jsonl
from e3sfc.models import build_model

QUICK = dict(dataset="digits", model="mlp", batch_size=32, lr=0.05, threads=1)


def _ctx(shape=(1, 28, 28), dtype=torch.float32, seed=0, model="mlp"):
    m = build_model(model, shape, 10, seed=1).to(dtype)
    m.eval()
    return Context(m, get_flat(m), shape, 10, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rank,bits,size", [
    # MLP 784-200-200-10: F = r (984 + 400 + 210) factor numbers, C = 3 matrices, D = 410 bias numbers
    (1, 32, 17 + 4 * 1594 + 4 * 410),                 # 8,033
    (1, 16, 17 + 2 * 1594 + 4 * 410),                 # 4,845
    (1, 8, 23 + 1594 + 8 * 3 + 4 * 410),              # 3,281
    (2, 32, 17 + 4 * 3188 + 4 * 410),                 # 14,409
    (2, 8, 23 + 3188 + 8 * 3 + 4 * 410),              # 4,875
])
def test_exact_bytes_on_the_reference_mlp(rank, bits, size):
    ctx = _ctx()
    comp = make_compressor("powersgd", rank=rank, value_bits=bits)
    assert comp.payload_bytes(ctx) == size
    blob = comp.encode(comp.compress(torch.randn(ctx.num_params), ctx)[0])
    assert len(blob) == size
    assert {(1, 32): 8_033, (1, 8): 3_281, (2, 32): 14_409, (2, 8): 4_875}.get((rank, bits), size) == size


def test_layout_views_conv_kernels_as_out_by_the_rest_and_sends_small_tensors_as_they_are():
    shapes = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (10, 4)]
    plan = layout(shapes, 4)
    assert [(n, m, c) for _, n, m, c in plan] == [(6, 25, True), (6, 1, False), (16, 150, True), (10, 4, False)]
    assert [o for o, *_ in plan] == [0, 150, 156, 2556]
    assert max_rank(6, 25) == 4 and not layout(shapes, 5)[0][3]  # 5 (6 + 25) >= 150: sent as it is
    assert max_rank(10, 4) == 2 and layout(shapes, 2)[3][3]


def test_orthogonalize_gives_orthonormal_columns_and_zero_for_a_zero_column():
    p = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q = orthogonalize(p.clone())
    torch.testing.assert_close(q.T @ q, torch.eye(3, dtype=torch.float64))
    z = torch.zeros(5, 2)
    z[:, 1] = 1.0
    out = orthogonalize(z.clone())
    assert torch.isfinite(out).all() and not out[:, 0].any()


def test_a_rank_r_target_comes_back_as_it_is():
    """Every matrix exactly of rank r: one power iteration from any Q finds its column space, P Q^T = M."""
    ctx = _ctx(shape=(1, 8, 8), dtype=torch.float64)
    comp = make_compressor("powersgd", rank=2)
    g = torch.Generator().manual_seed(3)
    parts = []
    for s in ctx.param_shapes:
        if len(s) >= 2:
            parts.append((torch.randn(s[0], 2, generator=g, dtype=torch.float64)
                          @ torch.randn(2, s[1], generator=g, dtype=torch.float64)).reshape(-1))
        else:
            parts.append(torch.randn(s, generator=g, dtype=torch.float64))
    tau = torch.cat(parts)
    payload, _ = comp.compress(tau, ctx)
    out = comp.decompress(comp.decode(comp.encode(payload), ctx), ctx)
    torch.testing.assert_close(out, tau, rtol=1e-5, atol=1e-5)  # float32 factors
    # and the decoded update is P Q^T of the factors on the wire
    (p, q), *_ = comp.factors(payload, ctx)
    torch.testing.assert_close(out[:200 * 64].reshape(200, 64), p @ q.T, rtol=0, atol=0)
    torch.testing.assert_close(p.T @ p, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [32, 16, 8])
def test_ef_identity_float64(bits):
    ctx = _ctx(shape=(1, 8, 8), dtype=torch.float64)
    ctx.client = 0
    comp = make_compressor("powersgd", rank=2, value_bits=bits)
    ef = ErrorFeedback()
    g = torch.Generator().manual_seed(5)
    ef.residuals[0] = torch.randn(ctx.num_params, generator=g, dtype=torch.float64) * 0.01
    tau = ef.target(0, torch.randn(ctx.num_params, generator=g, dtype=torch.float64) * 0.01)
    payload, _ = comp.compress(tau, ctx)
    ef.update(0, tau, comp.decompress(payload, ctx))
    received = comp.decompress(comp.decode(comp.encode(payload), ctx), ctx)
    torch.testing.assert_close(received + ef.residuals[0], tau, rtol=0, atol=1e-12)
    assert 0 < float(ef.residuals[0].norm()) < float(tau.norm())


def test_the_warm_start_is_the_q_sent_and_a_power_iteration_converges_with_it():
    ctx = _ctx(shape=(1, 8, 8))
    comp = make_compressor("powersgd", rank=1)
    tau = torch.randn(ctx.num_params, generator=torch.Generator().manual_seed(7))
    p1, _ = comp.compress(tau, ctx)
    start = comp.carry(p1, ctx)
    assert start.dtype == torch.float32 and start.numel() == comp.carry_size(ctx) == 64 + 200 + 200
    assert torch.equal(start, torch.cat([q.reshape(-1) for _, q in comp.factors(p1, ctx)]))
    errs = [float((tau - comp.decompress(p1, ctx)).norm())]
    for _ in range(6):  # the same target again and again: each round one more power iteration
        ctx.start = start
        p, _ = comp.compress(tau, ctx)
        new = comp.carry(p, ctx)
        assert not torch.equal(new, start)
        start = new
        errs.append(float((tau - comp.decompress(p, ctx)).norm()))
    assert errs[-1] < errs[0] and all(b <= a + 1e-4 for a, b in zip(errs, errs[1:]))
    # a zero warm-start column is drawn afresh, not kept (it would stay zero for good)
    ctx.start = torch.zeros_like(start)
    assert comp.decompress(comp.compress(tau, ctx)[0], ctx).any()
    comp.check_carry(start, ctx)
    for bad in (start[:-1], start.reshape(1, -1), start.long(), torch.full_like(start, float("nan"))):
        with pytest.raises(ValueError, match="warm start"):
            comp.check_carry(bad, ctx)


def test_both_ways_replicas_bit_identical_under_partial_participation_and_exact_bytes():
    cfg = RunConfig(**QUICK, method="powersgd", rank=2, value_bits=8, downlink="powersgd", clients=6, fraction=0.5,
                    rounds=4, init="seed")
    sim = Simulation(cfg)
    sim.run()  # the simulator checks every participant's replica against the server each round
    assert sim.server.downlink.compressed
    for k in range(6):
        assert torch.equal(sim.sync(sim.round + 1, k), sim.weights), k
    # digits MLP 64-200-200-10 at rank 2, 8 bits: F = 2 (264 + 400 + 210), C = 3, D = 410
    size = 23 + 1748 + 8 * 3 + 4 * 410
    assert sim.server.compressor.payload_bytes(sim.server.context(1, None)) == size == 3435
    last = {k: 1 for k in range(6)}  # the round whose model each client holds (w_1 from the seed: nothing sent)
    for t in range(1, 5):
        up = sim.ledger.per_client(t, "up")
        assert len(up) == 3 and set(up.values()) == {size}
        # down: one compressed broadcast (same layout, same size) for every round's move the client missed
        assert sim.ledger.per_client(t, "down") == {k: size * (t - last[k]) for k in up if t > last[k]}
        last.update({k: t for k in up})
    starts = [sim.client(k).start for k in range(6) if sim.client(k).trained]
    assert starts and all(s is not None and s.numel() == 2 * (64 + 200 + 200) for s in starts)
    assert sim.server.downlink.start is not None and -1 in sim.server.downlink.ef.residuals


@pytest.mark.parametrize("memory", [0, 0.0001])  # 0.0001 MB: every client spilled to disk
def test_resume_equals_no_stop_and_the_warm_starts_are_checked(tmp_path, memory):
    cfg = RunConfig(**QUICK, method="powersgd", rank=2, value_bits=8, downlink="powersgd", clients=4, fraction=0.5,
                    rounds=4, init="seed", checkpoint_every=1, state_memory=memory)
    full = Simulation(cfg, out_dir=tmp_path / "a")
    full.run()
    Simulation(cfg, out_dir=tmp_path / "b").run(stop_after=2)
    state = read_checkpoint(tmp_path / "b")
    assert state["server"]["downlink"]["start"] is not None
    if memory:
        assert any("start" in dict(c["spilled"]["layout"]) for c in state["clients"].values())
    else:
        assert any(c["start"] is not None for c in state["clients"].values())
    resumed = Simulation.resume(tmp_path / "b")
    resumed.run()
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "a/metrics.jsonl")) == strip(read_jsonl(tmp_path / "b/metrics.jsonl"))
    assert torch.equal(full.weights, resumed.weights)
    # a warm start of the wrong size is refused before use
    sim = Simulation(cfg)
    args = (sim.cfg, sim.num_params, sim.server.compressor, sim.server.downlink.compressor, sim.server.context(0, None))
    check_state(state, *args)
    state["server"]["downlink"]["start"] = torch.zeros(5)
    with pytest.raises(ValueError, match="warm start"):
        check_state(state, *args)


@pytest.mark.parametrize("argv,needle", [
    (["--method", "powersgd", "--rank", "0"], "--rank: 0 is not allowed; expected an integer >= 1"),
    (["--method", "powersgd", "--rank", "1000"],
     "--rank: 1000 is not allowed; expected an integer in 1..99 (a larger rank compresses no parameter matrix"),
    (["--method", "topk", "--downlink", "powersgd", "--rank", "100"], "--rank: 100 is not allowed"),
    (["--method", "powersgd", "--value-bits", "7"], "--value-bits: 7 is not allowed; expected one of 32, 16, 8"),
    (["--method", "topk", "--rank", "3"], "--rank"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", *FAST, "--out", str(out), *argv]) == 2
    assert needle in _err(capsys)


def test_a_model_without_matrices_is_refused():
    ctx = _ctx(shape=(1, 8, 8))
    comp = make_compressor("powersgd", rank=1)
    comp.check_context(ctx)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1, bias=False))
    ctx.model, ctx.weights = lin, get_flat(lin)
    with pytest.raises(ConfigError, match="--rank: 1 is not allowed"):
        comp.check_context(ctx)  # 1 x 64: its factors (65 numbers) are not smaller


def test_flower_add_on_both_ways():
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity
    from test_flower_addon import Federation, _flat, _pair, _state

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as test_flower_addon's fixture
    try:
        strategy, mod = _pair("powersgd", downlink="powersgd", rank=1, value_bits=8)
        fed = Federation(strategy, mod, nodes=(1, 2, 3), n=60)
        for t, nodes in ((1, (1, 2, 3)), (2, (1, 2)), (3, (1, 2, 3)), (4, (2, 3))):
            w_t = _flat(fed.arrays)
            _, replies, metrics = fed.round(t, nodes)
            for k in nodes:  # every node trained from exactly the server's w_t, and keeps its warm start
                st = _state(fed.ctx[k])
                assert torch.equal(st.replica, w_t) and st.start is not None
            assert torch.equal(_flat(fed.arrays), strategy.server.weights)
            assert metrics["e3sfc-uplink-bytes"] > 0
            if t > 1:
                assert 0 < metrics["e3sfc-downlink-bytes"] * 5 < metrics["e3sfc-dense-downlink-bytes"]
        assert torch.isfinite(strategy.server.weights).all()
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


@pytest.mark.slow
def test_flower_engine_equals_in_process(tmp_path):
    pytest.importorskip("flwr")
    from e3sfc.flower import run_flower_simulation

    cfg = RunConfig(**QUICK, method="powersgd", rank=2, value_bits=8, downlink="powersgd", clients=3, rounds=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Simulation(cfg, out_dir=tmp_path / "inprocess").run()
    finally:
        torch.set_num_threads(threads)
    run_flower_simulation(cfg.replace(engine="flower"), tmp_path / "flower")
    skip = ("seconds", "flower_", "aggregate_")
    strip = lambda rows: [{k: v for k, v in r.items() if not any(s in k for s in skip)} for r in rows]  # noqa: E731
    a, b = read_jsonl(tmp_path / "inprocess/metrics.jsonl"), read_jsonl(tmp_path / "flower/metrics.jsonl")
    assert len(a) == len(b) == 3 and strip(a) == strip(b)
    assert all(r["uplink_bytes"] == 3 * 3435 for r in b)
