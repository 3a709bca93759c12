"""The compressor interface (docs/design.md §2): update -> Payload -> update.

A compressor turns a flat update (the EF target) into a :class:`~e3sfc.wire.Payload`
given a :class:`Context` that both ends share and never count (model at w_t,
round, rng, ...), and ``decompress`` gives the update back. Error feedback is a
separate component (:mod:`e3sfc.compress.ef`); ``biased`` says whether it applies.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generator

import torch
from torch import nn

from .. import wire
from ..errors import ConfigError, PayloadError
from ..wire import FieldSpec, Payload


Steps = Generator[tuple[Callable, torch.Tensor], Any, Any]
"""A computation that hands out its objective evaluations: yields (objective, point), is sent
objective(point), and returns its result."""


def run_steps(steps: Steps) -> Any:
    """Drive ``steps`` to its end, evaluating each point as it comes; its result."""
    try:
        f, z = next(steps)
        while True:
            f, z = steps.send(f(z))
    except StopIteration as done:
        return done.value


@dataclass
class Context:
    """What both ends of a transfer share; none of it is counted on the wire."""

    model: nn.Module                     # evaluated at ``weights``; must not be modified
    weights: torch.Tensor                # (P,) flat w_t
    input_shape: tuple[int, ...]
    num_classes: int
    round: int = 0
    client: int = -1                     # -1: the server
    generator: torch.Generator | None = None
    samples: int | None = None           # this round's synthetic-sample count M_t (budget scheduler)
    start: torch.Tensor | None = None    # where a search may start: this party's last features (warm start)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.weights.device

    @property
    def num_params(self) -> int:
        return self.weights.numel()

    @property
    def param_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(p.shape) for p in self.model.parameters()]


class Compressor(ABC):
    """One compression method. Subclasses register themselves with :func:`register`.

    A method's options are its constructor's keyword arguments, named as the run settings
    (``--ratio`` -> ``ratio``); :meth:`from_options` refuses any other. What the method
    declares about itself, so that no code outside its file tests its name:
    ``downlink`` (its natural server-to-client compression: ``dense`` or a method name),
    ``init`` (``broadcast``: w_1 is shipped; ``seed``: every party builds it),
    ``sized_by_samples`` (the payload grows with ``samples``, so the budget scheduler can
    size it) and ``as_downlink`` (whether ``--downlink`` may name it)."""

    name: ClassVar[str]
    method_id: ClassVar[int]
    biased: ClassVar[bool] = True  # error feedback applies (switch off with --no-ef)
    downlink: ClassVar[str] = "dense"
    init: ClassVar[str] = "broadcast"
    sized_by_samples: ClassVar[bool] = False
    as_downlink: ClassVar[bool] = True

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return tuple(p.name for p in inspect.signature(cls.__init__).parameters.values()
                     if p.kind in named and p.name != "self")

    @classmethod
    def from_options(cls, **options: Any) -> "Compressor":
        """Build from this method's own options; an unknown option or an impossible value is a ConfigError."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise ConfigError(f"{cls.name}: unknown option(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(cls.option_names()) or 'none'}")
        try:
            return cls(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{cls.name}: {exc}") from None

    @property
    def batch_limit(self) -> int | None:
        """How many clients' targets :meth:`compress_many` should get at once (None: a whole round)."""
        return 1

    def compress_many(self, targets: list[torch.Tensor], ctxs: list[Context]) -> list[tuple[Payload, dict]]:
        """Several clients' compressions in one call (a round's, up to :attr:`batch_limit`); by default
        one after the other. A method that can share work across clients overrides it."""
        return [self.compress(t, c) for t, c in zip(targets, ctxs)]

    @abstractmethod
    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        """Encode ``target`` (P,) into a payload; also return stats (e.g. cosine)."""

    def carry(self, payload: Payload, ctx: Context) -> torch.Tensor | None:
        """What the sending party keeps for its next compression (``ctx.start`` then); None: nothing."""
        return None

    @abstractmethod
    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        """The update (P,) that ``payload`` stands for at ``ctx``."""

    @abstractmethod
    def fields(self, ctx: Context) -> list[FieldSpec]:
        """The exact wire fields this method's payload has at ``ctx``."""

    def payload_bytes(self, ctx: Context) -> int:
        """Exact encoded size of one payload (header included)."""
        return wire.encoded_size(self.fields(ctx))

    def encode(self, payload: Payload) -> bytes:
        return wire.encode(payload)

    def decode(self, data: bytes, ctx: Context) -> Payload:
        return wire.decode(data, method=self.method_id, expect=self.fields(ctx))

    def decode_update(self, data: bytes, ctx: Context) -> torch.Tensor:
        """Bytes from the network -> the update (P,): finite, of this context's size, or a PayloadError
        (a well-formed payload whose decoded update overflows is rejected too)."""
        upd = self.decompress(self.decode(data, ctx), ctx)
        if upd.shape != (ctx.num_params,) or not torch.isfinite(upd).all():
            raise PayloadError("decoded update is not finite" if upd.shape == (ctx.num_params,)
                               else f"decoded update has shape {tuple(upd.shape)}; expected ({ctx.num_params},)")
        return upd
