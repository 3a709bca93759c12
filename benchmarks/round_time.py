"""Seconds per round of each method in the reference setting, measured in one run.

Reference setting: Fashion-MNIST, MLP, 10 clients, Dirichlet 1.0, 1 local epoch,
batch 64, lr 0.01, seed 42. Evaluation is left out of the timing. Ratios against
FedAvg come from the same run, so they are comparable across machines; the methods
run interleaved round by round, so a slow spell of the machine hits them alike.

    python benchmarks/round_time.py --methods fedavg,3sfc,3sfc@patience=0 --rounds 5 --threads 1
    python benchmarks/round_time.py --model convnet-fast --methods fedavg,3sfc,3sfc@batch_search=1 --rounds 3
    python benchmarks/round_time.py --methods fedavg,e3sfc@samples=4@feature_bits=8 --profile 2

``--profile P``: after the timed rounds, P more rounds of each method under cProfile, and a table of
where a round's time goes: the cumulative time of the functions that make up each phase (local
training, the uplink search, its quantization, the server's decoding, the downlink search, the
clients' catch-up), per round, with the share of each search spent evaluating the objective (the rest is
the L-BFGS's own work); evaluation and I/O are timed apart (one call on the test set, one checkpoint
write). Profiling slows every call it sees, so the timed rounds run first and without it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from _common import write_section
from e3sfc.compress import search, synth, synth_mlp
from e3sfc.config import RunConfig
from e3sfc.federated import Simulation
from e3sfc.federated.evaluate import evaluate

# a phase of the round: the functions whose cumulative time it is, as (file suffix, function name);
# "of which" phases are parts of the one above them (quantization happens inside the search)
PHASES = (
    ("local training", (("federated/runtime.py", "train"),)),
    ("uplink search (clients)", (("compress/threesfc.py", "compress_many"), ("compress/base.py", "compress_many"))),
    ("  of which quantization", (("compress/threesfc.py", "_round"),)),
    ("server decode + bound", (("federated/runtime.py", "screen"),)),
    ("downlink (server compresses the move)", (("federated/runtime.py", "move"),)),
    ("clients' catch-up (decode the broadcast)", (("federated/runtime.py", "catch_up"),)),
)
# the rows of the profile table: the phases, each search's objective evaluations under it, then the one-call timings
UP_OBJ, DOWN_OBJ = "  of which objective evaluations (uplink)", "  of which objective evaluations (downlink)"
ROWS = ("round (profiled)", *(p for p, _ in PHASES[:3]), UP_OBJ, PHASES[3][0], PHASES[4][0], DOWN_OBJ, PHASES[5][0],
        "evaluation (one call)", "I/O: checkpoint write (one call; every 10 rounds by default)")
OBJECTIVES = (synth.CosineMatch, synth.CosineMatchBatch, synth_mlp.MLPCosineMatch, synth_mlp.MLPCosineMatchBatch,
              search.Upsampled, search.UpsampledBatch)


@contextmanager
def clocked_objectives(sim: Simulation):
    """While active, the seconds spent evaluating 3SFC objectives (every form, batched or alone; an objective
    calling another counted once), split by who asked: the server's downlink (inside its ``move``) or the
    clients' uplink (anywhere else)."""
    secs, state = {UP_OBJ: 0.0, DOWN_OBJ: 0.0}, {"phase": UP_OBJ, "depth": 0}
    originals = {cls: cls.__call__ for cls in OBJECTIVES}

    def clocked(call):
        def timed(self, z):
            if state["depth"]:
                return call(self, z)
            state["depth"] += 1
            t0 = time.perf_counter()
            try:
                return call(self, z)
            finally:
                secs[state["phase"]] += time.perf_counter() - t0
                state["depth"] -= 1
        return timed

    def downlink(move):
        def moved(*args, **kw):
            state["phase"] = DOWN_OBJ
            try:
                return move(*args, **kw)
            finally:
                state["phase"] = UP_OBJ
        return moved

    for cls, call in originals.items():
        cls.__call__ = clocked(call)
    sim.server.move = downlink(sim.server.move)
    try:
        yield secs
    finally:
        for cls, call in originals.items():
            cls.__call__ = call
        del sim.server.move


def parse_method(spec: str) -> tuple[str, dict]:
    """``3sfc`` or ``3sfc@patience=0@steps=5`` or ``powersgd@rank=6@downlink=powersgd@init=seed``: a method and
    RunConfig overrides (true/false, ints, floats or words)."""
    name, *opts = spec.split("@")
    extra: dict = {}
    for o in opts:
        k, v = o.split("=", 1)
        if v.lower() in ("true", "false"):
            extra[k.replace("-", "_")] = v.lower() == "true"
            continue
        for cast in (int, float, str):
            try:
                extra[k.replace("-", "_")] = cast(v)
                break
            except ValueError:
                continue
    return name, extra


def reference(method: str, extra: dict, rounds: int, model: str) -> Simulation:
    """The reference setting (module docstring) with ``model`` and ``extra`` (which may change any of it, the
    dataset too: ``@dataset=fmnist-rgb32@train_subset=12000``), one warm-up round run."""
    cfg = RunConfig(**{"method": method, "dataset": "fmnist", "model": model, "clients": 10, "alpha": 1.0,
                       "local_epochs": 1, "batch_size": 64, "lr": 0.01, "seed": 42, **extra,
                       "rounds": rounds + 1, "eval_every": 10_000})
    sim = Simulation(cfg)
    sim.run_round(1)  # warm-up, neither timed nor profiled
    return sim


