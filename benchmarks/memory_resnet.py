"""Peak resident memory of 100 ResNet-18 clients on CIFAR-shaped data (3SFC and E-3SFC).

Writes a CIFAR-10-sized dataset in the exact pickle format (50,000 + 10,000 random
32x32x3 images, balanced labels) to a temporary folder, loads all of it, and runs
``--rounds`` rounds with every client taking part, so that after round 1 all 100
clients hold their state (the EF residual: 11,173,962 floats = 44.7 MB each). Memory
does not depend on how long a client trains or searches, so local training uses
``--train-subset`` samples in all (20 per client by default) and the 3SFC search is
cut to 1 step of 3 evaluations; the whole training set is still read and
converted (so it counts in the peak). Each method runs in its own process.

    python benchmarks/memory_resnet.py --rounds 1
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_cifar10(root: Path) -> None:
    rng = np.random.default_rng(0)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
                         b"labels": list(np.arange(10_000) % 10)}, f)


def child(method: str, data_dir: str, rounds: int, train_subset: int) -> None:
    import torch

    from e3sfc.config import RunConfig
    from e3sfc.federated import Simulation

    torch.set_num_threads(1)
    cfg = RunConfig(method=method, dataset="cifar10", data_dir=data_dir, model="resnet18", clients=100,
                    fraction=1.0, rounds=rounds, samples=1, steps=1, max_iter=3, batch_size=64,
                    train_subset=train_subset, eval_every=10_000, threads=1)
    sim = Simulation(cfg)
    times = []
    for t in range(1, rounds + 1):
        t0 = time.perf_counter()
        sim.run_round(t)
        times.append(time.perf_counter() - t0)
    holding = sum(1 for c in sim.clients.values() if c.ef.residuals)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"s_round": sum(times) / len(times), "peak_mb": rss_mb, "holding": holding,
                      "params": sim.weights.numel()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--methods", default="3sfc,e3sfc")
    ap.add_argument("--train-subset", type=int, default=2000)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        m, d, r, s = args.child
        child(m, d, int(r), int(s))
        return
    from _common import write_section

    lines = ["| method | clients | model | s / round | peak RSS MB | clients holding a residual |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar10(Path(tmp))
        for m in args.methods.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", m, tmp, str(args.rounds),
                                  str(args.train_subset)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            lines.append(f"| {m} | 100 | ResNet-18 ({r['params']:,} params) | {r['s_round']:.0f} "
                         f"| {r['peak_mb']:,.0f} | {r['holding']} |")
            print(lines[-1], flush=True)
    write_section("Memory: 100 ResNet-18 clients, CIFAR-shaped data", "\n".join(lines) +
                  f"\n\nAll 100 clients take part in each of {args.rounds} round(s); the full 50,000-image training "
                  f"set is loaded, {args.train_subset:,} images of it are trained on (local work does not change "
                  "what is kept per client). Target: under 8 GB.")


if __name__ == "__main__":
    main()
