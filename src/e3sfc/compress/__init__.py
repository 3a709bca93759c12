"""Update compressors behind one interface and one registry (DESIGN 1.4, 2)."""

from __future__ import annotations

from typing import Any, Callable

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


# import the methods so that they register (one file per method)
from . import fedavg  # noqa: E402,F401

__all__ = [
    "Compressor", "Context", "ErrorFeedback", "register", "available_methods",
    "make_compressor", "get_compressor_class", "METHOD_IDS",
]
