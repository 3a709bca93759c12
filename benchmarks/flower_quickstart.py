"""Flower's quickstart-pytorch app adopting compression with the README's diff (issue 31, goal 2): does
``e3sfc-method = "3sfc"`` alone, the add-on's defaults, send <= 3.3 KB a payload on the quickstart's
3x32x32 CNN and, after 20 rounds, stay within 3 points of PowerSGD through the same add-on at equal bytes?

The app is Flower quickstart-pytorch's (examples/quickstart-pytorch, read from adap/flower): its Net
(``quickcnn``, 62,006 parameters), its ``train`` (SGD lr 0.1, momentum 0.9, batch 32, 1 local epoch,
the mean training loss and ``num-examples`` in the reply), its ServerApp (FedAvg through
``Strategy.start``, the global model evaluated on the whole test set after every round by
``evaluate_fn``) and its federation (10 SuperNodes, IID partitions). Stand-ins: Fashion-MNIST padded to
3x32x32 (``fmnist-rgb32``, ``--train-subset`` training images, the 10,000 test images) for CIFAR-10, which
this machine does not have. Departures, each the same in every arm: the weights of Net and the order of
the local batches are seeded (the quickstart's are not), so that the arms start alike; each client trains
on its whole partition, and the federated evaluation (``fraction-evaluate`` 0.5 on 20% held out of each
partition) is left out, the central evaluation being the measurement; the inputs are standardized per
channel where the quickstart maps CIFAR's pixels to [-1, 1] (quickstart_collapse.py replays the round in
process with both). The add-on's own seed (its
compressors' randomness, ``e3sfc-seed``) is left at its default in every arm: ``--seeds`` varies the training
subset, its partition, the initial model and the batches.

Arms, one run each per seed (the same data, partition, initial model and batches):
- ``fedavg``: the app as it is, no add-on (dense replies);
- ``3sfc``: the README's diff, ``e3sfc-method = "3sfc"`` and nothing else: the add-on fits the payload
  to its default ``e3sfc-payload-bytes`` (3,215; on this CNN 8x8 features, M = 15, 8-bit);
- ``3sfc-tensor``: the same with ``e3sfc-scales = "tensor"`` (one scale per parameter tensor);
- ``powersgd-r1``, ``powersgd-r2``: the same diff with ``e3sfc-method = "powersgd"``, ``e3sfc-rank``
  1 or 2, ``e3sfc-value-bits = 8``;
- ``stc``: ``e3sfc-method = "stc"``, ``e3sfc-index-coding = "golomb"``, ``e3sfc-ratio = "bytes:N"``, N
  the ``3sfc`` arm's payload bytes.

Engine: Flower's own simulation in this process, ``flwr.simulation.run_simulation`` (deprecated in
Flower 1.42 in favour of ``flwr run``, which needs an app folder per run; it runs the same ServerApp and
ClientApp): the ServerApp in a thread here, the ClientApps in one Ray actor (one CPU), one message at a
time. ``run_simulation`` gives the apps no run config (and Flower refuses a node's run config changed by
the app), so each arm's ``[tool.flwr.app.config]`` (the quickstart's keys, the diff's ``e3sfc-`` keys and
this script's seed, data size and threads) is handed to the apps' builders: the server wraps its strategy
exactly as the diff does (``run_config=`` these keys), the nodes' ``compression_mod`` gets the same
``e3sfc-`` keys as keyword arguments (the add-on's other documented form, the same settings; the mod
stops the run in round 1 if the two ends differ). Ray workers unpickle the ClientApp: its functions live
in this file imported as the module ``flower_quickstart`` (Ray puts the script's folder on their path),
so each worker loads the data once. With ``--fraction-train`` below 1, FedAvg samples Flower's node ids,
which are random in each run: the arms are then not sampled alike (the quickstart trains every node:
1.0, the default).

Bytes: ``payload`` is the add-on's payload (the largest, for golomb positions: ``payload_bytes`` of the
compressor the settings give; the model's ArrayRecord for fedavg); ``reply`` is the mean reply as Flower
counts it (every record's ``count_bytes``, as ``message_size_mod``: the add-on's ``e3sfc-uplink-bytes``
of each reply; FedAvg's replies measured alike). Table and verdict in benchmarks/RESULTS.md, every
round's numbers in ``--json``.

    python benchmarks/flower_quickstart.py                                # 20 rounds, seeds 42 and 43
    python benchmarks/flower_quickstart.py --resume                       # again, keeping the runs made
    python benchmarks/flower_quickstart.py --arms fedavg,3sfc,powersgd-r1 --seeds 42
    python benchmarks/flower_quickstart.py --rounds 2 --train-subset 600 --seeds 42 --title scratch --json /tmp/fq.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from torch import nn

from _common import machine, write_section
from e3sfc.data import FedData, iid_partition, load_dataset
from e3sfc.federated.evaluate import evaluate
from e3sfc.federated.params import get_flat
from e3sfc.federated.runtime import derive_seed, make_context, uplink_compressor
from e3sfc.io import atomic_write
from e3sfc.flower.addon import PREFIX, CompressedStrategy, compression_mod, message_bytes, settings
from e3sfc.models import build_model

JSON = Path(__file__).resolve().parent / "logs" / "flower_quickstart.json"
TITLE = "Flower quickstart through the add-on: 3SFC defaults against PowerSGD (issue 31)"
INPUT_SHAPE, NUM_CLASSES, NODES = (3, 32, 32), 10, 10
QUICKSTART = {"local-epochs": 1, "learning-rate": 0.1, "batch-size": 32}  # its [tool.flwr.app.config]
ARMS = {  # the e3sfc- keys each arm adds to the run config (none: the app without the add-on)
    "fedavg": {},
    "3sfc": {"e3sfc-method": "3sfc"},
    "3sfc-tensor": {"e3sfc-method": "3sfc", "e3sfc-scales": "tensor"},
    "powersgd-r1": {"e3sfc-method": "powersgd", "e3sfc-rank": 1, "e3sfc-value-bits": 8},
    "powersgd-r2": {"e3sfc-method": "powersgd", "e3sfc-rank": 2, "e3sfc-value-bits": 8},
    "stc": {"e3sfc-method": "stc", "e3sfc-index-coding": "golomb"},  # e3sfc-ratio bytes:N, N the 3sfc payload's
}
GOAL_BYTES, GOAL_POINTS = 3300, 3.0
EQUAL_BYTES = 0.05  # payloads this close (a share of 3SFC's) count as equal bytes
LAST = 5  # the mean of the last rounds reported beside the last round


# ---------------------------------------------------------------- the app: the quickstart's, on this data
def net(seed: int) -> nn.Module:
    """The quickstart's Net (``quickcnn``), its weights drawn from ``seed``."""
    return build_model("quickcnn", INPUT_SHAPE, NUM_CLASSES, seed)


