"""Flower driver == in-process driver (docs/design.md §4), and bad replies do not stop a round."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install 'flwr[simulation]>=1.42'")

from e3sfc.config import RunConfig  # noqa: E402
from e3sfc.federated import Simulation  # noqa: E402
from e3sfc.io import read_jsonl  # noqa: E402

BASE = dict(dataset="digits", model="mlp", clients=3, rounds=3, batch_size=32, lr=0.05, threads=1,
            steps=3, max_iter=10)
SKIP = ("seconds", "flower_", "aggregate_")  # aggregate cosines: in-process only (true updates stay on the clients)


def _strip(rows):
    return [{k: v for k, v in r.items() if not any(s in k for s in SKIP)} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [("3sfc", {}), ("e3sfc", {}), ("e3sfc", {"feature_res": 4})])
def test_flower_simulation_writes_the_same_metrics(method, extra, tmp_path):
    from e3sfc.flower import run_flower_simulation

    cfg = RunConfig(method=method, **BASE, **extra)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Flower's clients search one at a time: so does the in-process run compared with it
        Simulation(cfg.replace(batch_search=False), out_dir=tmp_path / "inprocess").run()
    finally:
        torch.set_num_threads(threads)
    run_flower_simulation(cfg.replace(engine="flower"), tmp_path / "flower")
    a = read_jsonl(tmp_path / "inprocess/metrics.jsonl")
    b = read_jsonl(tmp_path / "flower/metrics.jsonl")
    assert len(a) == len(b) == 3
    assert _strip(a) == _strip(b)  # bit-identical: same runtimes, same seeds, one thread each
    assert all(r["flower_up_bytes"] > r["uplink_bytes"] for r in b)  # framework overhead is visible
    assert all(r["aggregate_cosine"] is None for r in b) and all(r["aggregate_cosine"] is not None for r in a)


def test_server_skips_a_malformed_reply_and_goes_on():
    from e3sfc.federated.client import ClientUpdate

    sim = Simulation(RunConfig(method="3sfc", **BASE))
    participants, M, messages = sim.server.begin_round(1)
    x, y = sim.client_data[0]
    good = sim.client(0).step(messages[0], sim.client_model, sim.client(0).sgd(sim.train_model, x, y))
    bad = [ClientUpdate(1, good.blob[:-4], 10), ClientUpdate(2, b"\x00" * 7, 10)]
    stats = sim.server.end_round(1, M, [good, *bad])
    assert stats["rejected"] == 2


def test_a_client_process_loads_the_data_once_for_every_partition_it_serves(monkeypatch):
    """Flower's simulation hands any node's message to any worker: a worker must not reload the dataset for
    each partition it meets (it did: 0.25 s a miss, most of a 100-client round). Each shard is the one the
    in-process simulator trains that client on."""
    from e3sfc.flower import apps

    calls = []
    real = apps.load_dataset
    monkeypatch.setattr(apps, "load_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(apps, "_CACHE", {})
    cfg = RunConfig(method="3sfc", **BASE)
    sim = Simulation(cfg)
    for pid in (0, 1, 2, 1, 0):
        x, y, *_ = apps._client_setup(cfg, pid)
        sx, sy = sim.client_data[pid]
        assert torch.equal(x, sx) and torch.equal(y, sy)
    assert len(calls) == 1
    apps._client_setup(cfg.replace(alpha=0.5), 0)  # another run's settings: loaded again, the old data dropped
    assert len(calls) == 2 and len(apps._CACHE) == 1


@pytest.mark.slow
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


class _FakeGrid:
    """A Flower Grid stand-in: nodes 100+k serve partition k; ``train`` makes each node's reply."""

    def __init__(self, clients, train):
        self.nodes = [100 + k for k in range(clients)]
        self.train, self.timeouts = train, []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, msgs, timeout):
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        self.timeouts.append(timeout)
        out = []
        for m in msgs:
            node = m.metadata.dst_node_id
            if m.metadata.message_type == MessageType.QUERY:
                out.append(Message(RecordDict({"node": ConfigRecord({"partition-id": node - 100})}), reply_to=m))
            else:
                out += [Message(c, reply_to=m) for c in self.train(node - 100, m)]
        return out


