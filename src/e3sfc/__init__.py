"""e3sfc: communication-efficient federated learning by synthesizing features.

Implements 3SFC (Zhou et al., ICCV 2023) and E-3SFC (Zhou et al., TNNLS 2025)
together with the update compressors they are measured against, with exact
byte accounting in both directions. docs/design.md describes how it works.

The names below are imported on first use (``e3sfc.RunConfig`` imports torch; ``import e3sfc``
and the command line's ``--help`` do not).
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

# name -> (module, attribute)
_EXPORTS = {
    "Compressor": (".compress", "Compressor"),
    "available_methods": (".compress", "available_methods"),
    "make_compressor": (".compress", "make_compressor"),
    "register_compressor": (".compress", "register"),  # a Compressor subclass with a new ``name`` and ``method_id``
    "Context": (".compress.base", "Context"),
    "RunConfig": (".config", "RunConfig"),
    "register_dataset": (".data", "register_dataset"),
    "Simulation": (".federated", "Simulation"),
    "build_model": (".models", "build_model"),
    "register_model": (".models", "register_model"),
}

if _typing.TYPE_CHECKING:
    from .compress import Compressor, available_methods, make_compressor
    from .compress import register as register_compressor
    from .compress.base import Context
    from .config import RunConfig
    from .data import register_dataset
    from .federated import Simulation
    from .models import build_model, register_model


def __getattr__(name: str) -> _typing.Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(_importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = ["RunConfig", "Simulation", "Compressor", "Context", "make_compressor", "available_methods",
           "register_compressor", "register_model", "register_dataset", "build_model", "__version__"]
