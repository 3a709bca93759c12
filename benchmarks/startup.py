"""Start-up: Fashion-MNIST loading and a run's time before its first round, first run and later runs.

Each figure is one fresh Python process, timed from outside (interpreter start included):
- ``load``: ``load_dataset("fmnist")`` alone (decode, standardise);
- ``start-up``: everything ``e3sfc run --method 3sfc`` (reference setting) does before round 1:
  imports, data, partition, model, the simulator.
The first row of each runs with an empty user cache (the decoded arrays are not cached yet), the
later rows with the cache the first one wrote.

    python benchmarks/startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

LOAD = ("import time; from e3sfc.data import load_dataset; t = time.perf_counter(); load_dataset('fmnist'); "
        "print(time.perf_counter() - t)")
START = ("from e3sfc.config import RunConfig; from e3sfc.federated import Simulation; "
         "Simulation(RunConfig.from_sources('configs/reference.toml', method='3sfc', threads=1))")


def timed(code: str, env: dict) -> str:
    """The process's wall time, and what it printed (the load's own seconds) in brackets."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    inner = f" ({float(out.strip().splitlines()[-1]):.2f})" if out.strip() else ""
    return f"{time.perf_counter() - t0:.2f}{inner}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs after the first (cache warm)")
    args = ap.parse_args()
    from _common import write_section

    lines = ["| what | first run (empty cache) s | later runs s (each) |", "|---|---|---|"]
    base = {k: v for k, v in os.environ.items()}
    for label, code in (("load Fashion-MNIST (own process)", LOAD), ("start-up before round 1", START)):
        with tempfile.TemporaryDirectory() as cache:
            env = {**base, "XDG_CACHE_HOME": cache}
            first = timed(code, env)
            later = [timed(code, env) for _ in range(args.repeats)]
        lines.append(f"| {label} | {first} | {', '.join(later)} |")
        print(lines[-1], flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    lines.append(f"| for scale: `import torch` alone | {time.perf_counter() - t0:.2f} | |")
    write_section("Start-up and data loading (Fashion-MNIST)", "\n".join(lines) +
                  "\n\nEach figure is a fresh process timed from outside, the interpreter's start included; in "
                  "brackets the load's own seconds inside the process.")


if __name__ == "__main__":
    main()
