"""The Flower add-on (compression_mod + CompressedStrategy) on hand-built Flower messages, driven round by
round as Flower's Strategy.start drives it: what the inner strategy aggregates is w_t + the decoded,
screened and bounded updates; the node keeps its residual (EF identity); hostile replies are refused and
the model stays finite; byte metrics equal the messages' sizes as Flower's message_size_mod counts them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

flwr = pytest.importorskip("flwr")
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from e3sfc import wire  # noqa: E402
from e3sfc.config import RunConfig  # noqa: E402
from e3sfc.errors import ConfigError  # noqa: E402
from e3sfc.federated.runtime import ClientRuntime, StaleReplica  # noqa: E402
from e3sfc.flower.addon import (  # noqa: E402
    RECORD, CompressedStrategy, SettingsMismatch, compression_mod, load_state, message_bytes, settings,
)

OPTS = dict(samples=2, steps=2, max_iter=5)
SHAPE = (1, 8, 8)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.register_buffer("seen", torch.zeros(1))  # a buffer: travels dense

    def forward(self, x):
        return self.body(x)


NAMES = [n for n, _ in Net().named_parameters()]


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower builds Messages inside a run only; give these tests one."""
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


def _data(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g)
    return x, (x.flatten(1)[:, :10].argmax(1))  # a learnable rule: the largest of the first ten pixels


def _trainer(seed: int, n: int, lr: float = 0.1, spy: dict | None = None):
    x, y = _data(seed, n)

    def train(msg: Message, ctx: Context) -> Message:
        m = Net()
        m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        if spy is not None:
            spy["w"] = _flat(msg.content["arrays"])
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        for i in range(0, n, 20):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[i:i + 20]), y[i:i + 20]).backward()
            opt.step()
        m.seen += n
        content = RecordDict({"arrays": ArrayRecord(m.state_dict()), "metrics": MetricRecord({"num-examples": n})})
        return Message(content, reply_to=msg)

    return train


def _flat(arrays: ArrayRecord) -> torch.Tensor:
    return torch.cat([torch.as_tensor(arrays[n].numpy(), dtype=torch.float32).reshape(-1) for n in NAMES])


def _accuracy(arrays: ArrayRecord) -> float:
    m = Net()
    m.load_state_dict(arrays.to_torch_state_dict())
    x, y = _data(999, 400)
    return float((m(x).argmax(1) == y).float().mean())


