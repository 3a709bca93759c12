"""Compression for an ordinary Flower app: a ClientApp mod and a strategy wrapper.

The pattern is Flower's own for add-ons (its client-side differential-privacy pair,
``fixedclipping_mod`` with ``DifferentialPrivacyClientSideFixedClipping``)::

    from e3sfc.flower.addon import CompressedStrategy, compression_mod

    app = ClientApp(mods=[compression_mod(Net, (1, 28, 28), 10)])                          # client_app.py
    strategy = CompressedStrategy(FedAvg(...), Net, (1, 28, 28), 10, run_config=context.run_config)  # server

``model_fn()`` builds the app's torch model (the decoder of the synthesis methods is the model);
``input_shape`` (C, H, W, no batch dimension) and ``num_classes`` size the synthetic samples. The
settings (method, its options, the downlink) come from the app's run config, keys ``e3sfc-method``,
``e3sfc-samples``, ``e3sfc-feature-bits``, ... (any ``e3sfc run`` setting with the prefix), so both
ends read one place; or pass them to both: ``compression_mod(Net, shape, 10, "3sfc", samples=4)``.
They are validated as ``e3sfc run`` validates its flags.

This is an adapter: the round's logic is :mod:`e3sfc.federated.runtime`'s, the same client
step and server step as ``e3sfc run`` (one seeding, one error feedback, one replay rule, one
set of server checks). The adapter maps Flower records to flat vectors and node ids to client
ids, and keeps each node's runtime state in its ``Context.state``.

A training round t:
- The wrapper lets the inner strategy configure the round, tags each train message with its
  settings (``e3sfc-method``) and the round, and under a compressed downlink replaces the model
  in the message of a node that holds an earlier model by the broadcasts it missed (record
  ``e3sfc-down``), as the runtime's downlink plans it; a node met for the first time, too far
  behind or whose last reply failed gets the model dense.
- The mod checks the settings (a mismatch is an error reply whose reason the wrapper turns into a
  stop of the run), catches the node up (its replica must then equal w_t: the wrapper sends a digest
  of w_t, and a node whose model differs errs and gets the model dense next time), lets the app train on
  w_t as it always does, forms the EF target from the app's update Delta = w_k - w_t over the
  model's parameters (``named_parameters`` order), compresses it and replies with the payload
  (ConfigRecord ``e3sfc``, field ``payload``) in place of the parameters. Buffers stay in the
  ArrayRecord, dense, in their dtype.
- The wrapper screens every reply as the server step does: a reply without a payload, with a
  payload of the wrong size or that does not decode to a finite update, or with a sample count
  that is not a positive integer is refused (logged); sample counts are held to ``norm_clip`` x
  the round's median claim and update norms to ``norm_clip`` x the round's median norm. It puts
  w_t + bounded update back as each reply's ArrayRecord (under ``aggregate`` cclip: w_t + the
  update's clipped deviation around the centered-clipping center, so that a strategy that averages
  by sample counts, as FedAvg does, lands on the centered-clipping aggregate; one that does
  something else, FedAdam say, gets the clipped updates as its input; under ``aggregate`` direction:
  w_t + bounded update for the replies that pass the direction screen only, the others are left out
  and counted in ``e3sfc-screened``; w_t + the geometric median for every reply in a round the screen
  cannot decide) and lets the inner strategy aggregate
  (FedAvg, FedAdam, FedYogi, FedProx, ...). Under a compressed downlink it then compresses the
  move the strategy made, plus its residual, and the model moves by exactly the decoded
  broadcast, which every node's replica reproduces bit for bit.

Bytes: each reply's metrics carry ``e3sfc-uplink-bytes`` (the reply as sent, every record counted
as Flower's ``message_size_mod`` counts it) and ``e3sfc-dense-bytes`` (the same reply with the
app's dense ArrayRecord); the wrapper reports their sums over the round's replies, and
``e3sfc-downlink-bytes`` / ``e3sfc-dense-downlink-bytes``, the sums over the round's train
messages as sent and as they would be dense; ``e3sfc-payload-mean-bytes`` is the mean size of the round's
payloads alone (what ``e3sfc run``'s ledger counts), and where a payload budget (the run config's
``e3sfc-payload-bytes``, or the default) sized the synthetic samples, ``e3sfc-fit-feature-res`` (0: the
input's own), ``e3sfc-fit-samples`` and ``e3sfc-fit-feature-bits`` say what it picked for the uplink.
Evaluation messages stay dense.
"""

