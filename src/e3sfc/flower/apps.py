"""Flower ClientApp and ServerApp around :mod:`e3sfc.federated.runtime`.

Messages (Flower's Message API):
- ``query`` (server -> every node, once): the node replies its ``partition-id``, so
  the server samples clients over partition ids with our seeded sampler (Flower's
  own node sampling is not reproducible).
- ``train`` (server -> participant, each round): a ConfigRecord ``ins`` holding the
  round, M_t, the full model (bytes, when sent) and the broadcasts to replay
  (lists of rounds, M and bytes). The reply holds the wire payload (bytes), the
  sample count and the client's stats.
The client keeps its runtime state (EF residual, times trained, replica) in the
Flower context state, serialized with torch.save into one bytes field and read
back with ``weights_only=True`` (tensors and numbers only: it cannot run code).

The server waits at most ``round_timeout`` seconds (``--round-timeout``, default
120) for a round's replies and goes on with those it has. A reply counts only
when it comes from the node the server sent that client's message to; its
client id is that node's partition, whatever the reply claims, and the server's
runtime then checks everything else in it before use (see
:func:`e3sfc.federated.server.admit`).

Bytes: the ledger counts our payloads exactly as the in-process simulator does;
``flower_up_bytes`` / ``flower_down_bytes`` add Flower's serialized message
sizes (the sum of ``deflate()`` over each message's object tree), so the
framework overhead is visible.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .. import io, protocol
from ..config import RunConfig
from ..errors import ConfigError, DataError
from ..data import load_dataset, partition
from ..federated.client import ClientUpdate
from ..federated.loop import RoundLoop
from ..federated.params import get_flat
from ..federated.runtime import MODEL_INIT, ClientRuntime, TrainIns, derive_seed
from ..federated.estimate import check_memory
from ..models import build_model, synthetic_shape
from .addon import load_state, save_state

log = logging.getLogger(__name__)


config_from_run_config = RunConfig.from_run_config  # Flower run config (kebab-case flags; "" unset) -> RunConfig


# ---------------------------------------------------------------------------- messages
def ins_to_record(ins: TrainIns) -> RecordDict:
    return RecordDict({"ins": ConfigRecord({
        "round": ins.round, "samples": ins.samples or 0,
        "model": ins.model if ins.model is not None else b"", "has-model": ins.model is not None,
        "b-rounds": [s for s, _, _ in ins.broadcasts] or [0],
        "b-samples": [m for _, _, m in ins.broadcasts] or [0],
        "b-blobs": [b for _, b, _ in ins.broadcasts] or [b""],
        "b-count": len(ins.broadcasts),
    })})


def ins_from_record(rec: RecordDict) -> TrainIns:
    c = rec["ins"]
    n = int(c["b-count"])
    return TrainIns(
        round=int(c["round"]), samples=int(c["samples"]) or None,
        model=bytes(c["model"]) if c["has-model"] else None,
        broadcasts=[(int(s), bytes(b), int(m)) for s, b, m in
                    zip(c["b-rounds"][:n], c["b-blobs"][:n], c["b-samples"][:n])],
    )


def reply_to_update(client: int, content: RecordDict) -> ClientUpdate:
    """A reply's update as the node sent it, attributed to the client the server asked that node
    for. The payload and sample count are passed on unconverted (a 2**40 integer is not turned into
    bytes here); the server runtime checks every field's type and size before use (a malformed
    reply becomes an update that it rejects with the reason)."""
    try:
        c = content["update"]
        blob, n, claimed = c.get("blob"), c.get("num-samples"), c.get("client")
        stats = dict(content["stats"]) if "stats" in content.metric_records else {}
    except (KeyError, TypeError, AttributeError) as exc:
        log.warning("malformed reply for client %d (%s)", client, exc)
        return ClientUpdate(client, None, 0)  # type: ignore[arg-type]
    if claimed != client:
        log.warning("the node serving client %d claimed to be client %r; counted as %d", client, claimed, client)
    return ClientUpdate(client, blob, n, stats)


def flower_bytes(obj) -> int:
    """Serialized size of a Flower message: ``deflate()`` summed over its object tree."""
    total = len(obj.deflate())
    for child in (obj.children or {}).values():
        total += flower_bytes(child)
    return total


# ---------------------------------------------------------------------------- client side
_CACHE: dict[tuple, Any] = {}  # per process, one run: its data, partition, working models and shards by partition


def _client_setup(cfg: RunConfig, pid: int):
    """Data of partition ``pid`` and the two working models. The dataset, its partition and the models
    are loaded once per process and shared by every partition it serves (a simulation backend hands
    any node's message to any of its workers, so a per-partition load would repeat in each worker);
    the working models are scratch space whose weights each message overwrites."""
    key = (cfg.dataset, cfg.data_dir, cfg.emnist_split, cfg.holdout, cfg.train_subset, cfg.seed, cfg.clients,
           cfg.partition, cfg.alpha, cfg.model, cfg.protocol, cfg.max_len, cfg.min_freq, cfg.vocab_size)
    if key not in _CACHE:
        _CACHE.clear()  # one run per process at a time: drop an earlier run's data
        data = load_dataset(cfg.dataset, cfg.data_dir, emnist_split=cfg.emnist_split, holdout=cfg.holdout,
                            train_subset=cfg.train_subset, test_subset=1, seed=cfg.seed,
                            scaling=protocol.input_scaling(cfg), max_len=cfg.max_len, min_freq=cfg.min_freq,
                            vocab_size=cfg.vocab_size)
        parts = partition(data.train_y.numpy(), cfg.clients, cfg.partition, cfg.alpha, cfg.seed)
        model, work, train = (build_model(cfg.model, data.input_shape, data.num_classes, s, data.vocab_size)
                              for s in (derive_seed(cfg.seed, MODEL_INIT), 0, 0))
        work.eval()
        _CACHE[key] = (data, parts, synthetic_shape(model, data.input_shape), get_flat(model), work, train, {})
    data, parts, shape, initial, work, train, shards = _CACHE[key]
    if pid not in shards:
        idx = torch.from_numpy(protocol.split_shard(cfg, pid, parts[pid])[0])  # what it trains on
        shards[pid] = (data.train_x[idx], data.train_y[idx])
    x, y = shards[pid]
    return x, y, shape, data.num_classes, initial, work, train


def client_train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    if cfg.threads:
        torch.set_num_threads(min(cfg.threads, os.cpu_count() or 1))
    pid = int(context.node_config["partition-id"])
    x, y, shape, classes, initial, work, train = _client_setup(cfg, pid)
    rt = ClientRuntime(cfg, pid, shape, classes, initial)
    load_state(context, rt)
    u = rt.step(ins_from_record(msg.content), work, rt.sgd(train, x, y))
    save_state(context, rt)
    if u is None:  # fault injection's "drop": this node sends no update
        raise RuntimeError(f"client {pid} drops its reply (--adversary drop)")
    content = RecordDict({
        "update": ConfigRecord({"blob": u.blob, "client": pid, "num-samples": u.num_samples}),
        "stats": MetricRecord({k: float(v) for k, v in u.stats.items()}),
    })
    return Message(content, reply_to=msg)


def make_client_app(cfg: RunConfig | None = None) -> ClientApp:
    """A ClientApp; with ``cfg`` None the config comes from Flower's run config."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, cfg or config_from_run_config(dict(context.run_config)))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"node": ConfigRecord({"partition-id": int(context.node_config["partition-id"])})}),
                       reply_to=msg)

    return app


