"""Flower adapter: the same client and server runtimes on Flower's simulation engine (Ray)
and its deployment runtime (SuperLink + SuperNodes). The only package that imports flwr.

    pip install '/path/to/e3sfc[flower]'   # or, beside an installed e3sfc: pip install 'flwr[simulation]>=1.42'
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the Flower adapter needs flwr with its simulation engine: pip install 'flwr[simulation]>=1.42'"
    ) from exc

from .apps import make_client_app, make_server_app, run_flower_simulation

__all__ = ["make_client_app", "make_server_app", "run_flower_simulation"]