def time_methods(specs: list[tuple[str, dict]], rounds: int, model: str = "mlp") -> list[dict]:
    """All methods side by side, interleaved round by round (round t of every method, then round
    t + 1), so that slow spells of the machine hit every method alike."""
    sims = [reference(method, extra, rounds, model) for method, extra in specs]
    times = [[] for _ in sims]
    comp = [[] for _ in sims]
    for t in range(2, rounds + 2):
        for i, sim in enumerate(sims):
            t0 = time.perf_counter()
            stats = sim.run_round(t)
            times[i].append(time.perf_counter() - t0)
            comp[i].append(stats["compress_seconds"])
    out = []
    for (method, extra), sim, ts, cs in zip(specs, sims, times, comp):
        label = "@".join([method, *(f"{k}={v}" for k, v in extra.items())])
        out.append({"method": label, "s_round": sum(ts) / len(ts), "s_compress": sum(cs) / len(cs),
                    "up_bytes": sim.ledger.round_bytes(2, "up") / 10, "extra": extra})
    return out


def profile_rounds(sim: Simulation, first: int, rounds: int) -> dict[str, float]:
    """Seconds per round of each :data:`ROWS` entry: the :data:`PHASES` over ``rounds`` rounds run under
    cProfile, the whole round's, the objective's share of the searches (:func:`clocked_objectives`), and
    one evaluation's and one checkpoint write's."""
    prof = cProfile.Profile()
    with clocked_objectives(sim) as objective:
        t0 = time.perf_counter()
        prof.enable()
        for t in range(first, first + rounds):
            sim.run_round(t)
        prof.disable()
        total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    out = {"round (profiled)": total / rounds}
    for phase, funcs in PHASES:
        keys = {k for k in stats if any(k[0].endswith(sfx) and k[2] == fn for sfx, fn in funcs)}
        # each function's time as called from outside the phase: one of them calling another (3SFC's
        # compress_many handing a lone search to the base class's) is not counted twice
        out[phase] = sum(edge[3] for k in keys for caller, edge in stats[k][4].items() if caller not in keys) / rounds
    out.update({k: v / rounds for k, v in objective.items()})
    t0 = time.perf_counter()
    evaluate(sim.model, sim.test_x, sim.test_y)
    out["evaluation (one call)"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:  # what a run writes every --checkpoint-every rounds
        sim.checkpointer.out_dir = Path(d)
        try:
            t0 = time.perf_counter()
            sim.checkpointer.save(first + rounds - 1)
            out[ROWS[-1]] = time.perf_counter() - t0
        finally:
            sim.checkpointer.out_dir = None
    return out


def profile_table(specs: list[tuple[str, dict]], rounds: int, model: str) -> str:
    cols, names = [], []
    for method, extra in specs:
        cols.append(profile_rounds(reference(method, extra, rounds, model), 2, rounds))
        names.append("@".join([method, *(f"{k}={v}" for k, v in extra.items())]))
    lines = ["| s / round | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in ROWS:
        cells = []
        for c in cols:
            v = c[r]
            whole = c["round (profiled)"]
            share = f" ({100 * v / whole:.0f}%)" if r not in (ROWS[0], *ROWS[-2:]) else ""
            cells.append(f"{v:.3f}{share}" if v else "-")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="fedavg")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per method (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="mlp", help="model of the otherwise reference setting")
    ap.add_argument("--title", default="Seconds per round, reference setting",
                    help="section of benchmarks/RESULTS.md to write (replaced if it exists)")
    ap.add_argument("--profile", type=int, default=0, help="rounds per method to profile after the timing (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = time_methods([parse_method(m) for m in args.methods.split(",")], args.rounds, args.model)
    # the baseline: the first FedAvg listed (with any overrides, e.g. fedavg@dataset=fmnist-rgb32)
    base = next((r["s_round"] for r in rows if r["method"].split("@")[0] == "fedavg"), None)
    lines = ["| method | s / round | x FedAvg | compress s / round (all clients) | uplink B / client-round |",
             "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['s_round'] / base:.2f}" if base else "-"
        lines.append(f"| {r['method']} | {r['s_round']:.3f} | {ratio} | {r['s_compress']:.3f} | {r['up_bytes']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    note = ("Authors' code on this machine (from the issue, MLP): FedAvg 1.45 s/round, 3SFC 8.26 s/round (one thread)."
            if args.model == "mlp" else f"Model: {args.model}.")
    if args.profile:
        prof = profile_table([parse_method(m) for m in args.methods.split(",")], args.profile, args.model)
        print(prof)
        note += (f"\n\nWhere a round's time goes (cProfile, {args.profile} rounds of each method after the timed ones; "
                 "a phase is the cumulative time of its functions, its share of the profiled round in brackets; "
                 "profiling slows each call, so these seconds exceed the timed ones):\n\n" + prof)
    write_section(args.title, table + "\n\n" + note)


if __name__ == "__main__":
    main()