class _Grid:
    """What FedAvg's configure_train asks of a Grid: the connected nodes."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def _fedavg():
    return FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1)


class Federation:
    """Nodes with their Flower state, a mod and a wrapped strategy, run round by round."""

    def __init__(self, strategy, mod, nodes=(1, 2, 3), n=100):
        self.strategy, self.mod, self.nodes, self.n, self.lr = strategy, mod, nodes, n, 0.1
        self.ctx = {k: Context(run_id=1, node_id=k, node_config={}, state=RecordDict(), run_config={}) for k in nodes}
        self.arrays = ArrayRecord(Net().state_dict())

    def messages(self, t, nodes=None):
        grid = _Grid(nodes or self.nodes)
        return list(self.strategy.configure_train(t, self.arrays, ConfigRecord({"lr": 0.1}), grid))

    def replies(self, msgs, spy=None):
        return [self.mod(m, self.ctx[m.metadata.dst_node_id],
                         _trainer(m.metadata.dst_node_id, self.n, self.lr, spy)) for m in msgs]

    def round(self, t, nodes=None, tamper=None):
        msgs = self.messages(t, nodes)
        replies = self.replies(msgs)
        if tamper is not None:
            tamper(replies)
        arrays, metrics = self.strategy.aggregate_train(t, replies)
        if arrays is not None:
            self.arrays = arrays
        return msgs, replies, metrics


def _pair(method="3sfc", strategy=None, **kw):
    opts = {**(OPTS if method in ("3sfc", "e3sfc") else {}), **kw}
    return (CompressedStrategy(strategy or _fedavg(), Net, SHAPE, 10, method, **opts),
            compression_mod(Net, SHAPE, 10, method, **opts))


def _state(ctx: Context, node: int = 0) -> ClientRuntime:
    rt = ClientRuntime(RunConfig(), node, SHAPE, 10, torch.zeros(1))
    load_state(ctx, rt)
    return rt


def test_mod_and_wrapper_aggregate_the_decoded_updates_with_error_feedback():
    strategy, mod = _pair("3sfc")
    fed = Federation(strategy, mod, nodes=(7, 9))
    w = _flat(fed.arrays)
    msgs = fed.messages(1)
    replies = fed.replies(msgs)
    server = strategy.server
    expected = []
    for m, r in zip(msgs, replies):
        node = m.metadata.dst_node_id
        blob = r.content[RECORD]["payload"]
        assert len(blob) == server.compressor.payload_bytes(server.context(1, None))
        assert list(r.content["arrays"].keys()) == ["seen"]  # parameters left, the buffer stays
        decoded = server.compressor.decode_update(blob, server.context(1, None))
        # EF: the node keeps target - decoded, so decoded + residual is the update its app trained
        trained = _trainer(node, 100)(m, fed.ctx[node]).content["arrays"]
        residual = _state(fed.ctx[node]).ef.residuals[0]
        torch.testing.assert_close(decoded + residual, _flat(trained) - w, rtol=0, atol=1e-5)
        expected.append(w + decoded)
    arrays, metrics = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(_flat(arrays), (expected[0] + expected[1]) / 2, rtol=1e-5, atol=1e-6)
    assert float(arrays["seen"].numpy()[0]) == pytest.approx(100)  # dense, averaged
    assert metrics["e3sfc-uplink-bytes"] > 0 and metrics["e3sfc-refused"] == 0


def test_residual_carries_over_to_the_next_round():
    strategy, mod = _pair("topk", ratio=0.05)
    fed = Federation(strategy, mod, nodes=(3,))
    msgs = fed.messages(1)
    fed.replies(msgs)
    first = _state(fed.ctx[3]).ef.residuals[0].clone()
    assert float(first.abs().sum()) > 0
    (reply,) = fed.replies(msgs)  # the same update again: target = e_1 + delta
    server = strategy.server
    decoded = server.compressor.decode_update(reply.content[RECORD]["payload"], server.context(1, None))
    second = _state(fed.ctx[3]).ef.residuals[0]
    delta = _flat(_trainer(3, 100)(msgs[0], fed.ctx[3]).content["arrays"]) - _flat(fed.arrays)
    torch.testing.assert_close(decoded + second, first + delta, rtol=0, atol=1e-5)


def test_golomb_topk_payloads_of_varying_size_are_admitted_and_aggregated():
    """Coded positions: each reply at most the announced size (the admission check is <=) and aggregated;
    one a byte over is refused."""
    strategy, mod = _pair("topk", ratio=0.05, index_coding="golomb", value_bits=16)
    fed = Federation(strategy, mod, nodes=(1, 2, 3))
    sizes: list[int] = []
    _, _, metrics = fed.round(1, tamper=lambda replies: sizes.extend(len(r.content[RECORD]["payload"])
                                                                     for r in replies))
    server = strategy.server
    most = server.compressor.payload_bytes(server.context(1, None))
    assert max(sizes) <= most and metrics["e3sfc-refused"] == 0

    def pad(replies):
        replies[0].content[RECORD] = ConfigRecord({"payload": replies[0].content[RECORD]["payload"] + b"\0" * most})

    _, _, metrics = fed.round(2, tamper=pad)
    assert metrics["e3sfc-refused"] == 1


def test_a_broken_payload_is_dropped_and_the_rest_aggregated():
    strategy, mod = _pair("3sfc")
    fed = Federation(strategy, mod, nodes=(1, 2))
    msgs = sorted(fed.messages(1), key=lambda m: m.metadata.dst_node_id)
    good, bad = fed.replies(msgs)
    bad.content[RECORD] = ConfigRecord({"payload": b"\x00" * 40})
    n_good = len(good.content[RECORD]["payload"])
    arrays, metrics = strategy.aggregate_train(1, [good, bad])
    alone, mod2 = _pair("3sfc")
    fed2 = Federation(alone, mod2, nodes=(1,))
    ref, _ = alone.aggregate_train(1, fed2.replies(fed2.messages(1)))
    for k in ref.keys():
        np.testing.assert_array_equal(arrays[k].numpy(), ref[k].numpy())
    assert metrics["e3sfc-refused"] == 1
    # the payloads' mean size counts what arrived, as the ledger does (the broken one's 40 bytes too)
    assert metrics["e3sfc-payload-mean-bytes"] == round((n_good + 40) / 2)


def test_a_reply_without_a_payload_field_is_refused_not_a_crash():
    """A record named e3sfc without its payload (or with a number there): refused with the rest aggregated;
    the round's metrics are still made."""
    strategy, mod = _pair("3sfc")
    fed = Federation(strategy, mod, nodes=(1, 2, 3))
    msgs = sorted(fed.messages(1), key=lambda m: m.metadata.dst_node_id)
    good, empty, number = fed.replies(msgs)
    empty.content[RECORD] = ConfigRecord({})
    number.content[RECORD] = ConfigRecord({"payload": 7})
    n_good = len(good.content[RECORD]["payload"])
    arrays, metrics = strategy.aggregate_train(1, [good, empty, number])
    assert arrays is not None and metrics["e3sfc-refused"] == 2
    assert metrics["e3sfc-payload-mean-bytes"] == n_good