@functools.lru_cache(maxsize=1)
def dataset(seed: int, train_subset: int) -> FedData:
    return load_dataset("fmnist-rgb32", train_subset=train_subset, seed=seed)


def partition(seed: int, train_subset: int, pid: int, parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Node ``pid``'s share of the training set: IID, as the quickstart's IidPartitioner."""
    d = dataset(seed, train_subset)
    idx = torch.from_numpy(iid_partition(len(d.train_y), parts, seed)[pid])
    return d.train_x[idx], d.train_y[idx]


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int,
                generator: torch.Generator) -> float:
    """The quickstart's ``train``: SGD with momentum 0.9, cross-entropy; the mean loss of its batches."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return sum(losses) / len(losses)


def train(run_config: dict, msg: Message, context: Context) -> Message:
    """The quickstart's ClientApp train function (its batches seeded by the run's seed, node and round)."""
    seed, pid = int(run_config["seed"]), int(context.node_config["partition-id"])
    torch.set_num_threads(int(run_config["threads"]))
    model = net(seed)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = partition(seed, int(run_config["train-subset"]), pid, int(context.node_config["num-partitions"]))
    g = torch.Generator().manual_seed(derive_seed(seed, pid, int(msg.content["config"]["server-round"])))
    loss = local_train(model, x, y, int(run_config["local-epochs"]), float(msg.content["config"]["lr"]),
                       int(run_config["batch-size"]), g)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


def client_app(run_config: dict) -> ClientApp:
    """The quickstart's ClientApp; with ``e3sfc-method`` in the run config, the README's diff applied
    (the ``e3sfc-`` keys passed to ``compression_mod`` as its keyword arguments)."""
    options = {k[len(PREFIX):].replace("-", "_"): v for k, v in run_config.items() if k.startswith(PREFIX)}
    mods = [compression_mod(functools.partial(net, run_config["seed"]), INPUT_SHAPE, NUM_CLASSES, **options)] \
        if options else []
    app = ClientApp(mods=mods)
    app.train()(functools.partial(train, run_config))
    return app


def reply_bytes(records: list[RecordDict], weighting: str) -> MetricRecord:
    """FedAvg's aggregation of the train metrics, plus ``reply-bytes``: the mean reply as Flower counts it
    (the add-on's ``e3sfc-uplink-bytes`` of each reply, which its wrapper leaves in the metrics; a dense
    reply as it arrives)."""
    out = aggregate_metricrecords(records, weighting)
    sizes = [r["metrics"]["e3sfc-uplink-bytes"] if "e3sfc-uplink-bytes" in r["metrics"] else message_bytes(r)
             for r in records]
    out["reply-bytes"] = sum(sizes) / len(sizes)
    return out


def server_app(run_config: dict, out: dict, progress) -> ServerApp:
    """The quickstart's ServerApp (FedAvg, the global model evaluated on the test set after every round);
    with ``e3sfc-method`` in the run config, its strategy wrapped as the README's diff does. The result
    of ``Strategy.start`` goes to ``out["result"]``, each round's evaluation also to ``progress``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = run_config  # the arm's [tool.flwr.app.config]: run_simulation gives context.run_config none
        seed = int(cfg["seed"])
        test = dataset(seed, int(cfg["train-subset"]))

        def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = net(seed)
            model.load_state_dict(arrays.to_torch_state_dict())
            acc, loss = evaluate(model, test.test_x, test.test_y)
            progress(server_round, acc)
            return MetricRecord({"accuracy": acc, "loss": loss, "time": time.perf_counter()})

        strategy = FedAvg(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0,
                          train_metrics_aggr_fn=reply_bytes)
        if "e3sfc-method" in cfg:
            strategy = CompressedStrategy(strategy, functools.partial(net, seed), INPUT_SHAPE, NUM_CLASSES,
                                          run_config=cfg)
        out["result"] = strategy.start(grid=grid, initial_arrays=ArrayRecord(net(seed).state_dict()),
                                       train_config=ConfigRecord({"lr": float(cfg["learning-rate"])}),
                                       num_rounds=int(cfg["num-server-rounds"]), evaluate_fn=global_evaluate)

    return app


# ---------------------------------------------------------------- the measurement
def payload_bytes(run_config: dict) -> int:
    """Bytes of the add-on's payload under these settings, as its server sizes it (the largest, for golomb
    positions); the model's ArrayRecord without the add-on."""
    model = net(int(run_config["seed"]))
    if "e3sfc-method" not in run_config:
        return ArrayRecord(model.state_dict()).count_bytes()
    cfg = settings(run_config=run_config)
    ctx = make_context(cfg, model, get_flat(model), INPUT_SHAPE, NUM_CLASSES, 1, -1, None)
    return uplink_compressor(cfg, ctx).payload_bytes(ctx)


