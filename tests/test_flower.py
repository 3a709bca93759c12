"""Flower driver == in-process driver (DESIGN 4), and bad replies do not stop a round."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install 'e3sfc[flower]'")

from e3sfc.config import RunConfig  # noqa: E402
from e3sfc.federated import Simulation  # noqa: E402
from e3sfc.io import read_jsonl  # noqa: E402

BASE = dict(dataset="digits", model="mlp", clients=3, rounds=3, batch_size=32, lr=0.05, threads=1,
            steps=3, max_iter=10)
SKIP = ("seconds", "flower_")


def _strip(rows):
    return [{k: v for k, v in r.items() if not any(s in k for s in SKIP)} for r in rows]


@pytest.mark.parametrize("method", ["3sfc", "e3sfc"])
def test_flower_simulation_writes_the_same_metrics(method, tmp_path):
    from e3sfc.flower import run_flower_simulation

    cfg = RunConfig(method=method, **BASE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Simulation(cfg, out_dir=tmp_path / "inprocess").run()
    finally:
        torch.set_num_threads(threads)
    run_flower_simulation(cfg.replace(engine="flower"), tmp_path / "flower")
    a = read_jsonl(tmp_path / "inprocess/metrics.jsonl")
    b = read_jsonl(tmp_path / "flower/metrics.jsonl")
    assert len(a) == len(b) == 3
    assert _strip(a) == _strip(b)  # bit-identical: same runtimes, same seeds, one thread each
    assert all(r["flower_up_bytes"] > r["uplink_bytes"] for r in b)  # framework overhead is visible


def test_server_skips_a_malformed_reply_and_goes_on():
    from e3sfc.federated.client import ClientUpdate

    sim = Simulation(RunConfig(method="3sfc", **BASE))
    participants, M, messages = sim.server.begin_round(1)
    x, y = sim.client_data[0]
    good = sim.client(0).handle(messages[0], sim.client_model, sim.train_model, x, y)
    bad = [ClientUpdate(1, good.blob[:-4], 10), ClientUpdate(2, b"\x00" * 7, 10)]
    stats = sim.server.end_round(1, M, [good, *bad])
    assert stats["rejected"] == 2


def test_deployment_tls_and_supernode_auth(tmp_path):
    """SuperLink + 2 registered SuperNodes on 127.0.0.1 over TLS with SuperNode authentication, two rounds of
    E-3SFC through `flwr run`; a third SuperNode with an unregistered key is refused."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "flower-superlink").exists() or shutil.which("setsid") is None:
        pytest.skip("flower-superlink or setsid not available")
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "deploy"
    r = subprocess.run(["bash", str(repo / "scripts/flower-deploy-check.sh"), str(out), str(bin_dir)],
                       cwd=repo, capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "unregistered supernode refused: [code: 2004] Failed to activate SuperNode." in r.stdout, r.stdout[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["rounds"] == 2 and s["final_accuracy"] is not None
    assert s["total_uplink_bytes"] == 2 * 2 * (4 * (64 + 10 + 1) + 35)  # 2 rounds x 2 clients x one payload
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["flower_up_bytes"] > 0 for r in rows)