# ---------------------------------------------------------------------------- server side
STOPPED_FILE = "stopped.txt"  # in the run folder: why the server app stopped before its first round


class FewerNodes(RuntimeError):
    """Fewer Flower nodes than clients connected."""


class FlowerSimulation(RoundLoop):
    """The shared round loop (server runtime, records, checkpoints), with clients reached through a Flower
    Grid: none of the in-process clients' set-up (their shards, runtimes and working models)."""

    def __init__(self, cfg: RunConfig, grid: Grid, out_dir: str | Path | None, wait_s: float = 900.0,
                 settle_s: float = 15.0):
        super().__init__(cfg, out_dir=out_dir)
        # as in-process: a local federation's clients (residuals, searches) share this machine
        check_memory(cfg, self.num_params, self.feature_shape, self.data.num_classes, len(self.data.train_y),
                     len(self.data.test_y))
        self.grid = grid
        self.node_of = self._discover(wait_s, settle_s)

    def _discover(self, wait_s: float, settle_s: float) -> dict[int, int]:
        """partition id -> node id, asking every node once. Waits for K nodes to connect; when fewer are
        connected and none has joined for ``settle_s`` seconds, stops with one line saying so."""
        deadline = time.time() + wait_s
        count, since = -1, time.time()
        while True:
            nodes = list(self.grid.get_node_ids())
            if len(nodes) >= self.cfg.clients:
                break
            if len(nodes) != count:
                count, since = len(nodes), time.time()
            if time.time() - since > settle_s or time.time() > deadline:
                raise FewerNodes(f"--clients: {self.cfg.clients} clients but {len(nodes)} Flower node(s) connected "
                                 f"(none joined in {settle_s:.0f} s); start one SuperNode per client (local "
                                 f"simulation: options.num-supernodes = {self.cfg.clients}) or lower --clients")
            time.sleep(0.5)
        msgs = [Message(RecordDict({}), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        node_of: dict[int, int] = {}
        # the first message starts each node's app (data, model): slow on a busy machine, so the
        # discovery waits up to wait_s; rounds wait at most --round-timeout
        for r in self.grid.send_and_receive(msgs, timeout=wait_s):
            node = r.metadata.src_node_id
            try:
                if r.has_error():
                    raise ValueError(r.error.reason)
                pid = r.content["node"]["partition-id"]
                if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < self.cfg.clients:
                    raise ValueError(f"partition id {pid!r} is not in 0..{self.cfg.clients - 1}")
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("node %s did not say a usable partition: %s", node, exc)
                continue
            if pid in node_of:
                log.warning("node %s claims partition %d, already served by node %s; ignored", node, pid,
                            node_of[pid])
                continue
            node_of[pid] = node
        missing = [k for k in range(self.cfg.clients) if k not in node_of]
        if len(missing) == self.cfg.clients:
            raise RuntimeError(f"no Flower node answered within {wait_s:.0f} s; is any SuperNode connected?")
        if missing:
            log.warning("no node serves partition(s) %s; they will be skipped", missing[:10])
        return node_of

    def run_round(self, t: int) -> dict[str, float]:
        participants, M, messages = self.server.begin_round(t, reachable=set(self.node_of))
        msgs, down, client_of = [], 0, {}
        for k in participants:
            m = Message(ins_to_record(messages[k]), dst_node_id=self.node_of[k], message_type=MessageType.TRAIN,
                        group_id=str(t))
            down += flower_bytes(m)
            msgs.append(m)
            client_of[self.node_of[k]] = k
        updates, up = [], 0
        for r in self.grid.send_and_receive(msgs, timeout=self.cfg.round_timeout):
            node = r.metadata.src_node_id
            if r.has_error():
                log.warning("round %d: node %s failed: %s", t, node, r.error.reason)
                continue
            if node not in client_of:
                log.warning("round %d: dropped a reply from node %s, which was not asked", t, node)
                continue
            up += flower_bytes(r)
            updates.append(reply_to_update(client_of[node], r.content))
        for k in set(participants) - {u.client for u in updates}:
            self.server.downlink.forget(k)  # no reply: the next catch-up is the full model
        log.info("round %d: %d of %d replies within %.0f s", t, len(updates), len(msgs), self.cfg.round_timeout)
        updates.sort(key=lambda u: u.client)  # the in-process order
        stats = self.server.end_round(t, M, updates)
        stats["flower_down_bytes"] = down
        stats["flower_up_bytes"] = up
        return stats


def start_or_say_why(cfg: RunConfig, grid, out: str | Path, **kw) -> FlowerSimulation | None:
    """The run's FlowerSimulation; or, where it cannot start (fewer nodes than clients, a setting the
    data or model rules out, data that cannot be read), None, with the one line why written to
    ``out/STOPPED_FILE``: the CLI that started `flwr run` is another process and reads it there."""
    try:
        return FlowerSimulation(cfg, grid, out, **kw)
    except (FewerNodes, ConfigError, DataError) as exc:
        why = str(exc)
        log.error("%s", why)
        io.atomic_write(Path(out) / STOPPED_FILE, lambda f: f.write(why))
        return None


def make_server_app(cfg: RunConfig | None = None, out_dir: str | Path | None = None) -> ServerApp:
    """A ServerApp running the whole federated run; with ``cfg`` None it reads Flower's run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        c = cfg or config_from_run_config(dict(context.run_config))
        out = out_dir or c.out or f"runs/flower-{c.method}-{c.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        c = c.replace(out=str(out), engine="flower")
        if c.threads:
            torch.set_num_threads(min(c.threads, os.cpu_count() or 1))
        sim = start_or_say_why(c, grid, out)
        if sim is None:
            return
        summary = sim.run()
        log.info("e3sfc flower run finished: accuracy %.4f, %d B up, %d B down, folder %s",
                    summary["final_accuracy"], summary["total_uplink_bytes"], summary["total_downlink_bytes"], out)

    return app


def _toml_value(v: Any) -> str:
    if v is None:
        return '""'  # unset
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string is a JSON string for these values


def app_pyproject(cfg: RunConfig, num_cpus: int) -> str:
    """A Flower app's pyproject.toml for one run: e3sfc's ServerApp and ClientApp, every run setting in
    ``[tool.flwr.app.config]``, and a local simulation federation with one SuperNode per client."""
    lines = ['[project]', 'name = "e3sfc-run"', 'version = "1.0.0"', 'dependencies = []', '',
             '[tool.flwr.app]', 'publisher = "e3sfc"', '', '[tool.flwr.app.components]',
             'serverapp = "e3sfc.flower.server_app:app"', 'clientapp = "e3sfc.flower.client_app:app"', '',
             '[tool.flwr.app.config]']
    lines += [f"{k.replace('_', '-')} = {_toml_value(v)}" for k, v in cfg.to_dict().items()]
    lines += ['', '[tool.flwr.federations]', 'default = "local-simulation"', '',
              '[tool.flwr.federations.local-simulation]', f'options.num-supernodes = {cfg.clients}',
              'options.backend.client-resources.num-cpus = 1',
              f'options.backend.init-args.num-cpus = {max(1, num_cpus)}', '']
    return "\n".join(lines)


def run_flower_simulation(cfg: RunConfig, out_dir: str | Path, num_cpus: int = 2,
                          progress: Callable[[int, dict], None] | None = None) -> None:
    """``e3sfc run --engine flower``: the run through ``flwr run`` (Flower's current entry point) on a
    local simulation federation with one SuperNode per client. The app folder is written for the run
    (e3sfc's ServerApp and ClientApp, the settings as its run config); Flower installs nothing
    (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION``), its output goes to this logger at DEBUG (-vv),
    progress comes from the run's metrics (``progress(t, row)`` per round, else an INFO line), and the
    local SuperLink it starts is stopped at the end."""
    import shutil
    import subprocess
    import sys
    import tempfile

    out_dir = Path(out_dir).resolve()
    bin_dir = Path(sys.executable).parent
    search = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    flwr = shutil.which("flwr", path=search)
    if flwr is None:
        raise ConfigError("--engine: 'flower' needs Flower's `flwr` command beside this Python (pip install "
                          "'flwr[simulation]>=1.42')")
    src = str(Path(__file__).resolve().parents[2])  # where the e3sfc package lives, for Flower's processes
    with tempfile.TemporaryDirectory(prefix="e3sfc-flower-") as tmp:
        app, home = Path(tmp) / "app", Path(tmp) / "flwr-home"
        app.mkdir()
        (app / "pyproject.toml").write_text(app_pyproject(cfg.replace(out=str(out_dir), engine="flower"), num_cpus))
        env = {**os.environ, "PATH": search, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
               "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
               "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
        proc = subprocess.Popen([flwr, "run", str(app), "--stream"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        rounds = _Rounds(out_dir / "metrics.jsonl", cfg.rounds, progress)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.debug("flwr: %s", line.rstrip())
                rounds.report()
            proc.wait()
            rounds.report()
        finally:
            if proc.poll() is None:
                proc.kill()
            subprocess.run(["pkill", "-f", str(home)], check=False)  # the SuperLink `flwr run` started


class _Rounds:
    """Reports the rounds that appear in a run's metrics.jsonl (``progress(t, row)`` each, else an INFO
    line), reading the file again only when it has grown."""

    def __init__(self, metrics: Path, rounds: int, progress: Callable[[int, dict], None] | None):
        self.metrics, self.rounds, self.progress = metrics, rounds, progress
        self.shown = self.size = 0

    def report(self) -> None:
        try:
            size = self.metrics.stat().st_size
            if size == self.size:
                return
            rows = [json.loads(x) for x in self.metrics.read_text().splitlines() if x.strip()]
        except (OSError, ValueError):  # absent, or being written: the next line of output tries again
            return
        self.size = size
        for r in rows[self.shown:]:
            if self.progress is not None:
                self.progress(r["round"], r)
            else:
                log.info("round %d/%d: accuracy %.4f, %d B up, %d B down", r["round"], self.rounds,
                         r.get("accuracy") or 0.0, r.get("uplink_bytes", 0), r.get("downlink_bytes", 0))
        self.shown = max(self.shown, len(rows))


__all__ = ["make_client_app", "make_server_app", "run_flower_simulation", "FlowerSimulation"]
