"""The Flower add-on (compression_mod + CompressedStrategy) on hand-built Flower messages: what the
inner strategy aggregates is w_t + the decoded updates, the node keeps its residual (EF identity),
the bytes are the payload's, buffers travel dense, a broken payload is dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

flwr = pytest.importorskip("flwr")
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from e3sfc.flower.addon import RECORD, STATE, CompressedStrategy, compression_mod  # noqa: E402

OPTS = dict(samples=2, steps=2, max_iter=5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.register_buffer("seen", torch.zeros(1))  # a buffer: travels dense

    def forward(self, x):
        return self.body(x)


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower builds Messages inside a run only; give these tests one."""
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


def _trainer(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)

    def train(msg: Message, ctx: Context) -> Message:
        m = Net()
        m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for i in range(0, n, 20):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[i:i + 20]), y[i:i + 20]).backward()
            opt.step()
        m.seen += n
        content = RecordDict({"arrays": ArrayRecord(m.state_dict()), "metrics": MetricRecord({"num-examples": n})})
        return Message(content, reply_to=msg)

    return train


def _round(strategy, w_t: ArrayRecord, node: int):
    cfg = ConfigRecord({"lr": 0.1})
    strategy.sent = {1: w_t}
    cfg["e3sfc-method"], cfg["server-round"] = strategy.codec.spec, 1
    return Message(RecordDict({"arrays": w_t, "config": cfg}), dst_node_id=node, message_type="train")


def _flat(arrays: ArrayRecord, names) -> torch.Tensor:
    return torch.cat([torch.as_tensor(arrays[n].numpy()).reshape(-1) for n in names])


def test_mod_and_wrapper_aggregate_the_decoded_updates_with_error_feedback():
    mod = compression_mod(Net, (1, 8, 8), 10, "3sfc", **OPTS)
    strategy = CompressedStrategy(FedAvg(), Net, (1, 8, 8), 10, "3sfc", **OPTS)
    w_t = ArrayRecord(Net().state_dict())
    names = [n for n, _ in Net().named_parameters()]
    w = _flat(w_t, names)
    replies, expected, weights = [], [], []
    for node, n in ((7, 100), (9, 300)):
        ctx = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
        reply = mod(_round(strategy, w_t, node), ctx, _trainer(node, n))
        blob = reply.content[RECORD]["payload"]
        assert len(blob) == strategy.codec.compressor.payload_bytes(strategy.codec.context(w, 1, -1))
        assert reply.content["metrics"]["e3sfc-uplink-bytes"] == len(blob)
        assert reply.content["metrics"]["e3sfc-dense-bytes"] == 4 * w.numel()
        assert list(reply.content["arrays"].keys()) == ["seen"]  # parameters left, the buffer stays
        decoded = strategy.codec.compressor.decode_update(blob, strategy.codec.context(w, 1, -1))
        # EF: the node keeps target - decoded, so decoded + residual is the update it trained
        trained = _trainer(node, n)(_round(strategy, w_t, node), ctx).content["arrays"]
        residual = torch.as_tensor(ctx.state[STATE]["e"].numpy())
        torch.testing.assert_close(decoded + residual, _flat(trained, names) - w, rtol=0, atol=1e-5)
        replies.append(reply)
        expected.append(w + decoded)
        weights.append(n)
    arrays, metrics = strategy.aggregate_train(1, replies)
    mean = (expected[0] * 100 + expected[1] * 300) / 400
    torch.testing.assert_close(_flat(arrays, names), mean, rtol=1e-5, atol=1e-6)
    assert float(arrays["seen"].numpy()[0]) == pytest.approx((100 * 100 + 300 * 300) / 400)  # dense, averaged
    assert metrics["e3sfc-uplink-bytes"] > 0


def test_residual_carries_over_to_the_next_round():
    mod = compression_mod(Net, (1, 8, 8), 10, "topk", ratio=0.05)
    strategy = CompressedStrategy(FedAvg(), Net, (1, 8, 8), 10, "topk", ratio=0.05)
    w_t = ArrayRecord(Net().state_dict())
    ctx = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})
    mod(_round(strategy, w_t, 3), ctx, _trainer(3, 100))
    first = torch.as_tensor(ctx.state[STATE]["e"].numpy()).clone()
    assert float(first.abs().sum()) > 0
    reply = mod(_round(strategy, w_t, 3), ctx, _trainer(3, 100))  # same update again: target = e + delta
    names = [n for n, _ in Net().named_parameters()]
    w = _flat(w_t, names)
    decoded = strategy.codec.compressor.decode_update(reply.content[RECORD]["payload"],
                                                      strategy.codec.context(w, 1, -1))
    second = torch.as_tensor(ctx.state[STATE]["e"].numpy())
    # the second target includes the first residual: its decoded part plus what is left equals e_1 + delta
    delta = _flat(_trainer(3, 100)(_round(strategy, w_t, 3), ctx).content["arrays"], names) - w
    torch.testing.assert_close(decoded + second, first + delta, rtol=0, atol=1e-5)


