"""Resume equals no stop, the way a user hits it: kill -9 a run in one process, resume it in another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_mnist_like

# big enough that torch splits the standardisation over threads (a run resumed with another
# thread count than it started with would then drift), small enough to be quick
ARGS = ["--dataset", "mnist", "--clients", "3", "--rounds", "6", "--batch-size", "64", "--lr", "0.05",
        "--steps", "2", "--max-iter", "10", "--threads", "1", "--checkpoint-every", "1", "--seed", "3"]
TIMING = ("seconds", "compress_seconds", "train_seconds")


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "E3SFC_NO_DOWNLOAD": "1"}
    return subprocess.Popen([sys.executable, "-m", "e3sfc.cli", "run", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _rows(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mnist_like(tmp_path_factory.mktemp("mnist"), n_train=8000, n_test=200)


@pytest.mark.parametrize("method,extra", [("fedavg", []), ("3sfc", []), ("e3sfc", []),
                                          ("3sfc", ["--state-memory", "0.0001"]),  # every client spilled to disk
                                          ("powersgd", ["--rank", "2", "--value-bits", "8", "--downlink", "powersgd"])],
                         ids=["fedavg", "3sfc", "e3sfc", "3sfc-spilled", "powersgd"])
def test_kill_9_then_resume_in_a_new_process_equals_no_stop(method, extra, data_dir, tmp_path):
    common = [*ARGS, "--method", method, "--data-dir", str(data_dir), *extra]
    whole = _cli(*common, "--out", str(tmp_path / "whole"))
    killed = _cli(*common, "--out", str(tmp_path / "killed"))
    metrics, ckpt = tmp_path / "killed" / "metrics.jsonl", tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        if ckpt.exists() and metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be killed: " + killed.stderr.read()[-500:]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(_rows(tmp_path / "killed")) < 6
    resumed = _cli("--resume", str(tmp_path / "killed"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-2000:]
    a, b = _rows(tmp_path / "whole"), _rows(tmp_path / "killed")
    assert len(a) == len(b) == 6
    assert a == b  # accuracy, loss, bytes of every round, bit for bit
    led = [(tmp_path / d / "ledger.jsonl").read_text() for d in ("whole", "killed")]
    assert led[0] == led[1]
    assert not list((tmp_path / "killed").glob(".*.tmp"))
    if "--state-memory" in extra:  # the spills happened, and one snapshot (the last checkpoint's) is left
        assert list((tmp_path / "killed" / "spill").glob("client-*.f32"))
        assert [d.name for d in (tmp_path / "killed").glob("state-r*")] == ["state-r6"]
