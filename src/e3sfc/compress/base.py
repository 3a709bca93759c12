"""The compressor interface (docs/design.md §2): update -> Payload -> update.

A compressor turns a flat update (the EF target) into a :class:`~e3sfc.wire.Payload`
given a :class:`Context` that both ends share and never count (model at w_t,
round, rng, ...), and ``decompress`` gives the update back. Error feedback is a
separate component (:mod:`e3sfc.compress.ef`); ``biased`` says whether it applies.
"""

from __future__ import annotations

import math
import numbers
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
    start: torch.Tensor | None = None    # this party's last carry (warm start: 3SFC features, PowerSGD Q)
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


@dataclass(frozen=True)
class Option:
    """One option of a compression method, declared once at the top of the method's file.

    From the declarations come the method's constructor (:meth:`Compressor.__init__` checks the
    values and sets them as attributes of the same name), and, for a ``setting`` (the default), the
    run setting of that name: the ``RunConfig`` field and its validation, the TOML key, the CLI flag
    ``--name-with-dashes`` with its help, and the Flower run-config key (``e3sfc.config``). Two methods
    that share a setting (``samples``) share the declaration object.

    Bounds: ``low``/``high`` (inclusive; ``low_open``: strictly above ``low``) or ``choices``; a float
    must also be finite. ``note`` is added to what the error message says is allowed. A setting left at
    its default is never checked against the run's methods; set to another value in a run whose methods
    do not take it, it is an error unless ``check_unused`` is False (for the knobs commonly kept in one
    config for every method: ``samples``, ``steps``, ...). ``setting=False``: the method's constructor
    takes it, but the run passes it from other settings (``ratio`` from ``--ratio``) or it is for code only.
    ``attr``: the attribute the value is set as, where the name is taken (3SFC's ``payload_bytes``, a
    method of every compressor, is set as ``payload_budget``).
    """

    name: str
    type: type                      # int, float, str or bool
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    note: str = ""
    check_unused: bool = True
    setting: bool = True
    attr: str = ""                  # the attribute the constructor sets, where not ``name`` (a name taken)

    def allowed(self) -> str:
        """What is allowed, as the error messages say it: ``an integer >= 1``, ``one of 32, 16, 8``, ..."""
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.type is bool:
            text = "true or false"
        elif self.type is str:
            text = "a string"
        else:
            kind = "an integer" if self.type is int else "a number"
            lo, hi = _num(self.low), _num(self.high)
            if self.low is not None and self.high is not None:
                text = f"{kind} in {lo}..{hi}" if self.type is int else \
                    f"{kind} in {'(' if self.low_open else '['}{lo}, {hi}]"
            elif self.low is not None:
                text = f"{kind} {'>' if self.low_open else '>='} {lo}"
            elif self.high is not None:
                text = f"{kind} <= {hi}"
            else:
                text = kind
        return f"{text} ({self.note})" if self.note else text

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this option's type and lies within its bounds."""
        if self.type is bool:
            return isinstance(value, bool)
        if self.type is int and not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
            return False
        if self.type is float and not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                       and math.isfinite(value)):
            return False
        if self.type is str and not isinstance(value, str):
            return False
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def _num(v: float | None) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# an option several methods take is one declaration that each lists
SAMPLES = Option("samples", int, 1, "synthetic samples M per payload", low=1, check_unused=False)
VALUE_BITS = Option("value_bits", int, 32, "precision of the values sent: 32 (float32), 16 (float16) or 8 "
                    "(symmetric 8-bit with one float32 scale per block of values)", choices=(32, 16, 8))