from __future__ import annotations

import hashlib
import io as _io
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from ..compress import available_methods, get_compressor_class
from ..compress.threesfc import REFERENCE_PAYLOAD
from ..config import RunConfig
from ..errors import ConfigError
from ..federated.client import ClientUpdate
from ..federated.downlink import TrainIns
from ..federated.params import get_flat, set_flat
from ..federated.runtime import ClientRuntime, ServerRuntime, StaleReplica
from ..federated.server import history, robust
from ..metrics import DOWN
from ..models import check_decoder

log = logging.getLogger(__name__)

RECORD = "e3sfc"                 # ConfigRecord of the reply that carries the payload
STATE = "e3sfc"                  # ConfigRecord in the node's state: its runtime state (torch.save, weights_only)
DOWN_RECORD = "e3sfc-down"       # ConfigRecord of a train message: the broadcasts to replay
METHOD_KEY = "e3sfc-method"      # config entry the wrapper adds, checked by the mod
MODEL_KEY = "e3sfc-model"        # config entry under a compressed downlink: a digest of w_t, checked by the mod
PREFIX = "e3sfc-"                # run-config keys of the add-on's settings
MISMATCH = "e3sfc settings differ"  # in a node's error reply: the wrapper stops the run


class SettingsMismatch(RuntimeError):
    """A node compresses with other settings than the server (or the server does not compress)."""


# The add-on's default size of a 3SFC payload where the app gives none: the published algorithm's
# smallest payload on MNIST (M = 1 float32 sample of 1x28x28, 10 classes: 3,215 bytes), which
# --payload-bytes then fits to the app's own model (a 3x32x32 CNN: R = 8, M = 15, 8-bit, 3,069 bytes).
DEFAULT_PAYLOAD_BYTES = REFERENCE_PAYLOAD
SIZING = ("samples", "feature_bits", "feature_res", "payload_bytes", "budget_bytes", "schedule")


