"""examples/flower-app, an ordinary Flower app that adopts 3SFC through the add-on, run as a Flower user
runs it: `flwr run` on a local simulation federation of 4 SuperNodes (no deprecated API). The bytes on
the wire are under 1/100 of the dense update's, and it learns."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("sklearn")

APP = Path(__file__).resolve().parents[1] / "examples" / "flower-app"


def _flwr_run(tmp_path, app: Path, timeout: int = 400) -> tuple[subprocess.CompletedProcess, str]:
    """`flwr run APP` on a local simulation federation of 4 SuperNodes, as a Flower user runs it; and what
    `flwr ls` then says of the run (its status)."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "flwr").exists() or not (bin_dir / "flower-superlink").exists():
        pytest.skip("flwr's command-line tools are not installed beside this Python")
    home = tmp_path / "flwr-home"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # use this environment, install nothing
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    try:
        r = subprocess.run([str(bin_dir / "flwr"), "run", str(app), "--federation-config", "num-supernodes=4",
                            "--stream"], capture_output=True, text=True, env=env, timeout=timeout)
        run_id = re.search(r"run_id `(\d+)`", r.stdout + r.stderr)
        ls = subprocess.run([str(bin_dir / "flwr"), "ls", "--run-id", run_id.group(1), "--format", "json"],
                            capture_output=True, text=True, env=env, timeout=60, cwd=app) if run_id else None
        return r, (ls.stdout + ls.stderr) if ls else ""
    finally:  # `flwr run` leaves its local SuperLink running: stop it (and what it started)
        subprocess.run(["pkill", "-f", str(home)], check=False)


@pytest.mark.slow
def test_example_app_compresses_and_learns_under_flwr_run(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    r, _ = _flwr_run(tmp_path, app)
    out = r.stdout + r.stderr
    records = [ast.literal_eval(m) for m in re.findall(r"Aggregated MetricRecord: (\{[^}]*\})", out)]
    train = [x for x in records if "train_loss" in x]
    evals = [x for x in records if "eval_acc" in x]
    assert len(train) == 8 and len(evals) == 8, out[-3000:]
    assert all(x["e3sfc-uplink-bytes"] * 100 < x["e3sfc-dense-bytes"] for x in train)
    assert all(x["e3sfc-refused"] == 0 for x in train)
    assert train[-1]["train_loss"] < 0.8 * train[0]["train_loss"]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5
    assert evals[-1]["eval_acc"] > 0.5  # ten classes: chance is 0.1 (runs here: 0.79-0.81)


@pytest.mark.slow
def test_a_settings_mismatch_stops_flwr_run_in_round_one(tmp_path):
    """The nodes compress with other settings than the server: the run stops in round 1 with one line
    naming both, and Flower records the run as failed (it used to run every round on failures and end as
    a success). `flwr run` itself exits 0 whatever the run's end (Flower 1.42 streams the logs and returns;
    the run's status is what `flwr ls` reports)."""
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    client = app / "flower_app" / "client_app.py"
    client.write_text(client.read_text().replace("compression_mod(Net, INPUT_SHAPE, NUM_CLASSES)",
                                                 "compression_mod(Net, INPUT_SHAPE, NUM_CLASSES, 'topk', ratio=0.05)"))
    r, status = _flwr_run(tmp_path, app)
    out = r.stdout + r.stderr
    assert "[ROUND 2/" not in out, out[-3000:]
    assert '"status": "finished:failed"' in status, status
    assert re.search(r"round 1: node \d+: e3sfc settings differ: the server compresses with \[method=3sfc "
                     r"samples=4 feature_bits=8\], this node with \[method=topk ratio=0.05\]", out), out[-3000:]
