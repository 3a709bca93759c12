"""Shared helpers for the benchmark scripts: machine description and markdown sections."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def cos2(u: torch.Tensor, d: torch.Tensor) -> float:
    """The share of ``u``'s energy that ``d`` captures, cos^2(u, d), in float64 (0 where either is zero)."""
    u, d = u.double(), d.double()
    nu, nd = float(u.norm()), float(d.norm())
    return float(u @ d) ** 2 / (nu * nd) ** 2 if nu > 0 and nd > 0 else 0.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), Python {platform.python_version()}")


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``## title`` in the results file, atomically."""
    from e3sfc.io import atomic_write

    header = "# Benchmarks\n\nEach section: the command, the machine, the date, the figures.\n"
    text = path.read_text() if path.exists() else header
    block = (f"## {title}\n\n- command: `{command()}`\n- machine: {machine()}\n"
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{body.strip()}\n\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    atomic_write(path, lambda f: f.write(text))


def true_updates(sim, rounds: list[int], per_round: int) -> list:
    """Run FedAvg ``sim`` to max(rounds); the true updates (u, w_t, t, k) of the first ``per_round``
    participants at each of ``rounds``. The server's FedAvg compressor is wrapped on this instance only
    (FedAvg's target is the true update: no error feedback), so nothing in the library changes."""
    comp, got = sim.server.compressor, []
    orig = comp.compress_many

    def spy(targets, ctxs):
        for u, c in zip(targets, ctxs):
            if c.round in rounds and sum(t == c.round for *_, t, _ in got) < per_round:
                got.append((u.clone(), c.weights.clone(), c.round, c.client))
        return orig(targets, ctxs)

    comp.compress_many = spy
    try:
        for t in range(1, max(rounds) + 1):
            sim.run_round(t)
    finally:
        del comp.compress_many
    return got


@contextmanager
def captured_targets(min_round: int = 1):
    """While active, every 3SFC compression records (EF target, global weights, round, client) into
    the yielded list, from round ``min_round`` on; the compression itself runs as usual."""
    from e3sfc.compress.threesfc import ThreeSFC

    targets, orig = [], ThreeSFC.compress_steps

    def spy(self, target, ctx):
        if ctx.round >= min_round:
            targets.append((target.clone(), ctx.weights.clone(), ctx.round, ctx.client))
        return (yield from orig(self, target, ctx))

    ThreeSFC.compress_steps = spy
    try:
        yield targets
    finally:
        ThreeSFC.compress_steps = orig


def count_objective_evaluations() -> dict[str, int]:
    """Make every form of the 3SFC objective count its evaluations into the returned ``{"evals": n}``."""
    from e3sfc.compress import synth, synth_mlp

    n = {"evals": 0}
    for cls in (synth.CosineMatch, synth.CosineMatchBatch, synth_mlp.MLPCosineMatch, synth_mlp.MLPCosineMatchBatch):
        def counted(self, z, _call=cls.__call__):
            n["evals"] += len(z) if isinstance(z, list) else 1  # a batch: one evaluation per point
            return _call(self, z)

        cls.__call__ = counted
    return n