def test_settings_come_from_the_run_config_and_are_validated():
    cfg = settings(run_config={"e3sfc-method": "3sfc", "e3sfc-samples": 4, "e3sfc-feature-bits": 8, "lr": 0.1})
    assert (cfg.method, cfg.samples, cfg.feature_bits) == ("3sfc", 4, 8)
    with pytest.raises(ConfigError, match="--samples: 0 is not allowed"):
        settings(run_config={"e3sfc-method": "3sfc", "e3sfc-samples": 0})
    with pytest.raises(ConfigError, match="no method given"):
        settings(run_config={"lr": 0.1})
    with pytest.raises(ConfigError, match="unknown setting"):
        settings("3sfc", bogus=1)
    # the mod reads the node's run config when given no method
    mod = compression_mod(Net, SHAPE, 10)
    strategy = CompressedStrategy(_fedavg(), Net, SHAPE, 10, run_config={"e3sfc-method": "topk", "e3sfc-ratio": "0.05"})
    fed = Federation(strategy, mod, nodes=(4,))
    fed.ctx[4] = Context(run_id=1, node_id=4, node_config={}, state=RecordDict(),
                         run_config={"e3sfc-method": "topk", "e3sfc-ratio": "0.05"})
    _, (reply,), metrics = fed.round(1)
    assert metrics["e3sfc-refused"] == 0 and metrics["e3sfc-uplink-bytes"] * 5 < metrics["e3sfc-dense-bytes"]


def test_method_mismatch_is_an_error_that_stops_the_run():
    strategy, _ = _pair("3sfc")
    mod = compression_mod(Net, SHAPE, 10, "topk", ratio=0.05)
    fed = Federation(strategy, mod, nodes=(1,))
    (m,) = fed.messages(1)
    with pytest.raises(ValueError, match=r"e3sfc settings differ: the server compresses with \[method=3sfc "
                                         r"samples=2 steps=2 max_iter=5\], this node with \[method=topk ratio=0.05\]"):
        mod(m, fed.ctx[1], _trainer(1, 20))
    reason = "<class 'ValueError'>:<'e3sfc settings differ: the server compresses with [a], this node with [b]'>"
    error = Message(flwr.app.Error(code=0, reason=reason), reply_to=m)
    with pytest.raises(SettingsMismatch, match=r"^round 1: node 1: e3sfc settings differ: the server compresses "
                                               r"with \[a\], this node with \[b\]$"):
        strategy.aggregate_train(1, [error])
    # a server that does not compress at all
    plain = Message(RecordDict({"arrays": ArrayRecord(Net().state_dict()), "config": ConfigRecord({})}),
                    dst_node_id=1, message_type="train")
    with pytest.raises(ValueError, match="the server does not compress"):
        mod(plain, fed.ctx[1], _trainer(1, 20))