def test_a_broken_payload_is_dropped_and_the_rest_aggregated():
    mod = compression_mod(Net, (1, 8, 8), 10, "3sfc", **OPTS)
    strategy = CompressedStrategy(FedAvg(), Net, (1, 8, 8), 10, "3sfc", **OPTS)
    w_t = ArrayRecord(Net().state_dict())
    good = mod(_round(strategy, w_t, 1), Context(1, 1, {}, RecordDict(), {}), _trainer(1, 100))
    bad = mod(_round(strategy, w_t, 2), Context(1, 2, {}, RecordDict(), {}), _trainer(2, 100))
    bad.content[RECORD] = ConfigRecord({"payload": b"\x00" * 40})
    alone = CompressedStrategy(FedAvg(), Net, (1, 8, 8), 10, "3sfc", **OPTS)
    alone.sent = {1: w_t}
    good2 = mod(_round(strategy, w_t, 1), Context(1, 1, {}, RecordDict(), {}), _trainer(1, 100))
    arrays, _ = strategy.aggregate_train(1, [good, bad])
    ref, _ = alone.aggregate_train(1, [good2])
    for k in ref.keys():
        np.testing.assert_array_equal(arrays[k].numpy(), ref[k].numpy())


def test_method_mismatch_is_an_error():
    mod = compression_mod(Net, (1, 8, 8), 10, "topk", ratio=0.05)
    strategy = CompressedStrategy(FedAvg(), Net, (1, 8, 8), 10, "3sfc", **OPTS)
    with pytest.raises(ValueError, match="the server compresses with '3sfc max_iter=5 samples=2 steps=2', "
                                         "this client with 'topk ratio=0.05'"):
        mod(_round(strategy, ArrayRecord(Net().state_dict()), 1), Context(1, 1, {}, RecordDict(), {}),
            _trainer(1, 20))


class _Grid:
    """What FedAvg's configure_train asks of a Grid: the connected nodes."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def test_compressed_downlink_replays_broadcasts_on_bit_identical_replicas():
    """Three nodes, four rounds, E-3SFC's both ways through the add-on: round 1 is dense; after it a
    train message carries only the broadcasts a node missed (node 3 skips round 2 and replays two); every
    node trains from exactly the server's w_t; downlink bytes are a payload's (under a tenth of this
    2,410-parameter model)."""
    down = dict(downlink="3sfc", downlink_options=OPTS)
    mod = compression_mod(Net, (1, 8, 8), 10, "3sfc", **down, **OPTS)
    strategy = CompressedStrategy(FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1),
                                  Net, (1, 8, 8), 10, "3sfc", **down, **OPTS)
    names = [n for n, _ in Net().named_parameters()]
    ctxs = {k: Context(run_id=1, node_id=k, node_config={}, state=RecordDict(), run_config={}) for k in (1, 2, 3)}
    arrays = ArrayRecord(Net().state_dict())
    for t, nodes in ((1, (1, 2, 3)), (2, (1, 2)), (3, (1, 2, 3)), (4, (2, 3))):
        w_t = _flat(arrays, names)
        msgs = list(strategy.configure_train(t, arrays, ConfigRecord({"lr": 0.1}), _Grid(nodes)))
        replies = []
        for m in msgs:
            k = m.metadata.dst_node_id
            dense = len(m.content["arrays"].keys()) > 1
            assert dense == (t == 1), (t, k)  # after round 1 no message carries parameters
            if not dense:
                assert len(m.content["e3sfc-down"]["blobs"]) == (2 if (t, k) == (3, 3) else 1)
            seen = {}

            def train(msg, ctx, k=k, seen=seen):
                seen["w"] = _flat(msg.content["arrays"], names)
                return _trainer(k, 60)(msg, ctx)

            replies.append(mod(m, ctxs[k], train))
            assert torch.equal(seen["w"], w_t)  # the node trains from the server's model, bit for bit
            assert torch.equal(torch.as_tensor(ctxs[k].state["e3sfc_replica"]["w"].numpy()), w_t)
        arrays, metrics = strategy.aggregate_train(t, replies)
        assert torch.equal(_flat(arrays, names), strategy.w)
        assert 0 < metrics["e3sfc-downlink-bytes"] * 10 < metrics["e3sfc-dense-bytes"]  # 2,410 parameters


def test_a_node_with_a_stale_replica_errs_then_gets_the_dense_model():
    down = dict(downlink="3sfc", downlink_options=OPTS)
    mod = compression_mod(Net, (1, 8, 8), 10, "3sfc", **down, **OPTS)
    strategy = CompressedStrategy(FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1),
                                  Net, (1, 8, 8), 10, "3sfc", **down, **OPTS)
    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    arrays = ArrayRecord(Net().state_dict())
    (m,) = strategy.configure_train(1, arrays, ConfigRecord({}), _Grid([5]))
    arrays, _ = strategy.aggregate_train(1, [mod(m, ctx, _trainer(5, 60))])
    (m,) = strategy.configure_train(2, arrays, ConfigRecord({}), _Grid([5]))
    fresh = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})  # state lost
    with pytest.raises(ValueError, match="holds the model of round None; the server replays from 1"):
        mod(m, fresh, _trainer(5, 60))
    error = Message(flwr.app.Error(code=0, reason="stale"), reply_to=m)
    strategy.aggregate_train(2, [error])
    (m,) = strategy.configure_train(3, arrays, ConfigRecord({}), _Grid([5]))
    assert "e3sfc-down" not in m.content and len(m.content["arrays"].keys()) > 1  # dense again
