"""Compression for an ordinary Flower app: a ClientApp mod and a strategy wrapper.

The pattern is Flower's own for add-ons (its client-side differential-privacy pair,
``fixedclipping_mod`` with ``DifferentialPrivacyClientSideFixedClipping``)::

    from e3sfc.flower.addon import CompressedStrategy, compression_mod

    app = ClientApp(mods=[compression_mod(Net, (1, 28, 28), 10, "3sfc")])          # client_app.py
    strategy = CompressedStrategy(FedAvg(...), Net, (1, 28, 28), 10, "3sfc")      # server_app.py

``model_fn()`` builds the app's torch model (the decoder of the synthesis methods is the model);
``input_shape`` and ``num_classes`` size the synthetic samples. The app keeps its strategy, its
training code and its ``ArrayRecord``s.

A training round t: the wrapper sends the inner strategy's messages unchanged (w_t, dense) and
remembers w_t. The app's train function returns its updated ArrayRecord as always; the mod then
forms the update Delta = w_k - w_t over the model's parameters (``named_parameters`` order), adds
the node's error-feedback residual (kept in the node's ``Context.state``), compresses it with the
e3sfc method at w_t and replies with the payload's bytes (ConfigRecord ``e3sfc``, field
``payload``) in place of the parameters; buffers, if the model has any, stay in the ArrayRecord
(dense). Metrics ``e3sfc-uplink-bytes`` (the payload) and ``e3sfc-dense-bytes`` (the parameters
as float32) go with the reply. The wrapper checks and decodes each payload at w_t (a reply that
does not decode to a finite update of the right size is dropped with a warning), puts
w_t + decoded back as the reply's ArrayRecord and lets the inner strategy aggregate as usual.

The downlink (``downlink="3sfc"`` on both sides, E-3SFC's double-way compression; any method
works): after the inner strategy aggregates, the wrapper compresses the aggregate's move plus its
own error-feedback residual at w_t, and the global model moves by exactly the decoded broadcast,
w_{t+1} = w_t + decode(blob_t), which is what the strategy sees from then on. A train message to a
node that holds w_v (v < t, at most ``max_replay`` rounds behind) carries no parameters, only the
broadcasts of rounds v..t-1 (ConfigRecord ``e3sfc-down``); the mod replays them on the node's
replica (kept in its state with its round) and hands the app's train function w_t as a normal
ArrayRecord. A node seen for the first time, too far behind, or whose last message failed gets the
model dense. A replica that does not hold the round the replay starts from is an error reply, and
the node gets the dense model next time. Evaluation messages stay dense.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from ..compress import Compressor, make_compressor
from ..compress.base import Context as CompressContext
from ..errors import PayloadError
from ..federated.params import set_flat

log = logging.getLogger(__name__)

RECORD = "e3sfc"                 # ConfigRecord of the reply that carries the payload
STATE = "e3sfc_residual"         # ArrayRecord in the node's state: its error-feedback residual
DOWN = "e3sfc-down"              # ConfigRecord of a train message: the broadcasts to replay ("from", "blobs")
REPLICA = "e3sfc_replica"        # ArrayRecord in the node's state: its model under a compressed downlink
VERSION = "e3sfc_version"        # ConfigRecord in the node's state: the round whose model the replica is
METHOD_KEY = "e3sfc-method"      # config entry the wrapper adds, checked by the mod


class _Codec:
    """What both ends share: the model (at w_t), the method, and the map between ArrayRecord keys
    and the flat parameter vector."""

    def __init__(self, model_fn: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int,
                 method: str, downlink: str | None = None, downlink_options: dict | None = None, **options: Any):
        self.model = model_fn().eval()
        self.names = [n for n, _ in self.model.named_parameters()]
        sizes = [p.numel() for p in self.model.parameters()]
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        self.span = {n: (a, a + b) for n, a, b in zip(self.names, starts, sizes)}  # name -> slice of the flat vector
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.method = method
        self.compressor: Compressor = make_compressor(method, **options)
        self.down: Compressor | None = make_compressor(downlink, **(downlink_options or {})) if downlink else None
        down = [f"downlink={downlink}", *(f"{k}={v}" for k, v in sorted((downlink_options or {}).items()))]
        self.spec = " ".join([method, *(f"{k}={options[k]}" for k in sorted(options)), *(down if downlink else [])])

    def flat(self, arrays: ArrayRecord) -> torch.Tensor:
        """The parameters of an ArrayRecord as one float32 vector (``named_parameters`` order)."""
        missing = [n for n in self.names if n not in arrays]
        if missing:
            raise ValueError(f"the ArrayRecord lacks the model's parameters {missing[:3]}")
        return torch.cat([torch.as_tensor(np.asarray(arrays[n].numpy()), dtype=torch.float32).reshape(-1)
                          for n in self.names])

    def unflat(self, flat: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
        """``like`` with its parameters replaced by ``flat`` (same keys, order and shapes)."""
        out = {}
        for k in like.keys():
            if k in self.span:
                a, (lo, hi) = like[k].numpy(), self.span[k]
                out[k] = Array(flat[lo:hi].reshape(a.shape).numpy().astype(a.dtype))
            else:
                out[k] = like[k]
        return ArrayRecord(array_dict=out)

    def template(self, buffers: ArrayRecord) -> ArrayRecord:
        """An ArrayRecord of the model's keys in ``state_dict`` order: ``buffers``' arrays where it has
        them, zeros for the parameters (to be filled by :meth:`unflat`)."""
        out = {k: buffers[k] if k in buffers else Array(v.detach().numpy())
               for k, v in self.model.state_dict().items()}
        return ArrayRecord(array_dict=out)

    def replay(self, w: torch.Tensor, start: int, blobs: list[bytes]) -> torch.Tensor:
        """w moved by the broadcasts of rounds start, start + 1, ... (what the server applied)."""
        for i, blob in enumerate(blobs):
            w = w + self.down.decode_update(blob, self.context(w, start + i, -1))
        return w

    def context(self, w: torch.Tensor, round: int, node: int) -> CompressContext:
        set_flat(self.model, w)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([round, node + 1]).generate_state(1)[0]))
        return CompressContext(self.model, w, self.input_shape, self.num_classes, round=round, client=node,
                               generator=g)


def compression_mod(model_fn: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int,
                    method: str = "3sfc", downlink: str | None = None, downlink_options: dict | None = None,
                    **options: Any) -> Callable[[Message, Context, Callable], Message]:
    """A ClientApp mod that compresses the train reply's update with ``method`` (error feedback kept
    in the node's state) and, with ``downlink``, replays the server's compressed broadcasts on the
    node's replica. Use with :class:`CompressedStrategy` of the same method, downlink and options."""
    codec = _Codec(model_fn, input_shape, num_classes, method, downlink, downlink_options, **options)

    def catch_up(msg: Message, ctx: Context, round: int) -> None:
        """Under a compressed downlink: the message's model (dense, or replayed from the node's replica)
        becomes the node's replica and the ArrayRecord the app's train function reads."""
        key, sent = next(iter(msg.content.array_records.items()))
        if DOWN in msg.content:
            start, blobs = int(msg.content[DOWN]["from"]), list(msg.content[DOWN]["blobs"])
            have = ctx.state.config_records.get(VERSION)
            if have is None or REPLICA not in ctx.state or int(have["round"]) != start:
                raise ValueError(f"compression_mod: this node holds the model of round "
                                 f"{None if have is None else int(have['round'])}; the server replays from {start}")
            w = codec.replay(torch.as_tensor(ctx.state[REPLICA]["w"].numpy()), start, blobs)
            msg.content[key] = codec.unflat(w, codec.template(sent))
            del msg.content[DOWN]
        else:
            w = codec.flat(sent)
        ctx.state[REPLICA] = ArrayRecord(array_dict={"w": Array(w.numpy())})
        ctx.state[VERSION] = ConfigRecord({"round": round})

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != "train" or len(msg.content.array_records) != 1:
            return call_next(msg, ctx)
        config = next((c for c in msg.content.config_records.values() if METHOD_KEY in c), {})
        if config.get(METHOD_KEY) not in (None, codec.spec):
            raise ValueError(f"compression_mod: the server compresses with {config.get(METHOD_KEY)!r}, "
                             f"this client with {codec.spec!r}")
        if codec.down is not None:
            catch_up(msg, ctx, int(config.get("server-round", 0) or 0))
        sent = next(iter(msg.content.array_records.values()))
        w_t = codec.flat(sent)
        reply = call_next(msg, ctx)
        if reply.has_error() or len(reply.content.array_records) != 1:
            return reply
        key, trained = next(iter(reply.content.array_records.items()))
        delta = codec.flat(trained) - w_t
        residual = ctx.state.array_records.get(STATE)
        target = delta + (torch.as_tensor(residual["e"].numpy()) if residual is not None
                          and codec.compressor.biased else 0.0)
        node = int(ctx.node_config.get("partition-id", ctx.node_id))  # stable across runs where the app has one
        cctx = codec.context(w_t, int(config.get("server-round", 0) or 0), node)
        payload, _ = codec.compressor.compress(target, cctx)
        blob = codec.compressor.encode(payload)
        if codec.compressor.biased:
            decoded = codec.compressor.decompress(payload, cctx)
            if not torch.isfinite(decoded).all():  # the server will drop it: keep the whole target
                decoded = torch.zeros_like(decoded)
            ctx.state[STATE] = ArrayRecord(array_dict={"e": Array((target - decoded).numpy())})
        buffers = {k: trained[k] for k in trained.keys() if k not in codec.names}
        reply.content[key] = ArrayRecord(array_dict=buffers)
        reply.content[RECORD] = ConfigRecord({"payload": blob})
        metrics = next(iter(reply.content.metric_records.values()), None)
        if metrics is not None:
            metrics["e3sfc-uplink-bytes"] = len(blob)
            metrics["e3sfc-dense-bytes"] = 4 * w_t.numel()
        return reply

    return mod


