"""Shared helpers for the benchmark scripts: machine description and markdown sections."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


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