@pytest.mark.parametrize("kw", [{}, {"feature_res": 4, "feature_bits": 8}])
def test_compressed_downlink_replays_broadcasts_on_bit_identical_replicas(kw):
    """Three nodes, four rounds, E-3SFC's both ways through the add-on: round 1 is dense; after it a
    train message carries only the broadcasts a node missed (node 3 skips round 2 and replays two); every
    node trains from exactly the server's w_t. Also with 4x4 features upsampled to the 8x8 inputs."""
    strategy, mod = _pair("3sfc", downlink="3sfc", downlink_options=OPTS, **kw)
    fed = Federation(strategy, mod, n=60)
    for t, nodes in ((1, (1, 2, 3)), (2, (1, 2)), (3, (1, 2, 3)), (4, (2, 3))):
        w_t = _flat(fed.arrays)
        msgs = fed.messages(t, nodes)
        replies = []
        for m in msgs:
            k = m.metadata.dst_node_id
            dense = len(m.content["arrays"].keys()) > 1
            assert dense == (t == 1), (t, k)  # after round 1 no message carries parameters
            if not dense:
                assert len(m.content["e3sfc-down"]["blobs"]) == (2 if (t, k) == (3, 3) else 1)
            spy = {}
            replies.append(fed.mod(m, fed.ctx[k], _trainer(k, 60, spy=spy)))
            assert torch.equal(spy["w"], w_t)  # the node trains from the server's model, bit for bit
            assert torch.equal(_state(fed.ctx[k]).replica, w_t)
        fed.arrays, metrics = strategy.aggregate_train(t, replies)
        assert torch.equal(_flat(fed.arrays), strategy.server.weights)
        if t > 1:
            assert 0 < metrics["e3sfc-downlink-bytes"] * 5 < metrics["e3sfc-dense-downlink-bytes"]


def test_a_node_with_a_stale_replica_errs_then_gets_the_dense_model():
    strategy, mod = _pair("3sfc", downlink="3sfc", downlink_options=OPTS)
    fed = Federation(strategy, mod, nodes=(5,), n=60)
    fed.round(1)
    (m,) = fed.messages(2)
    fed.ctx[5] = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})  # state lost
    with pytest.raises(StaleReplica, match="holds the model of round 0; the server replays from round 1"):
        mod(m, fed.ctx[5], _trainer(5, 60))
    strategy.aggregate_train(2, [Message(flwr.app.Error(code=0, reason="stale"), reply_to=m)])
    (m,) = fed.messages(3)
    assert "e3sfc-down" not in m.content and len(m.content["arrays"].keys()) > 1  # dense again


@pytest.mark.parametrize("downlink", [None, "topk"])
def test_byte_metrics_equal_the_messages_as_flower_counts_them(downlink):
    """Uplink: each reply as sent (payload, buffers, the app's metrics); downlink: each train message as
    sent, the dense fallback of a node met for the first time included; sums, not means."""
    kw = dict(downlink=downlink, downlink_options={"ratio": 0.05}) if downlink else {}
    strategy, mod = _pair("topk", ratio=0.05, **kw)
    fed = Federation(strategy, mod, nodes=(1, 2, 3))
    for t, nodes in ((1, (1, 2)), (2, (1, 2, 3)), (3, (2, 3))):
        msgs = fed.messages(t, nodes)
        down = sum(message_bytes(m.content) for m in msgs)
        dense = sorted(m.metadata.dst_node_id for m in msgs if len(m.content["arrays"].keys()) > 1)
        replies = fed.replies(msgs)  # (the mod hands the app w_t as a dense ArrayRecord in the message)
        up = sum(message_bytes(r.content) for r in replies)
        per_reply = [r.content["metrics"]["e3sfc-uplink-bytes"] for r in replies]
        assert per_reply == [message_bytes(r.content) for r in replies]
        fed.arrays, metrics = strategy.aggregate_train(t, replies)
        assert metrics["e3sfc-uplink-bytes"] == up
        assert metrics["e3sfc-downlink-bytes"] == down
        # the dense fallbacks: every node in round 1 (and all along without a compressed downlink), then
        # only node 3, met first in round 2; nodes 1 and 2 replay one broadcast
        assert dense == (sorted(nodes) if not downlink or t == 1 else [3] if t == 2 else [])
        assert metrics["e3sfc-dense-bytes"] > 5 * metrics["e3sfc-uplink-bytes"]


