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
The downlink stays dense here (the ``e3sfc run --engine flower`` driver has the compressed one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
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
METHOD_KEY = "e3sfc-method"      # config entry the wrapper adds, checked by the mod


class _Codec:
    """What both ends share: the model (at w_t), the method, and the map between ArrayRecord keys
    and the flat parameter vector."""

    def __init__(self, model_fn: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int,
                 method: str, **options: Any):
        self.model = model_fn().eval()
        self.names = [n for n, _ in self.model.named_parameters()]
        sizes = [p.numel() for p in self.model.parameters()]
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        self.span = {n: (a, a + b) for n, a, b in zip(self.names, starts, sizes)}  # name -> slice of the flat vector
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.method = method
        self.compressor: Compressor = make_compressor(method, **options)
        self.spec = " ".join([method, *(f"{k}={options[k]}" for k in sorted(options))])  # both ends must agree

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

    def context(self, w: torch.Tensor, round: int, node: int) -> CompressContext:
        set_flat(self.model, w)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([round, node + 1]).generate_state(1)[0]))
        return CompressContext(self.model, w, self.input_shape, self.num_classes, round=round, client=node,
                               generator=g)


def compression_mod(model_fn: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int,
                    method: str = "3sfc", **options: Any) -> Callable[[Message, Context, Callable], Message]:
    """A ClientApp mod that compresses the train reply's update with ``method`` (error feedback kept
    in the node's state). Use with :class:`CompressedStrategy` of the same method and options."""
    codec = _Codec(model_fn, input_shape, num_classes, method, **options)

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != "train" or len(msg.content.array_records) != 1:
            return call_next(msg, ctx)
        config = next(iter(msg.content.config_records.values()), {})
        if config.get(METHOD_KEY) not in (None, codec.spec):
            raise ValueError(f"compression_mod: the server compresses with {config.get(METHOD_KEY)!r}, "
                             f"this client with {codec.spec!r}")
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
                 num_classes: int, method: str = "3sfc", **options: Any):
        super().__init__()
        self.strategy = strategy
        self.codec = _Codec(model_fn, input_shape, num_classes, method, **options)
        self.sent: dict[int, ArrayRecord] = {}

    def __repr__(self) -> str:
        return f"CompressedStrategy({self.codec.method}, {self.strategy!r})"

    def summary(self) -> None:
        log.info("e3sfc compression: %s on the uplink", self.codec.method)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sent = {server_round: arrays}
        config[METHOD_KEY] = self.codec.spec
        config["server-round"] = server_round
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sent = self.sent.get(server_round)
        kept = []
        for reply in replies:
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
        return self.strategy.aggregate_train(server_round, kept)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
