"""GPU check and timing: every method on ``--device cuda``, and a 3SFC round of ResNet-18 on the
GPU against the same machine's CPU.

Part 1 (does it work): each registered method runs ``--check-rounds`` rounds on digits (MLP,
4 clients) once on cuda and once on cpu, same seed. Per round the bytes sent up and down must be
equal on both devices (the wire format does not depend on the device), losses finite, and the
final accuracies close; under E-3SFC every client's replica, brought up to date, must equal the
server's model bit for bit on cuda.

Part 2 (how fast): ResNet-18 (11.2 M parameters) on CIFAR-shaped random data written in the exact
CIFAR-10 pickle format, 10 clients, all take part, ``--train-subset`` training images in all,
3SFC at its defaults; seconds per round on cuda (mean of rounds 2.., round 1 warms up) and on the
machine's CPU (all of torch's threads; ``--cpu-rounds``, no warm-up needed) in the same process.
A second device row runs with ``--batch-search`` (a round's ten searches evaluated together with
torch.func); a cuda-only row trains on the whole 50,000-image set.

    python benchmarks/gpu.py                         # on a machine with a GPU
    python benchmarks/gpu.py --quick --device cpu    # the script itself, CPU only (a check)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from e3sfc.compress import available_methods  # noqa: E402
from e3sfc.config import RunConfig  # noqa: E402
from e3sfc.federated import Simulation  # noqa: E402


def check_method(method: str, device: str, rounds: int) -> dict:
    cfg = RunConfig(method=method, dataset="digits", model="mlp", clients=4, rounds=rounds, batch_size=32,
                    lr=0.05, seed=7, device=device, steps=2, max_iter=5, synth_iters=5)  # short searches
    sim = Simulation(cfg)
    summary = sim.run()
    rows = sim.metrics
    out = {"up": [r["uplink_bytes"] for r in rows], "down": [r["downlink_bytes"] for r in rows],
           "loss": [r["loss"] for r in rows], "acc": summary.get("final_accuracy", rows[-1]["accuracy"]),
           "weights_device": str(sim.weights.device)}
    if method == "e3sfc":
        out["replicas_equal"] = all(torch.equal(sim.sync(sim.round + 1, k), sim.weights)
                                    for k in range(cfg.clients))
    return out


def part1(device: str, rounds: int) -> tuple[list[str], bool]:
    lines = ["| method | weights on | bytes up/down per round equal to cpu | final acc (device / cpu) | "
             "losses finite | replicas equal |", "|---|---|---|---|---|---|"]
    ok = True
    for m in available_methods():
        t0 = time.perf_counter()
        a, b = check_method(m, device, rounds), check_method(m, "cpu", rounds)
        same_bytes = a["up"] == b["up"] and a["down"] == b["down"]
        finite = all(math.isfinite(x) for x in a["loss"])
        close = abs(a["acc"] - b["acc"]) <= 0.15
        rep = a.get("replicas_equal")
        good = same_bytes and finite and close and rep is not False and a["weights_device"].startswith(device)
        ok &= good
        yes = lambda v: "yes" if v else "NO"  # noqa: E731
        lines.append(f"| {m} | {a['weights_device']} | {yes(same_bytes)} | {a['acc']:.4f} / {b['acc']:.4f} | "
                     f"{yes(finite)} | {'-' if rep is None else yes(rep)} |")
        print(lines[-1], f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return lines, ok


def time_resnet(device: str, data_dir: str, rounds: int, train_subset: int, threads: int, evals: dict,
                batch_search: bool = False) -> dict:
    cfg = RunConfig(method="3sfc", dataset="cifar10", data_dir=data_dir, model="resnet18", clients=10,
                    fraction=1.0, rounds=rounds + 1, batch_size=64, train_subset=train_subset,
                    eval_every=10_000, device=device, threads=threads, batch_search=batch_search)
    sim = Simulation(cfg)
    times, comp, train, n = [], [], [], []
    for t in range(1, rounds + 1):  # stops before the last configured round, which would evaluate
        if device == "cuda":
            torch.cuda.synchronize()
        evals["evals"] = 0
        t0 = time.perf_counter()
        row = sim.run_round(t)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        comp.append(row["compress_seconds"])
        train.append(row["train_seconds"])
        n.append(evals["evals"])
        print(f"  {device} train_subset={train_subset} batch_search={batch_search} round {t}: "
              f"{times[-1]:.2f} s (train {train[-1]:.2f}, "
              f"compress {comp[-1]:.2f}, {n[-1]} objective evaluations, cos {row['cosine']:.3f})", flush=True)
    k = slice(1, None) if rounds > 1 and device == "cuda" else slice(0, None)
    mean = lambda xs: sum(xs[k]) / len(xs[k])  # noqa: E731
    return {"s_round": mean(times), "train": mean(train), "compress": mean(comp), "evals": mean(n),
            "rounds": len(times[k])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--check-rounds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="cuda rounds per setting (the first is a warm-up)")
    ap.add_argument("--cpu-rounds", type=int, default=1, help="cpu rounds (all timed)")
    ap.add_argument("--train-subset", type=int, default=2000)
    ap.add_argument("--skip-full", action="store_true", help="no cuda row on the whole training set")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny settings: check that the script runs")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.check_rounds, args.rounds, args.train_subset, args.skip_full = 2, 2, 100, True
    from _common import count_objective_evaluations, write_section
    from memory_resnet import write_cifar10

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none"
    figures: dict = {"gpu": gpu, "cpu_threads": torch.get_num_threads()}
    body = [f"GPU: {gpu}; CPU rows use all {torch.get_num_threads()} torch threads of the same machine.", ""]
    ok = True
    if not args.skip_check:
        lines, ok = part1(args.device, args.check_rounds)
        body += [f"Every method on `--device {args.device}` against cpu: digits, MLP, 4 clients, "
                 f"{args.check_rounds} rounds, seed 7.", "", *lines, ""]
        figures["check_ok"] = ok
    table = ["| device | search | training images per round | s / round | of which training | of which compression "
             "| objective evaluations per round | ms per evaluation | vs cpu, same images |",
             "|---|---|---|---|---|---|---|---|---|"]
    res: list = []

    def report() -> None:  # after each row, so that a run stopped by a time limit keeps what it measured
        base = {sub: r for dev, sub, bat, r in res if dev == "cpu" and not bat}
        rows = []
        for dev, sub, bat, r in res:
            ratio = f"{base[sub]['s_round'] / r['s_round']:.1f}x faster" if sub in base and dev != "cpu" else "-"
            ms = 1000 * r["compress"] / max(r["evals"], 1)
            rows.append(f"| {dev} | {'batched' if bat else 'one at a time'} | {sub:,} | {r['s_round']:.2f} | "
                        f"{r['train']:.2f} | {r['compress']:.2f} | "
                        f"{r['evals']:.0f} | {ms:.1f} | {ratio} |")
        text = "\n".join([*body, "3SFC round, ResNet-18, CIFAR-shaped random data, 10 clients all taking part, "
                          f"defaults (M = 1, patience 20); cuda: mean of the rounds after a warm-up round "
                          f"({args.rounds} in all); cpu: {args.cpu_rounds} round(s).", "", *table, *rows])
        print(text, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
        if not args.quick:
            write_section(f"GPU: every method on {args.device}, ResNet-18 3SFC round against CPU", text)

    evals = count_objective_evaluations()
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar10(Path(tmp))
        threads = torch.get_num_threads()
        # the device alone, then with --batch-search (a round's searches batched with torch.func), then cpu
        todo = [(args.device, args.train_subset, False), (args.device, args.train_subset, True),
                ("cpu", args.train_subset, False)]
        if not args.skip_full and args.device == "cuda":
            todo.append(("cuda", 50_000, False))
        for dev, sub, bat in todo:
            r = time_resnet(dev, tmp, args.rounds if dev == "cuda" else args.cpu_rounds, sub, threads, evals, bat)
            res.append((dev, sub, bat, r))
            figures[f"{dev}_{sub}{'_batched' if bat else ''}"] = r
            report()
    if not ok:
        sys.exit("gpu check: a method failed on the device (see the table)")


if __name__ == "__main__":
    main()