def _sized(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``payload_bytes`` = :data:`DEFAULT_PAYLOAD_BYTES` where a method that takes it
    (3sfc, e3sfc, as the uplink or the downlink) is named and none of :data:`SIZING` is given."""
    given = {k.replace("-", "_") for k in values}
    names = {values.get("method"), values.get("downlink")} - {None, "auto", "dense"}
    takes = any(n in available_methods() and "payload_bytes" in get_compressor_class(n).option_names()
                for n in names)
    return {**values, "payload_bytes": DEFAULT_PAYLOAD_BYTES} if takes and not given & set(SIZING) else values


def settings(method: str | None = None, downlink: str | None = None, downlink_options: dict | None = None,
             run_config: dict | None = None, **options: Any) -> RunConfig:
    """The add-on's settings as a validated :class:`~e3sfc.config.RunConfig`: from ``method`` and its
    options, else from the ``e3sfc-`` keys of a Flower run config. ``downlink_options`` may set the
    downlink's ``ratio``, ``samples`` and ``patience``; its other options are the uplink's. With 3sfc or
    e3sfc and no ``samples``, ``feature_bits``, ``feature_res``, ``payload_bytes`` or budget schedule,
    ``payload_bytes`` is :data:`DEFAULT_PAYLOAD_BYTES` (the payload fitted to the app's model)."""
    if method is None:
        found = {k[len(PREFIX):]: v for k, v in (run_config or {}).items() if k.startswith(PREFIX)}
        if "method" not in found:
            raise ConfigError("e3sfc add-on: no method given and no 'e3sfc-method' in the run config; pass "
                              "method=... or set e3sfc-method in [tool.flwr.app.config]")
        return RunConfig.from_dict(_sized({"engine": "flower", **found}))
    values: dict[str, Any] = {"engine": "flower", "method": method, "downlink": downlink or "auto", **options}
    for k, v in (downlink_options or {}).items():
        if k in ("ratio", "samples", "patience"):
            values[f"downlink_{k}"] = v
        elif values.get(k, getattr(RunConfig(), k, None)) != v:
            raise ConfigError(f"e3sfc add-on: downlink_options {k}={v!r} differs from the uplink's; the downlink "
                              "takes its own ratio, samples and patience and shares every other option")
    return RunConfig.from_dict(_sized(values))


SHARED = ("method", "downlink", "downlink_ratio", "downlink_samples", "downlink_patience", "ef", "seed", "protocol")


def spec(cfg: RunConfig) -> str:
    """What both ends must agree on, as one line: the method, the downlink and every option either
    compressor takes, where it is not ``e3sfc run``'s default (the method always named)."""
    names = set(SHARED) | set(get_compressor_class(cfg.method).option_names())
    if cfg.resolved_downlink != "dense":
        names |= set(get_compressor_class(cfg.resolved_downlink).option_names())
    default, values = RunConfig(engine="flower").to_dict(), cfg.to_dict()
    return " ".join(f"{k}={v}" for k, v in values.items() if k in names and (k == "method" or v != default[k]))


class _Codec:
    """What both ends share: the settings, the model (at w_t) and the map between ArrayRecord keys
    and the flat parameter vector."""

    def __init__(self, model_fn: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int,
                 cfg: RunConfig):
        if cfg.feature_init == "data":  # its search would start from data the add-on never sees
            raise ConfigError("e3sfc add-on: feature_init=data is not allowed: the add-on does not see the app's "
                              "training data; expected noise (data works in e3sfc run and e3sfc's own Flower apps)")
        self.cfg, self.spec = cfg, spec(cfg)
        self.model = model_fn().eval()
        for name in {cfg.method, cfg.resolved_downlink} - {"dense"}:
            if get_compressor_class(name).decodes_through_model:  # a model with BatchNorm: one clear error
                check_decoder(self.model, name)
        self.initial = get_flat(self.model)
        self.names = [n for n, _ in self.model.named_parameters()]
        sizes = [p.numel() for p in self.model.parameters()]
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        self.span = {n: (a, a + b) for n, a, b in zip(self.names, starts, sizes)}  # name -> slice of the flat vector
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    def flat(self, arrays: ArrayRecord) -> torch.Tensor:
        """The parameters of an ArrayRecord as one float32 vector (``named_parameters`` order)."""
        missing = [n for n in self.names if n not in arrays]
        if missing:
            raise ValueError(f"the ArrayRecord lacks the model's parameters {missing[:3]}")
        return torch.cat([torch.as_tensor(np.asarray(arrays[n].numpy()), dtype=torch.float32).reshape(-1)
                          for n in self.names])

    def unflat(self, flat: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
        """``like`` with its parameters replaced by ``flat`` (same keys, order, shapes and dtypes)."""
        out = {}
        for k in like.keys():
            if k in self.span:
                a, (lo, hi) = like[k].numpy(), self.span[k]
                out[k] = Array(flat[lo:hi].reshape(a.shape).numpy().astype(a.dtype))
            else:
                out[k] = like[k]
        return ArrayRecord(array_dict=out)

    def buffers(self, arrays: ArrayRecord) -> ArrayRecord:
        """The entries of ``arrays`` that are not parameters (they travel dense)."""
        return ArrayRecord(array_dict={k: arrays[k] for k in arrays.keys() if k not in self.span})

    def template(self, buffers: ArrayRecord) -> ArrayRecord:
        """An ArrayRecord of the model's keys in ``state_dict`` order: ``buffers``' arrays where it has
        them, the model's for the parameters (to be filled by :meth:`unflat`)."""
        return ArrayRecord(array_dict={k: buffers[k] if k in buffers else Array(v.detach().numpy())
                                       for k, v in self.model.state_dict().items()})


def message_bytes(content: RecordDict) -> int:
    """A message's size as Flower's ``message_size_mod`` counts it: every record's ``count_bytes``."""
    return sum(record.count_bytes() for record in content.values())


def load_state(context: Context, rt: ClientRuntime) -> None:
    """A node's runtime state from its Flower state (tensors and numbers only: read with weights_only)."""
    if STATE in context.state:
        rt.load_state_dict(torch.load(_io.BytesIO(bytes(context.state[STATE]["state"])), weights_only=True))


def save_state(context: Context, rt: ClientRuntime) -> None:
    buf = _io.BytesIO()
    torch.save(rt.state_dict(), buf)
    context.state[STATE] = ConfigRecord({"state": buf.getvalue()})


def digest(w: torch.Tensor) -> str:
    """A short digest of a flat model (its float32 bytes): the mod checks its replica against the server's."""
    return hashlib.blake2b(w.detach().cpu().numpy().tobytes(), digest_size=16).hexdigest()


def _sample_count(value: Any) -> Any:
    """A reply's sample count as a number the server step checks: an integral float becomes an int;
    anything else is passed on as it is (the server step refuses it)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _AppFailed(Exception):
    def __init__(self, reply: Message):
        self.reply = reply


def compression_mod(model_fn: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int,
                    method: str | None = None, downlink: str | None = None, downlink_options: dict | None = None,
                    **options: Any) -> Callable[[Message, Context, Callable], Message]:
    """A ClientApp mod that compresses the train reply's update (the shared client step: catch-up,
    error feedback, compression) and, under a compressed downlink, replays the server's broadcasts on
    the node's replica. Settings as :func:`settings` (``method=None``: from the node's run config);
    use with :class:`CompressedStrategy` of the same settings."""
    fixed = settings(method, downlink, downlink_options, **options) if method is not None else None
    codecs: dict[str, _Codec] = {}

    def codec_for(ctx: Context) -> _Codec:
        cfg = fixed or settings(run_config=dict(ctx.run_config))
        key = spec(cfg)
        if key not in codecs:
            codecs.clear()
            codecs[key] = _Codec(model_fn, input_shape, num_classes, cfg)
        return codecs[key]

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != "train" or len(msg.content.array_records) != 1:
            return call_next(msg, ctx)
        codec = codec_for(ctx)
        config = next((c for c in msg.content.config_records.values() if METHOD_KEY in c), None)
        if config is None:
            raise ValueError(f"{MISMATCH}: the server does not compress (its train message has no {METHOD_KEY}); "
                             "wrap its strategy in e3sfc.flower.addon.CompressedStrategy")
        if config[METHOD_KEY] != codec.spec:
            raise ValueError(f"{MISMATCH}: the server compresses with [{config[METHOD_KEY]}], "
                             f"this node with [{codec.spec}]")
        t = int(config["server-round"])
        node = int(ctx.node_config.get("partition-id", ctx.node_id))  # stable across runs where the app has one
        rt = ClientRuntime(codec.cfg, node, codec.input_shape, codec.num_classes, codec.initial)
        load_state(ctx, rt)
        key, sent = next(iter(msg.content.array_records.items()))
        ins, given = TrainIns(t, None), None
        if DOWN_RECORD in msg.content:
            d = msg.content[DOWN_RECORD]
            ins.broadcasts = [(int(d["from"]) + i, bytes(b), int(m)) for i, (b, m) in
                              enumerate(zip(d["blobs"], d["samples"]))]
        else:
            given = codec.flat(sent)
        out: dict[str, Any] = {}

        def train(w: torch.Tensor, round: int) -> tuple[torch.Tensor, int]:
            if MODEL_KEY in config and digest(w) != config[MODEL_KEY]:
                raise StaleReplica(f"node {node}: its model of round {t} differs from the server's; the server "
                                   "sends the model dense next time")
            if DOWN_RECORD in msg.content:  # the app trains from w_t as from any model it is sent
                msg.content[key] = codec.unflat(w, codec.template(sent))
                del msg.content[DOWN_RECORD]
            reply = call_next(msg, ctx)
            if reply.has_error() or len(reply.content.array_records) != 1:
                raise _AppFailed(reply)
            out["reply"] = reply
            trained = next(iter(reply.content.array_records.values()))
            metrics = next(iter(reply.content.metric_records.values()), {})
            return codec.flat(trained) - w, _sample_count(metrics.get("num-examples", 1))

        try:
            u = rt.step(ins, codec.model, train, given)
        except _AppFailed as failed:
            save_state(ctx, rt)  # the catch-up happened: the node holds w_t
            return failed.reply
        save_state(ctx, rt)
        reply = out["reply"]
        rkey, trained = next(iter(reply.content.array_records.items()))
        if not reply.content.metric_records:
            reply.content["metrics"] = MetricRecord({})
        metrics = next(iter(reply.content.metric_records.values()))
        metrics["e3sfc-uplink-bytes"] = metrics["e3sfc-dense-bytes"] = 0  # 8 bytes each, whatever the value
        dense = message_bytes(reply.content)
        reply.content[rkey] = codec.buffers(trained)
        reply.content[RECORD] = ConfigRecord({"payload": u.blob})
        metrics["e3sfc-uplink-bytes"], metrics["e3sfc-dense-bytes"] = message_bytes(reply.content), dense
        return reply

    return mod


class CompressedStrategy(Strategy):
    """Wraps a Flower strategy so that it aggregates the updates :func:`compression_mod` compressed,
    screened and bounded by the shared server step (see the module docstring)."""

    def __init__(self, strategy: Strategy, model_fn: Callable[[], nn.Module], input_shape: tuple[int, ...],
                 num_classes: int, method: str | None = None, downlink: str | None = None,
                 downlink_options: dict | None = None, *, run_config: dict | None = None, **options: Any):
        super().__init__()
        self.strategy = strategy
        self.codec = _Codec(model_fn, input_shape, num_classes,
                            settings(method, downlink, downlink_options, run_config, **options))
        self.server: ServerRuntime | None = None     # built from the initial model at round 1
        self.index: dict[int, int] = {}              # node id -> client id (ledger, downlink)
        self.round: int | None = None                # the round whose train messages went out
        self.sent: ArrayRecord | None = None         # and the model they carried (buffers, dtypes)
        self.down_bytes = self.dense_down_bytes = 0

    def __repr__(self) -> str:
        return f"CompressedStrategy({self.codec.spec}, {self.strategy!r})"

    @property
    def method(self) -> str:
        return self.codec.cfg.method

    def summary(self) -> None:
        log.info("e3sfc compression: %s (uplink %s, downlink %s)", self.codec.spec, self.codec.cfg.method,
                 self.codec.cfg.resolved_downlink)
        self.strategy.summary()

    def _client(self, node: int) -> int:
        if node not in self.index:
            self.index[node] = len(self.index)
            self.server.downlink.grow(len(self.index))
        return self.index[node]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        t, codec = server_round, self.codec
        w = codec.flat(arrays)
        if self.server is None:
            self.server = ServerRuntime(codec.cfg, codec.model, w.clone(), codec.input_shape, codec.num_classes)
        server = self.server
        if not torch.equal(w, server.weights):  # the strategy's model (dense downlink), or one set from outside
            if server.downlink.compressed and t > 1:
                log.warning("round %d: the model differs from the last broadcast's; every node gets it dense", t)
                server.downlink.version[:] = 0
            server.weights = w
            set_flat(server.model, w)
        config[METHOD_KEY], config["server-round"] = codec.spec, t
        if server.downlink.compressed:
            config[MODEL_KEY] = digest(server.weights)
        messages = list(self.strategy.configure_train(t, arrays, config, grid))
        self.round, self.sent = t, arrays
        server.asked = [self._client(m.metadata.dst_node_id) for m in messages]
        self.down_bytes = self.dense_down_bytes = 0
        for m, k in zip(messages, server.asked):
            self.dense_down_bytes += message_bytes(m.content)
            if server.downlink.compressed and server.downlink.plan(t, k, server.dense_bytes) == "replay":
                missed = server.downlink.missed(t, k)
                content = RecordDict(dict(m.content.items()))  # strategies may share one content among messages
                content[next(iter(content.array_records.keys()))] = codec.buffers(arrays)
                content[DOWN_RECORD] = ConfigRecord({"from": missed[0][0], "blobs": [b for _, b, _ in missed],
                                                     "samples": [s for _, _, s in missed]})
                m.content = content
            server.downlink.delivered(t, k)
            n = message_bytes(m.content)
            server.ledger.add(t, k, DOWN, n)
            self.down_bytes += n
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t, codec, server = server_round, self.codec, self.server
        replies = list(replies)
        if server is None or t != self.round:
            log.warning("round %d: %d replies to a round this strategy did not configure (it configured round %s): "
                        "all refused", t, len(replies), self.round)
            return None, None
        weight_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        updates, by_client, up, dense = [], {}, 0, 0
        for r in replies:
            node = r.metadata.src_node_id
            k = self.index.get(node)
            if r.has_error():
                if MISMATCH in (r.error.reason or ""):
                    raise SettingsMismatch(f"round {t}: node {node}: {MISMATCH}"
                                           + r.error.reason.split(MISMATCH, 1)[1].rstrip("'>"))
                if k is not None:
                    server.downlink.forget(k)  # whether it applied its catch-up is unknown: dense next time
                continue
            metrics = next(iter(r.content.metric_records.values()), {})
            if RECORD not in r.content or len(r.content.array_records) != 1 or k is None:
                log.warning("round %d: refused the reply of node %d: it carries no e3sfc payload (a node without "
                            "compression_mod, or a reply the server did not ask for)", t, node)
                continue
            n = message_bytes(r.content)
            up += n  # and as FedAvg would have sent it: the model's ArrayRecord in place of payload and buffers
            dense += n - r.content[RECORD].count_bytes() - next(iter(r.content.array_records.values())).count_bytes() \
                + self.sent.count_bytes()
            updates.append(ClientUpdate(k, r.content[RECORD].get("payload"), _sample_count(metrics.get(weight_key))))
            by_client[k] = r
        s, _, refused, received = server.screen(t, None, updates)
        w_t, kept = server.weights, []
        # as the server step counts each update: bounded (--aggregate mean), or its clipped deviation around
        # the centered-clipping center (cclip; weighted by the sample counts the strategy weighs by, so a
        # FedAvg-like strategy's weighted mean of them is the centered-clipping aggregate), or bounded where it
        # passes the direction screen (direction: the updates it leaves out are not handed over)
        cclip = server.cfg.aggregate == "cclip"
        counted, center = robust(server.context(t, None), s, server.compressor, weighted=cclip,
                                 rule=server.cfg.aggregate, start=server.center, standing=server.standing)
        if cclip and counted:
            server.center = center.clone()
        screened = len(s.updates) - len(counted)
        for u, upd in counted:
            r = by_client[u.client]
            key = next(iter(r.content.array_records.keys()))
            buffers = r.content[key]
            like = ArrayRecord(array_dict={n: buffers[n] if n in buffers else self.sent[n] for n in self.sent.keys()})
            r.content[key] = codec.unflat(w_t + upd, like)
            del r.content[RECORD]
            next(iter(r.content.metric_records.values()))[weight_key] = u.num_samples
            kept.append(r)
        if len(kept) + screened < len(updates):
            log.warning("round %d: %d of %d replies refused", t, len(updates) - len(kept) - screened, len(updates))
        arrays, metrics = self.strategy.aggregate_train(t, kept) if kept else (None, None)
        metrics = metrics if metrics is not None else MetricRecord({})
        metrics["e3sfc-uplink-bytes"], metrics["e3sfc-dense-bytes"] = up, dense
        metrics["e3sfc-downlink-bytes"], metrics["e3sfc-dense-downlink-bytes"] = self.down_bytes, self.dense_down_bytes
        metrics["e3sfc-refused"] = len(refused) + len(s.rejected)
        metrics["e3sfc-screened"] = screened  # left out by --aggregate direction (sent, decoded, not averaged)
        arrived = [n for n in received.values() if n]  # the payloads' bytes, as the ledger counts them
        if arrived:
            metrics["e3sfc-payload-mean-bytes"] = round(sum(arrived) / len(arrived))
        fitted = getattr(server.compressor, "fitted", None)
        if fitted:  # what the payload budget picked for the uplink (0: the input's own resolution)
            for key, v in zip(("e3sfc-fit-feature-res", "e3sfc-fit-samples", "e3sfc-fit-feature-bits"), fitted):
                metrics[key] = v
        if arrays is None:
            return None, metrics
        w = codec.flat(arrays)
        if not torch.isfinite(w).all():
            log.warning("round %d: the strategy's aggregate is not finite; the model stays at w_t", t)
            return None, metrics
        if server.cfg.aggregate == "direction":  # the screen's reference: where the strategy moved the model
            server.center = history(server.center, w - w_t)
        if not server.downlink.compressed:
            server.weights = w
            set_flat(server.model, w)
            return arrays, metrics
        server.move(t, None, w - w_t)
        return codec.unflat(server.weights, arrays), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