class CompressedStrategy(Strategy):
    """Wraps a Flower strategy so that it aggregates the updates :func:`compression_mod` compressed."""

    def __init__(self, strategy: Strategy, model_fn: Callable[[], nn.Module], input_shape: tuple[int, ...],
                 num_classes: int, method: str = "3sfc", downlink: str | None = None,
                 downlink_options: dict | None = None, max_replay: int = 20, **options: Any):
        super().__init__()
        self.strategy = strategy
        self.codec = _Codec(model_fn, input_shape, num_classes, method, downlink, downlink_options, **options)
        self.sent: dict[int, ArrayRecord] = {}
        self.max_replay = max_replay
        self.w: torch.Tensor | None = None          # the model every node can hold: w_t (compressed downlink)
        self.residual: torch.Tensor | None = None   # the server's error-feedback residual
        self.history: dict[int, bytes] = {}         # round r -> the broadcast that moved w_r to w_{r+1}
        self.version: dict[int, int] = {}           # node -> the round whose model its last message gave it

    def __repr__(self) -> str:
        return f"CompressedStrategy({self.codec.method}, {self.strategy!r})"

    def summary(self) -> None:
        log.info("e3sfc compression: %s on the uplink, %s on the downlink", self.codec.method,
                 "dense" if self.codec.down is None else type(self.codec.down).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sent = {server_round: arrays}
        config[METHOD_KEY] = self.codec.spec
        config["server-round"] = server_round
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        if self.codec.down is None:
            return messages
        if self.w is None:
            self.w = self.codec.flat(arrays)  # round 1: the initial model, sent dense to every node
        return [self._downlink(server_round, m, arrays) for m in messages]

    def _downlink(self, t: int, msg: Message, arrays: ArrayRecord) -> Message:
        """A train message for a node that holds w_v: the broadcasts of rounds v..t-1 instead of w_t."""
        node = msg.metadata.dst_node_id
        v = self.version.get(node)
        if v is not None and 0 < t - v <= self.max_replay and all(r in self.history for r in range(v, t)):
            key = next(iter(msg.content.array_records.keys()))
            buffers = {k: arrays[k] for k in arrays.keys() if k not in self.codec.span}
            content = RecordDict(dict(msg.content.items()))  # strategies may share one content among messages
            content[key] = ArrayRecord(array_dict=buffers)
            content[DOWN] = ConfigRecord({"from": v, "blobs": [self.history[r] for r in range(v, t)]})
            msg.content = content
        self.version[node] = t
        return msg

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sent = self.sent.get(server_round)
        kept = []
        for reply in replies:
            if reply.has_error():
                self.version.pop(reply.metadata.src_node_id, None)  # its replica may be stale: dense next time
            if reply.has_error() or RECORD not in reply.content or sent is None:
                kept.append(reply)
                continue
            try:
                w_t = self.codec.flat(sent)
                blob = reply.content[RECORD]["payload"]
                if not isinstance(blob, bytes):
                    raise PayloadError("the payload is not bytes")
                upd = self.codec.compressor.decode_update(blob, self.codec.context(w_t, server_round, -1))
                key = next(iter(reply.content.array_records.keys()), "arrays")
                buffers = reply.content.array_records.get(key)
                like = ArrayRecord(array_dict={k: (buffers[k] if buffers is not None and k in buffers else sent[k])
                                               for k in sent.keys()})
                del reply.content[RECORD]
                reply.content[key] = self.codec.unflat(w_t + upd, like)
            except (PayloadError, ValueError, KeyError, TypeError) as exc:
                log.warning("round %d: dropped a reply whose payload does not decode (%s)", server_round, exc)
                continue
            kept.append(reply)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        if self.codec.down is None or arrays is None or self.w is None:
            return arrays, metrics
        return self._broadcast(server_round, arrays), self._with_downlink_bytes(metrics, server_round)

    def _broadcast(self, t: int, arrays: ArrayRecord) -> ArrayRecord:
        """Compress the aggregate's move (plus the server residual) at w_t and move the model by exactly
        what the nodes will decode: w_{t+1} = w_t + decode(blob_t)."""
        down, w_t = self.codec.down, self.w
        target = self.codec.flat(arrays) - w_t
        if self.residual is not None and down.biased:
            target = target + self.residual
        payload, _ = down.compress(target, self.codec.context(w_t, t, -1))
        blob = down.encode(payload)
        applied = down.decode_update(blob, self.codec.context(w_t, t, -1))
        if down.biased:
            self.residual = target - applied
        self.w = w_t + applied
        self.history[t] = blob
        for r in [r for r in self.history if r < t - self.max_replay]:
            del self.history[r]
        return self.codec.unflat(self.w, arrays)

    def _with_downlink_bytes(self, metrics: MetricRecord | None, t: int) -> MetricRecord:
        metrics = metrics if metrics is not None else MetricRecord({})
        metrics["e3sfc-downlink-bytes"] = len(self.history[t])
        metrics["e3sfc-dense-bytes"] = 4 * int(self.w.numel())
        return metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
