"""Update compressors behind one interface and one registry (docs/design.md §1.4, §2)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from .base import Compressor, Context
from .ef import ErrorFeedback

_REGISTRY: dict[str, type[Compressor]] = {}
METHOD_IDS: dict[str, int] = {}


def register(cls: type[Compressor]) -> type[Compressor]:
    if cls.name in _REGISTRY or cls.method_id in METHOD_IDS.values():
        raise ValueError(f"compressor {cls.name!r} / id {cls.method_id} registered twice")
    _REGISTRY[cls.name] = cls
    METHOD_IDS[cls.name] = cls.method_id
    return cls


def available_methods() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_compressor_class(name: str) -> type[Compressor]:
    if name not in _REGISTRY:
        raise ConfigError(f"--method: {name!r} is not allowed; expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_compressor(name: str, **options: Any) -> Compressor:
    """Build a registered compressor from its own options (unknown options are a ConfigError)."""
    return get_compressor_class(name).from_options(**options)


def has_ratio(method: str) -> bool:
    """Whether ``method`` has a ``ratio`` knob (the sparsifiers)."""
    return "ratio" in get_compressor_class(method).option_names()


def parse_ratio(value: str, flag: str = "--ratio") -> float | str | int:
    """A ratio setting: a fraction in (0, 1] (a float), ``match:METHOD`` (as many bytes as METHOD at most:
    the method's name) or ``bytes:N`` (a payload of at most N bytes: the int N)."""
    allowed = "a fraction in (0, 1], match:METHOD (e.g. match:3sfc) or bytes:N (e.g. bytes:1000)"
    text = str(value).strip()
    if text.startswith("match:"):
        target = text[len("match:"):]
        if target not in _REGISTRY:
            raise ConfigError(f"{flag}: {value!r} is not allowed; expected match: followed by one of "
                              f"{', '.join(_REGISTRY)}")
        return target
    if text.startswith("bytes:"):
        n = text[len("bytes:"):]
        if not n.isdigit() or not 0 < int(n) < 2**40:
            raise ConfigError(f"{flag}: {value!r} is not allowed; expected bytes: followed by a whole number of "
                              f"bytes from 1 to 2^40")
        return int(n)
    try:
        r = float(text)
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is not allowed; expected {allowed}") from None
    if not (math.isfinite(r) and 0 < r <= 1):
        raise ConfigError(f"{flag}: {value!r} is not allowed; expected {allowed}")
    return r


def build_compressor(method: str, options: dict[str, Any], ratio: str, ctx: Context,
                     flag: str = "--ratio") -> Compressor:
    """``method`` with ``options`` (those it does not have are left out) and, where it has one,
    the ``ratio`` setting: a fraction; ``match:M``, the largest ratio whose payload at ``ctx``
    is no larger than method M's (equal-bytes comparisons); or ``bytes:N``, the largest whose payload
    fits in N bytes. A method that decodes through the model
    refuses a model with BatchNorm (:func:`e3sfc.models.check_decoder`)."""
    if get_compressor_class(method).decodes_through_model:
        from ..models import check_decoder
        check_decoder(ctx.model, method)
    names = get_compressor_class(method).option_names()
    opts = {k: v for k, v in options.items() if k in names and k != "ratio"}
    r = parse_ratio(ratio, flag)
    if not has_ratio(method):
        comp = make_compressor(method, **opts)
        comp.check_context(ctx)
        return comp
    if isinstance(r, float):
        return make_compressor(method, ratio=r, **opts)
    if isinstance(r, int):
        return match_bytes(method, r, ctx, opts, flag)
    if r == method:
        raise ConfigError(f"{flag}: match:{r} cannot match the method with itself")
    other = {k: v for k, v in options.items() if k in get_compressor_class(r).option_names() and k != "ratio"}
    budget = make_compressor(r, **other).payload_bytes(ctx)
    return match_bytes(method, budget, ctx, opts, flag)


def match_bytes(method: str, budget: int, ctx: Context, opts: dict[str, Any], flag: str = "--ratio") -> Compressor:
    """The compressor with the largest ``ratio`` whose payload fits in ``budget`` bytes; for a method whose
    size depends on the positions (``fixed_size`` False: golomb-coded), one with the byte budget
    ``max_bytes`` that picks, on each payload, the largest K whose exact encoded size fits."""
    lo = make_compressor(method, ratio=1.0 / ctx.num_params, **opts)
    if lo.payload_bytes(ctx) > budget:
        raise ConfigError(
            f"{flag}: {method} cannot fit in {budget} bytes (its smallest payload is {lo.payload_bytes(ctx)})"
        )
    if not lo.fixed_size:  # coded positions: the size depends on them, so K is chosen on each real payload
        return make_compressor(method, ratio=1.0 / ctx.num_params, max_bytes=budget, **opts)
    a, b = 1.0 / ctx.num_params, 1.0
    if make_compressor(method, ratio=b, **opts).payload_bytes(ctx) <= budget:
        return make_compressor(method, ratio=b, **opts)
    for _ in range(60):
        mid = (a + b) / 2
        if make_compressor(method, ratio=mid, **opts).payload_bytes(ctx) <= budget:
            a = mid
        else:
            b = mid
    return make_compressor(method, ratio=a, **opts)


# import the methods so that they register (one file per method)
from . import fedavg, fedsynth, qsgd, sign, stc, threesfc, topk  # noqa: E402,F401
from . import powersgd  # noqa: E402,F401  (after the others: its settings follow theirs in RunConfig, the CLI, TOML)

__all__ = [
    "Compressor", "Context", "ErrorFeedback", "register", "available_methods",
    "make_compressor", "get_compressor_class", "METHOD_IDS", "build_compressor", "match_bytes", "parse_ratio",
]
