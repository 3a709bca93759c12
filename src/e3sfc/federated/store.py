"""Per-client state under a memory budget: the in-process simulator's client runtimes.

A client's state is a few scalars and up to three model-sized tensors: its error-feedback
residual, its replica of the model (under a compressed downlink) and its warm start. With
``--state-memory MB`` (0: no limit) the store keeps the tensors of the most recently used
clients in memory, at most that many megabytes of them after every round, and spills the rest
to disk: one file per client, the tensors' float32 numbers back to back (little-endian), written
atomically; the layout (which tensors, how long) stays in memory. A client's next use reads its
file back. Nothing but numbers is read from a spill file, and only after its SHA-256 (taken when
it was written, kept in memory) matches: a file that changed under the run stops it (RunStopped).

Checkpoints: :meth:`ClientStore.snapshot` hard-links (or copies) every spill file into a folder
named for the checkpoint's round, so later spills (which replace files, never rewrite them) cannot
change what a checkpoint refers to; the checkpoint lists each spilled client's file , layout and
checksum (so the checkpoint's own checksum covers them), and :meth:`ClientStore.restore` brings
them back as spilled clients once each file matches its checksum and holds finite numbers only. Per-round work is
proportional to the clients in memory, not to the idle ones on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import io
from ..errors import Damaged, RunStopped

log = logging.getLogger(__name__)

FIELDS = ("residual", "replica", "start")
_NAME = re.compile(r"^state-r\d+/client-\d+\.f32$")


def tensors_of(c) -> dict[str, torch.Tensor]:
    """The model-sized (or warm-start) tensors a client runtime holds, by name."""
    out = {"residual": c.ef.residuals.get(c.cid), "replica": c.replica, "start": c.start}
    return {k: v for k, v in out.items() if v is not None}


def _set(c, name: str, value: torch.Tensor | None) -> None:
    if name == "residual":
        c.ef.residuals = {} if value is None else {c.cid: value}
    else:
        setattr(c, name, value)


class ClientStore:
    """Client runtimes by id, their tensors within ``budget`` bytes in memory (0: no limit)."""

    def __init__(self, make: Callable[[int], object], budget: int = 0, folder: str | Path | None = None,
                 device: torch.device | str = "cpu"):
        self.make, self.budget, self.device = make, int(budget), device
        self._tmp = None
        if folder is None and self.budget:
            self._tmp = tempfile.TemporaryDirectory(prefix="e3sfc-spill-")
            folder = self._tmp.name
        self.folder = Path(folder) if folder is not None else None
        self.live: OrderedDict[int, object] = OrderedDict()   # least recently used first
        self.cold: dict[int, tuple[object, list[tuple[str, int]]]] = {}  # runtime without tensors, layout
        self.digests: dict[int, str] = {}  # SHA-256 of each spilled client's file
        self.spills = self.loads = 0

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.live) + len(self.cold)

    def get(self, k: int):
        """Client k's runtime, its tensors in memory (read back from disk if spilled)."""
        if k in self.live:
            self.live.move_to_end(k)
            return self.live[k]
        if k in self.cold:
            c, layout = self.cold.pop(k)
            try:
                self._read(c, self._file(k), layout, self.digests.pop(k, None))
            except (ValueError, OSError) as exc:
                raise RunStopped(f"client {k}'s spilled state cannot be read back ({exc})") from None
            self.loads += 1
        else:
            c = self.make(k)
        self.live[k] = c
        return c

    def held_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for c in self.live.values() for v in tensors_of(c).values())

    def settle(self) -> None:
        """After a round: spill the least recently used clients until the tensors in memory fit the budget."""
        if not self.budget:
            return
        held = self.held_bytes()
        while held > self.budget and self.live:
            k, c = self.live.popitem(last=False)
            held -= self._spill(k, c)

    # ------------------------------------------------------------------ disk
    def _file(self, k: int) -> Path:
        return self.folder / f"client-{k}.f32"

    def _spill(self, k: int, c) -> int:
        ts = tensors_of(c)
        layout = [(name, int(v.numel())) for name, v in ts.items()]
        flat = np.concatenate([v.detach().to("cpu", torch.float32).reshape(-1).numpy() for v in ts.values()]) \
            if ts else np.zeros(0, np.float32)
        data = flat.astype("<f4").tobytes()
        io.atomic_write(self._file(k), lambda f: f.write(data), mode="wb")
        self.digests[k] = hashlib.sha256(data).hexdigest()
        for name in ts:
            _set(c, name, None)
        self.cold[k] = (c, layout)
        self.spills += 1
        return int(flat.nbytes)

    def _read(self, c, path: Path, layout: list[tuple[str, int]], digest: str | None = None) -> None:
        flat = np.fromfile(path, dtype="<f4")
        if digest is not None and hashlib.sha256(flat).hexdigest() != digest:
            raise ValueError(f"{path} does not match its checksum")
        if flat.size != sum(n for _, n in layout):
            raise ValueError(f"{path} holds {flat.size} numbers; its layout says {sum(n for _, n in layout)}")
        at = 0
        for name, n in layout:
            _set(c, name, torch.from_numpy(flat[at:at + n].copy()).to(self.device))
            at += n

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self, run_dir: Path, round: int) -> dict[int, dict]:
        """Freeze the spill files for a checkpoint of ``round``: links (or copies) under
        ``run_dir/state-r<round>/``; returns, per spilled client, its file (relative) and layout."""
        if not self.cold:
            return {}
        snap = run_dir / f"state-r{round}"
        if snap.exists():
            shutil.rmtree(snap)
        snap.mkdir(parents=True)
        out = {}
        for k, (_, layout) in self.cold.items():
            src, dst = self._file(k), snap / f"client-{k}.f32"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            out[k] = {"file": f"{snap.name}/{dst.name}", "layout": [[n, s] for n, s in layout],
                      "sha256": self.digests[k]}
        return out

    @staticmethod
    def prune(run_dir: Path, keep: str | None) -> None:
        """Remove snapshot folders other than ``keep`` (after a newer checkpoint is in place)."""
        for d in run_dir.glob("state-r*"):
            if d.is_dir() and d.name != keep:
                shutil.rmtree(d, ignore_errors=True)

    def restore(self, run_dir: Path, k: int, c, entry: dict) -> None:
        """Client k from a checkpoint's spilled entry: its file copied into the spill folder, kept cold."""
        name = entry.get("file")
        if not isinstance(name, str) or not _NAME.match(name) or name.split("/")[1] != f"client-{k}.f32":
            raise ValueError(f"client {k}'s spill file {name!r} is not state-r<round>/client-{k}.f32")
        layout = [(str(n), int(s)) for n, s in entry["layout"]]
        if any(n not in FIELDS or s < 0 for n, s in layout):
            raise ValueError(f"client {k}'s layout {layout!r} names fields outside {FIELDS}")
        src = run_dir / name
        if src.stat().st_size != 4 * sum(s for _, s in layout):
            raise ValueError(f"{src} is {src.stat().st_size} bytes; its layout needs {4 * sum(s for _, s in layout)}")
        digest = entry.get("sha256")
        if not isinstance(digest, str):
            raise Damaged(f"client {k}'s spill entry has no checksum")
        flat = np.fromfile(src, dtype="<f4")
        if hashlib.sha256(flat).hexdigest() != digest:
            raise Damaged(f"the spilled state of client {k} ({name}) does not match its checksum")
        if not np.isfinite(flat).all():
            raise Damaged(f"the spilled state of client {k} ({name}) holds non-finite values (inf or NaN)")
        if self.folder is None:  # no budget now: bring it into memory
            self._read(c, src, layout, digest)
            self.live[k] = c
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, self._file(k))
        self.digests[k] = digest
        self.cold[k] = (c, layout)