def _hostile(kind):
    """A tamper function: node 1's reply is replaced by what a hostile node sends."""
    def tamper(replies):
        r = replies[0]
        if kind == "huge-scale":  # a sign payload whose scale is 1e30
            blob = bytearray(r.content[RECORD]["payload"])
            blob[-4:] = np.float32(1e30).tobytes()
            r.content[RECORD] = ConfigRecord({"payload": bytes(blob)})
        elif kind == "nan-dense":  # no payload, dense NaN arrays
            del r.content[RECORD]
            r.content["arrays"] = ArrayRecord(array_dict={k: flwr.app.Array(np.full_like(v.detach().numpy(), np.nan))
                                                          for k, v in Net().state_dict().items()})
        elif kind == "no-record":
            del r.content[RECORD]
        else:
            r.content["metrics"]["num-examples"] = {"nan": float("nan"), "inf": float("inf"), "1e12": 10 ** 12,
                                                    "-300": -300}[kind]
    return tamper


@pytest.mark.parametrize("kind", ["huge-scale", "nan-dense", "no-record", "nan", "inf", "1e12", "-300"])
def test_a_hostile_node_is_refused_and_the_model_stays_finite_and_learns(kind, caplog):
    strategy, mod = _pair("sign")
    fed = Federation(strategy, mod, nodes=(1, 2, 3, 4), n=200)
    fed.lr = 0.5  # honest nodes alone: 0.20 -> 0.60 in 8 rounds
    start = _accuracy(fed.arrays)
    with caplog.at_level(logging.INFO, logger="e3sfc"):
        for t in range(1, 9):
            fed.round(t, tamper=_hostile(kind))
            w = _flat(fed.arrays)
            assert torch.isfinite(w).all() and float(w.abs().max()) < 100, (t, float(w.abs().max()))
    text = caplog.text
    expected = {"huge-scale": "scaled from norm", "nan-dense": "carries no e3sfc payload",
                "no-record": "carries no e3sfc payload", "nan": "num_samples nan is not a positive integer",
                "inf": "num_samples inf is not a positive integer", "1e12": "claims 1000000000000 samples",
                "-300": "num_samples -300 is not a positive integer"}[kind]
    assert expected in text
    assert _accuracy(fed.arrays) > start + 0.25


def test_replies_to_a_round_not_configured_are_refused(caplog):
    strategy, mod = _pair("sign")
    fed = Federation(strategy, mod, nodes=(1, 2))
    replies = fed.replies(fed.messages(1))
    with caplog.at_level(logging.WARNING, logger="e3sfc"):
        assert strategy.aggregate_train(5, replies) == (None, None)
    assert "replies to a round this strategy did not configure" in caplog.text
    fresh, _ = _pair("sign")
    assert fresh.aggregate_train(1, replies) == (None, None)