class Compressor(ABC):
    """One compression method. Subclasses register themselves with :func:`register`.

    A method's options are declared in ``options`` (a tuple of :class:`Option`, at the top of its
    file), named as the run settings (``--ratio`` -> ``ratio``); the constructor takes them as
    keywords, checks them against their declarations and sets each as an attribute of its name;
    :meth:`from_options` refuses any other. What the method declares about itself, so that no code
    outside its file tests its name: ``downlink`` (its natural server-to-client compression: ``dense``
    or a method name), ``init`` (``broadcast``: w_1 is shipped; ``seed``: every party builds it),
    ``sized_by_samples`` (the payload grows with ``samples``, so the budget scheduler can size it) and
    ``as_downlink`` (whether ``--downlink`` may name it), ``decodes_through_model`` (the decoder computes a
    gradient of the model: a model with BatchNorm is refused, :func:`e3sfc.models.check_decoder`)."""

    name: ClassVar[str]
    method_id: ClassVar[int]
    options: ClassVar[tuple[Option, ...]] = ()
    biased: ClassVar[bool] = True  # error feedback applies (switch off with --no-ef)
    downlink: ClassVar[str] = "dense"
    init: ClassVar[str] = "broadcast"
    sized_by_samples: ClassVar[bool] = False
    as_downlink: ClassVar[bool] = True
    decodes_through_model: ClassVar[bool] = False  # the decoder is the model's gradient: no BatchNorm

    def __init__(self, **values: Any):
        """Each declared option: its value from ``values`` or its default, checked (a ValueError names
        the option, the value and what is allowed), set as ``self.<name>``."""
        declared = {o.name: o for o in self.options}
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(declared) or 'none'}")
        for o in self.options:
            value = values.get(o.name, o.default)
            if not o.accepts(value):
                raise ValueError(f"{o.name}: {value!r} is not allowed; expected {o.allowed()}")
            setattr(self, o.attr or o.name, value)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(o.name for o in cls.options)

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

    def check_carry(self, value: Any, ctx: Context) -> None:
        """A ValueError unless ``value`` (not None; from a checkpoint, before it is used) is something
        :meth:`carry` could have kept at ``ctx``. By default a method keeps nothing."""
        raise ValueError(f"a warm start is {getattr(value, 'shape', type(value).__name__)}; {self.name} keeps none")

    def search_form(self, ctx: Context) -> str | None:
        """How this method's search evaluates its objective on ``ctx``'s model where the form depends on
        the model: ``closed form`` or ``autograd`` (slower); None: it has no such choice."""
        return None

    def check_context(self, ctx: Context) -> None:
        """A ConfigError (naming the flag) where this method's options cannot work on ``ctx``'s model;
        :func:`~e3sfc.compress.build_compressor` asks once, when a run builds the compressor."""

    @abstractmethod
    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        """The update (P,) that ``payload`` stands for at ``ctx``."""

    @abstractmethod
    def fields(self, ctx: Context) -> list[FieldSpec]:
        """The exact wire fields this method's payload has at ``ctx``."""

    @property
    def fixed_size(self) -> bool:
        """Whether every payload at a context has exactly :meth:`payload_bytes` bytes; False (coded
        positions): it has at most that many, its fields' lengths in its header, and the ledger counts
        what each one has (the server admits ``len <= payload_bytes``; the budget scheduler plans with
        the maximum, a safe bound)."""
        return True

    def payload_bytes(self, ctx: Context) -> int:
        """Exact encoded size of one payload (header included); the most it can be unless :attr:`fixed_size`."""
        return wire.encoded_size(self.fields(ctx))

    def encode(self, payload: Payload) -> bytes:
        return wire.encode(payload)

    def decode(self, data: bytes, ctx: Context) -> Payload:
        return wire.decode(data, method=self.method_id, expect=self.fields(ctx),
                           max_bytes=None if self.fixed_size else self.payload_bytes(ctx))

    def decode_update(self, data: bytes, ctx: Context) -> torch.Tensor:
        """Bytes from the network -> the update (P,): finite, of this context's size, or a PayloadError
        (a well-formed payload whose decoded update overflows is rejected too)."""
        upd = self.decompress(self.decode(data, ctx), ctx)
        if upd.shape != (ctx.num_params,) or not torch.isfinite(upd).all():
            raise PayloadError("decoded update is not finite" if upd.shape == (ctx.num_params,)
                               else f"decoded update has shape {tuple(upd.shape)}; expected ({ctx.num_params},)")
        return upd
