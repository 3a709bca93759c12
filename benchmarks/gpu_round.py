"""GPU: a 3SFC round against a FedAvg round on the same card, per model, and a CUDA-graph trial.

Part 1 (rounds): for each ``--models`` entry, on CIFAR-shaped random data written in the exact
CIFAR-10 format, 10 clients all taking part, ``--train-subset`` training images in all, one local
epoch at batch 64: a FedAvg round, a 3SFC round with the round's searches batched
(``--batch-search``) and a 3SFC round searching one client at a time. FedAvg and the batched 3SFC
run ``--rounds`` rounds and report the mean of the rounds after the first (which warms up cuDNN and
torch.func); the one-at-a-time 3SFC runs last, when the process is warm, for ``--serial-rounds``
rounds (all timed: its search dominates and costs the most).

Part 2 (CUDA graphs): the batched objective of ``--clients`` random targets (M = 1, one scale),
``CosineMatchBatch`` evaluated eagerly and replayed from its captured CUDA graph (the same kernels
without their launch cost); milliseconds per client and the largest difference between the two.

    python benchmarks/gpu_round.py --models convnet-fast,resnet18      # on a machine with a GPU
    python benchmarks/gpu_round.py --quick --device cpu                 # the script itself (no graph)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from e3sfc.config import RunConfig  # noqa: E402
from e3sfc.federated import Simulation  # noqa: E402

SHAPE = (3, 32, 32)


def time_rounds(model: str, method: str, batch_search: bool, device: str, data_dir: str, rounds: int,
                train_subset: int, warm: bool, graphs: bool = True) -> dict:
    """Seconds per round (the mean after a warm-up round where ``warm``), training and compression;
    ``graphs``: whether the batched objective may replay a CUDA graph."""
    from e3sfc.compress.synth import CosineMatchBatch

    CosineMatchBatch.graphs = graphs
    cfg = RunConfig(method=method, dataset="cifar10", data_dir=data_dir, model=model, clients=10, fraction=1.0,
                    rounds=rounds + 1, batch_size=64, train_subset=train_subset, eval_every=10_000, device=device,
                    batch_search=batch_search)
    sim = Simulation(cfg)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for t in range(1, rounds + 1):  # stops before the last configured round, which would evaluate
        sync()
        t0 = time.perf_counter()
        row = sim.run_round(t)
        sync()
        rows.append((time.perf_counter() - t0, row["train_seconds"], row["compress_seconds"]))
        print(f"  {model} {method} batched={batch_search} round {t}: {rows[-1][0]:.2f} s (train {rows[-1][1]:.2f}, "
              f"compress {rows[-1][2]:.2f})", flush=True)
    timed = rows[1:] if warm and len(rows) > 1 else rows
    return {k: sum(r[i] for r in timed) / len(timed) for i, k in enumerate(("s_round", "train", "compress"))}


def graph_trial(model_name: str, clients: int, device: str, repeats: int = 20) -> str:
    """ms per client of the batched objective (value and df/dz, ``CosineMatchBatch``), eager against
    replayed from its captured CUDA graph, and the largest difference between the two."""
    from e3sfc.compress.search import cosine_match
    from e3sfc.compress.synth import CosineMatchBatch
    from e3sfc.models import build_model

    gen = torch.Generator().manual_seed(0)
    model = build_model(model_name, SHAPE, 10, seed=0).to(device).eval()
    P = sum(p.numel() for p in model.parameters())
    fs = [cosine_match(model, torch.randn(P, generator=gen).to(device), (1, *SHAPE), (1, 10))
          for _ in range(clients)]
    zs = [torch.randn(torch.Size(SHAPE).numel() + 10, generator=gen).to(device) for _ in range(clients)]
    eager, graphed = CosineMatchBatch(fs), CosineMatchBatch(fs)
    eager.graphs, graphed.graphs = False, True

    def timed(batch) -> float:
        batch(zs)  # the first call warms up (and captures the graph)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            batch(zs)
        torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - t0) / repeats / clients

    eager_ms, graph_ms = timed(eager), timed(graphed)
    diff = max(float((a[2] - b[2]).abs().max()) for a, b in zip(eager(zs), graphed(zs)))
    return (f"| {model_name} | {P:,} | {clients} | {eager_ms:.2f} | {graph_ms:.2f} | {eager_ms / graph_ms:.1f}x | "
            f"{diff:.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--models", default="convnet-fast,resnet18")
    ap.add_argument("--rounds", type=int, default=2, help="FedAvg and batched 3SFC rounds (the first warms up)")
    ap.add_argument("--serial-rounds", type=int, default=1, help="3SFC rounds searching one client at a time")
    ap.add_argument("--train-subset", type=int, default=50_000)
    ap.add_argument("--clients", type=int, default=10, help="objectives batched in the CUDA-graph trial")
    ap.add_argument("--variants", default="fedavg,batched,graphed,serial",
                    help="rows per model: fedavg, batched (eager), graphed (batched, CUDA graph), serial")
    ap.add_argument("--skip-rounds", action="store_true")
    ap.add_argument("--skip-trial", action="store_true", help="no CUDA-graph trial of the objective alone")
    ap.add_argument("--quick", action="store_true", help="tiny settings: check that the script runs")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.models, args.rounds, args.train_subset = "convnet-fast", 2, 200
    from _common import write_section
    from memory_resnet import write_cifar10

    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    body = [f"Card: {card}; torch {torch.__version__}.", ""]
    table = ["| model | method | search | s / round | of which training | of which compression | vs FedAvg |",
             "|---|---|---|---|---|---|---|"]
    rows: list[str] = []

    def report(extra: list[str]) -> str:
        text = "\n".join([*body, f"Rounds: CIFAR-shaped random data, 10 clients all taking part, "
                          f"{args.train_subset:,} training images in all, 1 local epoch, batch 64; 3SFC at its "
                          f"defaults (M = 1, patience 20).", "", *table, *rows, "", *extra])
        print(text, flush=True)
        return text

    extra: list[str] = []
    if not args.skip_rounds:
        with tempfile.TemporaryDirectory() as tmp:
            write_cifar10(Path(tmp))
            wanted = args.variants.split(",")
            for model in args.models.split(","):
                fed = time_rounds(model, "fedavg", False, args.device, tmp, args.rounds, args.train_subset, True)
                rows_of = {"fedavg": ("fedavg", False, 0, True, False),
                           "batched": ("3sfc", True, args.rounds, True, False),
                           "graphed": ("3sfc", True, args.rounds, True, True),
                           "serial": ("3sfc", False, args.serial_rounds, False, False)}
                for v in wanted:
                    method, bat, n, warm, graphs = rows_of[v]
                    r = fed if method == "fedavg" else time_rounds(model, method, bat, args.device, tmp, n,
                                                                   args.train_subset, warm, graphs)
                    search = {"fedavg": "-", "batched": "batched", "graphed": "batched, CUDA graph",
                              "serial": "one at a time"}[v]
                    rows.append(f"| {model} | {method} | {search} | {r['s_round']:.2f} | {r['train']:.2f} | "
                                f"{r['compress']:.2f} | {r['s_round'] / fed['s_round']:.2f}x |")
                    report(extra)
    if args.device == "cuda" and not args.skip_trial:
        extra = [f"CUDA graphs: the batched objective of {args.clients} clients (value and df/dz, M = 1), eager "
                 "against replayed from one captured graph (mean of 20 evaluations):", "",
                 "| model | parameters | clients | eager ms / client | graph ms / client | speed-up | "
                 "largest difference |", "|---|---|---|---|---|---|---|"]
        for model in args.models.split(","):
            try:
                extra.append(graph_trial(model, args.clients, args.device))
            except Exception as exc:  # a trial: report what failed instead of stopping the benchmark
                extra.append(f"| {model} | - | {args.clients} | - | - | capture failed: "
                             f"{type(exc).__name__}: {str(exc)[:120]} | - |")
            report(extra)
    text = report(extra)
    if not args.quick:
        write_section(args.title or f"GPU round: 3SFC against FedAvg on one {card}", text)


if __name__ == "__main__":
    main()
