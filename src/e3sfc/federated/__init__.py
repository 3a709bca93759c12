"""Federated training: client step, server step, the in-process simulator."""

from .client import ClientUpdate, client_lr, client_step, local_train
from .evaluate import evaluate
from .params import get_flat, set_flat
from .server import Aggregate, server_step
from .simulator import Simulation, derive_seed, sample_clients

__all__ = [
    "ClientUpdate", "client_lr", "client_step", "local_train", "evaluate", "get_flat", "set_flat",
    "Aggregate", "server_step", "Simulation", "derive_seed", "sample_clients",
]