def arm_config(arm: str, seed: int, args, stc_bytes: int) -> dict:
    """The arm's run config: the quickstart's keys, the diff's e3sfc- keys, this script's settings."""
    extra = {"e3sfc-ratio": f"bytes:{stc_bytes}"} if arm == "stc" else {}
    return {**QUICKSTART, "num-server-rounds": args.rounds, "fraction-train": args.fraction_train, "seed": seed,
            "train-subset": args.train_subset, "threads": args.threads, **ARMS[arm], **extra}


def run_arm(arm: str, run_config: dict, log) -> dict:
    """One run of the app under Flower's simulation: per-round accuracy, bytes and times."""
    from flwr.simulation import run_simulation

    out: dict = {}
    seed = run_config["seed"]
    t0 = time.perf_counter()
    run_simulation(server_app(run_config, out, lambda t, acc: log(f"{arm} seed {seed} round {t}: accuracy {acc:.4f}")),
                   client_app(run_config), num_supernodes=NODES,
                   backend_config={"init_args": {"num_cpus": 1}, "client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    wall = time.perf_counter() - t0
    if "result" not in out:
        raise RuntimeError(f"{arm} seed {seed}: the ServerApp returned no result (see Flower's log above)")
    result = out["result"]
    rounds = sorted(t for t in result.evaluate_metrics_serverapp if t > 0)
    times = [result.evaluate_metrics_serverapp[t]["time"] for t in [0, *rounds]]
    train = result.train_metrics_clientapp
    if sorted(train) != rounds:  # a round whose replies all failed (Flower logs why and goes on)
        raise RuntimeError(f"{arm} seed {seed}: rounds {sorted(set(rounds) - set(train))} aggregated no reply; "
                           "see Flower's log above")
    return {"arm": arm, "seed": seed, "settings": {k: v for k, v in run_config.items() if k.startswith(PREFIX)},
            "payload": payload_bytes(run_config),
            "reply": statistics.fmean(train[t]["reply-bytes"] for t in rounds),
            "accuracy": [result.evaluate_metrics_serverapp[t]["accuracy"] for t in rounds],
            "round_seconds": [b - a for a, b in zip(times, times[1:])], "seconds": wall}


def _settings(row: dict) -> str:
    return " ".join(f"{k[len(PREFIX):]}={v}" for k, v in row["settings"].items()) or "no add-on"


def table(rows: list[dict], dense_reply: float | None) -> str:
    """One row per arm and seed, then the mean over seeds of each arm."""
    head = ["| arm | settings (e3sfc-) | seed | payload B | B a reply up | x below dense | accuracy, last round "
            f"| mean of the last {LAST} | s a round |", "|---|---|---|---|---|---|---|---|---|"]
    arms = list(dict.fromkeys(r["arm"] for r in rows))

    def line(arm, settings, seed, group):
        last = statistics.fmean(r["accuracy"][-1] for r in group)
        tail = statistics.fmean(statistics.fmean(r["accuracy"][-LAST:]) for r in group)
        reply = statistics.fmean(r["reply"] for r in group)
        ratio = f"{dense_reply / reply:.0f}x" if dense_reply else "-"
        secs = statistics.fmean(statistics.fmean(r["round_seconds"][1:] or r["round_seconds"]) for r in group)
        return (f"| {arm} | {settings} | {seed} | {group[0]['payload']:,} | {reply:,.0f} | {ratio} | {last:.4f} "
                f"| {tail:.4f} | {secs:.1f} |")

    body = [line(r["arm"], _settings(r), r["seed"], [r]) for r in rows]
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) > 1:
        for arm in arms:
            group = [r for r in rows if r["arm"] == arm]
            body.append(line(f"**{arm}**", _settings(group[0]), f"mean of {len(group)}", group))
    return "\n".join(head + body)


def verdict(rows: list[dict]) -> str:
    """The goal, on the mean over seeds: 3SFC's payload <= 3.3 KB, and its accuracy after the last round
    within 3 points of the PowerSGD arm whose payload is nearest to it, or ahead."""
    def mean_last(arm):
        return statistics.fmean(r["accuracy"][-1] for r in rows if r["arm"] == arm)

    ours = next((r for r in rows if r["arm"] == "3sfc"), None)
    psgd = {r["arm"]: r["payload"] for r in rows if r["arm"].startswith("powersgd")}
    if ours is None or not psgd:
        return "Goal not judged: it needs the 3sfc arm and a powersgd arm."
    def mean_tail(arm):
        return statistics.fmean(statistics.fmean(r["accuracy"][-LAST:]) for r in rows if r["arm"] == arm)

    near = min(psgd, key=lambda a: abs(psgd[a] - ours["payload"]))
    if abs(psgd[near] - ours["payload"]) > EQUAL_BYTES * ours["payload"]:
        return (f"Goal not judged: no PowerSGD arm within {EQUAL_BYTES:.0%} of 3SFC's {ours['payload']:,} B (the "
                f"nearest, {near}, sends {psgd[near]:,} B); run powersgd-r2.")
    gap = 100 * (mean_last("3sfc") - mean_last(near))
    small, close = ours["payload"] <= GOAL_BYTES, gap >= -GOAL_POINTS
    return (f"Goal (issue 31): 3SFC's payload {ours['payload']:,} B {'<=' if small else '>'} {GOAL_BYTES:,} B "
            f"({ours['reply']:,.0f} B a reply as Flower counts it); after round {len(ours['accuracy'])} it is "
            f"{gap:+.1f} points against {near} ({psgd[near]:,} B, the PowerSGD arm nearest in bytes; mean of the "
            f"last {LAST} rounds: {100 * (mean_tail('3sfc') - mean_tail(near)):+.1f}): "
            f"{'met' if small and close else 'not met'}.")


def shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    root = JSON.parents[2]
    path = path.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seeds", default="42,43")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--train-subset", type=int, default=12000, help="training images (of Fashion-MNIST's 60,000)")
    ap.add_argument("--fraction-train", type=float, default=1.0, help="FedAvg's fraction_train (quickstart: 1.0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server and of the client actor")
    ap.add_argument("--title", default=TITLE, help="the section's title in benchmarks/RESULTS.md")
    ap.add_argument("--json", type=Path, default=JSON, help="every round's numbers")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --json that have this "
                    "command's rounds, data size and fraction (each run is written there as it ends)")
    ap.add_argument("-v", "--verbose", action="store_true", help="Flower's and e3sfc's INFO lines too")
    args = ap.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"--arms: {', '.join(unknown)} not among {', '.join(ARMS)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    flwr_log = logging.getLogger("flwr")  # Flower prints its own lines: not again through the root logger
    flwr_log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    flwr_log.propagate = False
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    same = {"rounds": str(args.rounds), "train_subset": str(args.train_subset),
            "fraction_train": str(args.fraction_train)}
    kept = []
    if args.resume and args.json.is_file():
        old = json.loads(args.json.read_text())
        if all(old.get("args", {}).get(k) == v for k, v in same.items()):
            kept = old.get("rows", [])
        else:
            differ = [k for k, v in same.items() if old.get("args", {}).get(k) != v]
            log(f"--resume: {args.json} holds runs of another {', '.join(differ)}: none kept, the file is replaced")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        stc_bytes = payload_bytes({"seed": seed, **ARMS["3sfc"]})
        for arm in arms:
            cfg = arm_config(arm, seed, args, stc_bytes)
            mine = {k: v for k, v in cfg.items() if k.startswith(PREFIX)}
            row = next((r for r in kept if r["arm"] == arm and r["seed"] == seed and r["settings"] == mine
                        and r["payload"] == payload_bytes(cfg)), None)
            if row is None:
                row = run_arm(arm, cfg, log)
            log(f"{arm} seed {seed}: {row['payload']:,} B a payload, {row['reply']:,.0f} B a reply, accuracy "
                f"{row['accuracy'][-1]:.4f} after round {args.rounds}, {row['seconds']:.0f} s in all")
            rows.append(row)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            made = {(r["arm"], r["seed"]) for r in rows}
            text = json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                               "rows": rows + [r for r in kept if (r["arm"], r["seed"]) not in made]}, indent=1)
            atomic_write(args.json, lambda f: f.write(text))
    dense = statistics.fmean(r["reply"] for r in rows if r["arm"] == "fedavg") if "fedavg" in arms else None
    body = table(rows, dense) + "\n\n" + verdict(rows)
    print(body)
    write_section(args.title, body + (
        f"\n\nFlower quickstart-pytorch's app (its Net, 62,006 parameters; SGD lr 0.1, momentum 0.9, batch 32, 1 local "
        f"epoch; FedAvg over 10 SuperNodes, IID, fraction-train {args.fraction_train}) on Fashion-MNIST padded to "
        f"3x32x32 ({args.train_subset:,} training images, the 10,000 test images; a stand-in for CIFAR-10), "
        f"{args.rounds} rounds, one way (the downlink dense), through Flower's simulation (`run_simulation`, one "
        "Ray actor). Each arm is the quickstart with the README's diff and the e3sfc- keys shown (fedavg: "
        "without the add-on); the initial model, partitions and local batches are seeded alike in every arm. "
        "payload: the add-on's payload (for golomb-coded STC the largest it may send; its ratio is bytes:N, N "
        "the 3sfc payload); B a reply up: the mean train reply as Flower's message_size_mod counts it (payload, "
        "record overhead and the app's metrics); x below dense: fedavg's reply over it. Accuracy: the global "
        "model on the test set. s a round: rounds 2 on (round 1 includes the worker's start). "
        f"The arms' runs: {sum(r['seconds'] for r in rows):.0f} s in all (those kept by --resume included); "
        f"every round: {shown(args.json)}."))


if __name__ == "__main__":
    # Flower's simulation pickles the ClientApp into Ray workers, which import what it refers to by module:
    # run main from this file imported as the module flower_quickstart (not __main__), so that they can.
    import flower_quickstart

    flower_quickstart.main()
