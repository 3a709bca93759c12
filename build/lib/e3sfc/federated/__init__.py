"""Federated training: client step, server step, the shared runtimes, the in-process simulator."""

from .client import ClientUpdate, local_train
from .downlink import Downlink, TrainIns, apply_broadcast
from .evaluate import evaluate
from .params import get_flat, set_flat
from .runtime import ClientRuntime, ServerRuntime, derive_seed, sample_clients
from .server import Aggregate, server_step
from .simulator import Simulation

__all__ = [
    "ClientUpdate", "apply_broadcast", "local_train", "evaluate", "get_flat",
    "set_flat", "ClientRuntime", "ServerRuntime", "Downlink", "TrainIns", "derive_seed", "sample_clients", "Aggregate",
    "server_step", "Simulation",
]