def test_flower_server_checks_every_reply_before_use(tmp_path, monkeypatch):
    """Replies are attributed by the node they come from; a blob that is a huge integer or None, a
    node claiming another client's id, a second reply: the round goes on; the timeout is the config's."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what a ServerApp process has set
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)

    from e3sfc.flower.apps import FlowerSimulation, ins_from_record

    cfg = RunConfig(method="fedavg", **{**BASE, "clients": 4, "rounds": 1}, round_timeout=7.5, engine="flower")
    honest = Simulation(cfg.replace(engine="inprocess"))

    def reply(client, blob, n, claimed=None):
        rec = {"client": client if claimed is None else claimed, "num-samples": n}
        if blob is not None:
            rec["blob"] = blob
        return RecordDict({"update": ConfigRecord(rec), "stats": MetricRecord({"cosine": 1.0})})

    def train(k, msg):
        x, y = honest.client_data[k]
        c = honest.client(k)
        u = c.step(ins_from_record(msg.content), honest.client_model, c.sgd(honest.train_model, x, y))
        return {0: [reply(0, u.blob, u.num_samples), reply(0, u.blob, u.num_samples)],  # a second reply
                1: [reply(1, u.blob, u.num_samples, claimed=0)],                       # claims client 0
                2: [reply(2, 2 ** 40, u.num_samples)],                                 # no 1 TB allocation
                3: [reply(3, None, u.num_samples)]}[k]                                  # no blob at all

    grid = _FakeGrid(4, train)
    sim = FlowerSimulation(cfg, grid, tmp_path / "f", wait_s=5)
    stats = sim.run_round(1)
    assert stats["participants"] == 2 and stats["rejected"] == 2
    assert grid.timeouts[-1] == 7.5
    assert torch.isfinite(sim.server.weights).all()
    assert sorted(sim.ledger.per_client(1, "up")) == [0, 1]  # replies 2 and 3 carried no payload bytes


def test_app_config_lists_every_run_setting():
    """[tool.flwr.app.config] holds every RunConfig field (kebab-case) at its default, except the
    documented few, and reads back into a valid RunConfig."""
    import dataclasses
    import tomllib
    from pathlib import Path

    from e3sfc.flower.apps import config_from_run_config

    app = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    conf = app["tool"]["flwr"]["app"]["config"]
    fields = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(RunConfig)}
    assert list(conf) == list(fields)
    differs = {k for k in conf if conf[k] != "" and conf[k] != fields[k]}  # "": unset, the default
    assert all(fields[k] in (None, "") for k in conf if conf[k] == "")
    assert differs == {"method", "engine", "threads"}
    cfg = config_from_run_config(conf)
    assert cfg.method == "e3sfc" and cfg.engine == "flower" and cfg.threads == 1


def test_fewer_nodes_than_clients_stops_in_seconds_with_one_line(tmp_path):
    import time

    from e3sfc.flower.apps import FewerNodes, FlowerSimulation

    class TwoNodes:
        def get_node_ids(self):
            return [11, 12]

    cfg = RunConfig(method="fedavg", dataset="digits", clients=4, rounds=1, engine="flower")
    t0 = time.time()
    with pytest.raises(FewerNodes, match=r"--clients: 4 clients but 2 Flower node\(s\) connected .* "
                                         r"options.num-supernodes = 4"):
        FlowerSimulation(cfg, TwoNodes(), None, settle_s=1.0)
    assert time.time() - t0 < 5


def test_a_setting_the_data_rules_out_stops_the_server_app_with_its_one_line(tmp_path):
    """`e3sfc run --engine flower --feature-res 9` on 8x8 inputs: the ServerApp writes the reason where the
    CLI reads it (it said only "the Flower run did not finish" before)."""
    from e3sfc.flower.apps import STOPPED_FILE, start_or_say_why

    class Nodes:
        def get_node_ids(self):
            return [11, 12, 13]

    cfg = RunConfig(method="3sfc", dataset="digits", clients=3, rounds=1, engine="flower", feature_res=9)
    assert start_or_say_why(cfg, Nodes(), tmp_path, settle_s=0.5) is None
    assert (tmp_path / STOPPED_FILE).read_text().startswith("--feature-res: 9 is not allowed; expected an integer")


def test_no_deprecated_flower_entry_point_and_the_run_app_carries_every_setting():
    """`--engine flower` goes through `flwr run` with an app folder written for the run: nothing in the
    package calls Flower's deprecated `run_simulation`, and the app's run config gives back the run's
    settings (every RunConfig field) with one SuperNode per client."""
    import tomllib
    from pathlib import Path

    from e3sfc.flower.apps import app_pyproject, config_from_run_config

    src = Path(__file__).resolve().parents[1] / "src" / "e3sfc"
    assert not [p for p in src.rglob("*.py") if "run_simulation" in p.read_text()]
    cfg = RunConfig(method="e3sfc", **{**BASE, "clients": 7}, engine="flower", schedule="adaptive",
                    budget_bytes=10 ** 6, out="runs/x y\"z", downlink_ratio="", batch_search=None)
    app = tomllib.loads(app_pyproject(cfg, num_cpus=3))
    run_config = app["tool"]["flwr"]["app"]["config"]
    assert set(run_config) == {k.replace("_", "-") for k in RunConfig.field_names()}
    assert config_from_run_config(run_config) == cfg
    fed = app["tool"]["flwr"]["federations"]
    assert fed["default"] == "local-simulation" and fed["local-simulation"]["options"]["num-supernodes"] == 7
