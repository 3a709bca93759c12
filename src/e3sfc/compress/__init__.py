"""Update compressors behind one interface and one registry (DESIGN 1.4, 2)."""

from __future__ import annotations

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
    """Build a registered compressor; ``options`` are the method's own knobs."""
    return get_compressor_class(name).from_options(**options)  # type: ignore[attr-defined]


OPTION_NAMES = ("samples", "steps", "max_iter", "lambd", "patience", "topk_scope", "levels", "unroll",
                "synth_iters", "synth_lr")


def has_ratio(method: str) -> bool:
    """Whether ``method`` has a ``ratio`` knob (the sparsifiers)."""
    import inspect

    return "ratio" in inspect.signature(get_compressor_class(method).from_options).parameters


def from_config(cfg: Any, ctx: Context, method: str | None = None) -> Compressor:
    """Build ``method`` (default ``cfg.method``) from a RunConfig's knobs.

    ``--ratio match:M`` picks the largest ratio whose payload is no larger than
    method M's payload at ``ctx`` (equal-bytes comparisons, DESIGN 1.4).
    """
    from ..config import parse_ratio

    method = method or cfg.method
    opts = {k: getattr(cfg, k) for k in OPTION_NAMES}
    ratio = parse_ratio(cfg.ratio)
    if isinstance(ratio, float) or not has_ratio(method):
        return make_compressor(method, ratio=ratio if isinstance(ratio, float) else 1.0, **opts)
    if ratio == method:
        raise ConfigError(f"--ratio: match:{ratio} cannot match the method with itself")
    budget = make_compressor(ratio, ratio=0.01, **opts).payload_bytes(ctx)
    return match_bytes(method, budget, ctx, opts)


def match_bytes(method: str, budget: int, ctx: Context, opts: dict[str, Any]) -> Compressor:
    """The compressor with the largest ``ratio`` whose payload fits in ``budget`` bytes."""
    lo = make_compressor(method, ratio=1.0 / ctx.num_params, **opts)
    if not has_ratio(method):  # the method has no ratio knob: nothing to match
        return lo
    if lo.payload_bytes(ctx) > budget:
        raise ConfigError(
            f"--ratio: {method} cannot fit in {budget} bytes (its smallest payload is {lo.payload_bytes(ctx)})"
        )
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

__all__ = [
    "Compressor", "Context", "ErrorFeedback", "register", "available_methods",
    "make_compressor", "get_compressor_class", "METHOD_IDS", "from_config", "match_bytes",
]