def test_replicas_follow_the_initial_model_the_strategy_starts_from():
    """The strategy starts from arrays that are not model_fn()'s weights (the usual case): the server
    compresses its broadcasts at those, and every node's replica equals the server's model each round
    (the digest the wrapper sends matches); a node whose replica is spoiled errs, then gets it dense."""
    strategy, mod = _pair("3sfc", downlink="3sfc", downlink_options=OPTS)
    fed = Federation(strategy, mod, nodes=(1, 2), n=60)
    other = Net()
    with torch.no_grad():
        for q in other.parameters():
            q.mul_(-0.5)
    fed.arrays = ArrayRecord(other.state_dict())
    for t in (1, 2, 3):
        w_t = _flat(fed.arrays)
        spies = {k: {} for k in (1, 2)}
        msgs = fed.messages(t)
        replies = [mod(m, fed.ctx[m.metadata.dst_node_id], _trainer(m.metadata.dst_node_id, 60,
                                                                   spy=spies[m.metadata.dst_node_id])) for m in msgs]
        assert all(torch.equal(spies[k]["w"], w_t) for k in (1, 2)), t  # every node trains from w_t
        fed.arrays, _ = strategy.aggregate_train(t, replies)
        assert torch.equal(_flat(fed.arrays), strategy.server.weights)
    # spoil node 2's replica: its next catch-up does not reach the server's model
    rt = _state(fed.ctx[2])
    rt.replica = rt.replica + 1e-3
    from e3sfc.flower.addon import save_state
    save_state(fed.ctx[2], rt)
    msgs = fed.messages(4)
    m2 = next(m for m in msgs if m.metadata.dst_node_id == 2)
    with pytest.raises(StaleReplica, match="node 2: its model of round 4 differs from the server's"):
        mod(m2, fed.ctx[2], _trainer(2, 60))
    m1 = next(m for m in msgs if m.metadata.dst_node_id == 1)
    r1 = mod(m1, fed.ctx[1], _trainer(1, 60))
    fed.arrays, _ = strategy.aggregate_train(4, [r1, Message(flwr.app.Error(code=0, reason="stale"), reply_to=m2)])
    m2 = next(m for m in fed.messages(5) if m.metadata.dst_node_id == 2)
    assert "e3sfc-down" not in m2.content  # dense again
    spy = {}
    mod(m2, fed.ctx[2], _trainer(2, 60, spy=spy))
    assert torch.equal(spy["w"], strategy.server.weights)


def test_cclip_hands_the_strategy_updates_whose_weighted_mean_is_the_centered_clipping_aggregate():
    strategy, mod = _pair("fedavg", aggregate="cclip")
    fed = Federation(strategy, mod, nodes=(1, 2, 3, 4), n=100)
    w0 = _flat(fed.arrays)
    fed.round(1, tamper=_hostile("1e12"))  # node 1 claims 1e12 samples: held to the round's median
    center = strategy.server.center
    assert center is not None
    assert torch.allclose(_flat(fed.arrays) - w0, center, atol=1e-5)
    fed.round(2)
    assert torch.allclose(_flat(fed.arrays) - w0 - center, strategy.server.center, atol=1e-5)


def _flipped(replies):
    """Node 1's fedavg payload replaced by twice its update, sign-flipped (under the 3x median norm bound)."""
    r = next(r for r in replies if r.metadata.src_node_id == 1)
    p = wire.decode(r.content[RECORD]["payload"])
    r.content[RECORD] = ConfigRecord({"payload": wire.encode(wire.Payload(p.method, (-2 * p.fields[0],)))})


def test_direction_hands_the_strategy_only_the_updates_that_pass_the_screen():
    """Node 1 sends its update sign-flipped in rounds 1 (no history: against the median of the others) and 2
    (against the history the wrapper keeps from the strategy's move): the strategy gets the other three, so the
    model is where nodes 2, 3 and 4 alone take it; the wrapper keeps each node's standing too."""
    strategy, mod = _pair("fedavg", aggregate="direction")
    fed = Federation(strategy, mod, nodes=(1, 2, 3, 4), n=100)
    alone, mod2 = _pair("fedavg", aggregate="direction")
    ref = Federation(alone, mod2, nodes=(2, 3, 4), n=100)
    ws = [_flat(fed.arrays)]
    for t in (1, 2):
        _, _, metrics = fed.round(t, tamper=_flipped)
        ref.round(t)
        assert metrics["e3sfc-screened"] == 1 and metrics["e3sfc-refused"] == 0
        torch.testing.assert_close(_flat(fed.arrays), _flat(ref.arrays), rtol=1e-6, atol=1e-7)
        ws.append(_flat(fed.arrays))
    # the screen's reference: 0.9 x the first move + the second
    torch.testing.assert_close(strategy.server.center, 0.9 * (ws[1] - ws[0]) + (ws[2] - ws[1]), rtol=1e-5, atol=1e-7)
    # node 1 honest again: left out while its mean pull over its rounds is below -0.1, then taken back
    screened = [fed.round(t)[2]["e3sfc-screened"] for t in range(3, 7)]
    assert screened[0] == 1 and screened[-1] == 0 and screened == sorted(screened, reverse=True)
