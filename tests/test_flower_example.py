"""examples/flower-app, an ordinary Flower app that adopts 3SFC through the add-on, on Flower's
simulation engine: the bytes on the wire are under 1/100 of the dense update's, and it learns."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("sklearn")

APP = Path(__file__).resolve().parents[1] / "examples" / "flower-app"


@pytest.mark.slow
def test_example_app_compresses_and_learns(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    for name in [m for m in sys.modules if m.startswith("flower_app")]:
        monkeypatch.delitem(sys.modules, name)
    from flwr.simulation import run_simulation

    from flower_app.client_app import app as client
    from flower_app.server_app import RESULT
    from flower_app.server_app import app as server

    run_simulation(server, client, num_supernodes=4, backend_config={
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}})
    result = RESULT["result"]
    train = result.train_metrics_clientapp
    rounds = sorted(train)
    assert len(rounds) == 8
    for r in rounds:
        assert train[r]["e3sfc-uplink-bytes"] * 100 < train[r]["e3sfc-dense-bytes"]
    assert train[rounds[-1]]["train_loss"] < 0.8 * train[rounds[0]]["train_loss"]
    ev = result.evaluate_metrics_clientapp
    assert ev[rounds[-1]]["eval_loss"] < ev[rounds[0]]["eval_loss"] - 0.5
    assert ev[rounds[-1]]["eval_acc"] > 0.5  # ten classes: chance is 0.1 (two runs here: 0.80, 0.79)
