"""Run folders and checkpoints.

A run folder is written under an exclusive lock on ``RUN_DIR/.lock`` (a second writer stops with
a one-line error); taking it removes the temporary files a killed writer left. A new run starts
only in a folder without a checkpoint. Checkpoints (``checkpoint.pt``) are written atomically and
hold tensors, numbers, strings and bytes only; they are read with ``torch.load(weights_only=True)``:
a checkpoint cannot run code, and one that is corrupt or belongs to another model or run is
refused with one line.

Integrity: a checkpoint holds a SHA-256 checksum of each of its tensors (``checksums``, by path:
``server/weights``, ``clients/2/residual``, ...) and one of everything else in it (``records``: the
round, metrics, ledger, settings, the spilled clients' entries, which carry their spill files'
checksums). A resume recomputes them before it uses anything and names what does not match (the
server weights, the residual of client k, the records, the spill file of client k); it then
refuses any tensor that is not finite, by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import io
from ..compress import Compressor, Context
from ..config import RunConfig
from ..errors import ConfigError, Damaged
from .store import ClientStore

CHECKPOINT = "checkpoint.pt"


@contextmanager
def locked_run_dir(path: Path):
    """Hold an exclusive lock on ``path/.lock`` (a second writer gets a ConfigError naming the folder)
    and remove the temporary files a killed writer left behind."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX): no lock
        fcntl = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write a run folder at {str(path)!r} ({exc.strerror or exc}); "
                          "expected a writable folder") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"--out: {str(path)!r} is in use by another e3sfc run; wait for it to finish "
                                  "or pick another --out") from None
        for tmp in path.glob(".*.tmp"):  # what io.atomic_write leaves when killed mid-write
            tmp.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def check_reusable(path: Path) -> None:
    """A new run may start in ``path`` only if it holds no checkpointed run and nothing but what an
    e3sfc run writes (an empty folder, or one whose run never checkpointed); else a ConfigError."""
    if (path / CHECKPOINT).exists():
        raise ConfigError(f"--out: {str(path)!r} already holds a run; pass --resume {shlex.quote(str(path))} or "
                          "another --out")
    if not path.is_dir():
        return
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            RunConfig.from_dict(json.loads(cfg.read_text()))
            return  # an e3sfc run that stopped before its first checkpoint: start it again
        except (ValueError, OSError, TypeError, AttributeError):
            pass
    others = [p.name for p in path.iterdir() if p.name != ".lock" and not p.name.endswith(".tmp")]
    if others:
        raise ConfigError(f"--out: {str(path)!r} is not empty and holds no e3sfc run ({others[0]!r} ...); "
                          "expected a new or empty folder")


def read_config(run_dir: str | Path) -> RunConfig:
    """The config of the run in ``run_dir`` (read before anything is built, so that settings that
    change numerics, such as the thread count, can be applied first)."""
    run_dir = Path(run_dir)
    cfg_path, ckpt = run_dir / "config.json", run_dir / CHECKPOINT
    if not cfg_path.is_file():
        raise ConfigError(f"--resume: {str(run_dir)!r} is not a run folder (no config.json)")
    if not ckpt.is_file():
        raise ConfigError(f"--resume: {str(run_dir)!r} has no {CHECKPOINT} to resume from (its run never "
                          "checkpointed: start it again with --out)")
    try:
        values = json.loads(cfg_path.read_text())
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        return RunConfig.from_dict(values)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume: {cfg_path} is not a readable run config ({exc})") from None


def read_checkpoint(run_dir: str | Path):
    """The checkpoint in ``run_dir``, read without running code (not yet checked: see check_state)."""
    ckpt = Path(run_dir) / CHECKPOINT
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file; none may escape
        raise ConfigError(f"--resume: {ckpt} is not a readable e3sfc checkpoint "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


CHECKSUMS = "checksums"
RECORDS = "records"


def _tensors_and_records(state: dict) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of a checkpoint's state by path ("server/weights"), and the SHA-256 of the rest (the
    structure, keys and every non-tensor value, in order)."""
    tensors: dict[str, torch.Tensor] = {}
    h = hashlib.sha256()

    def walk(v, path: tuple) -> None:
        if isinstance(v, torch.Tensor):
            tensors["/".join(map(str, path))] = v
            h.update(b"T")
        elif isinstance(v, dict):
            h.update(b"{%d" % len(v))
            for k, x in v.items():
                h.update(f"{type(k).__name__}:{k!r}=".encode())
                walk(x, (*path, k))
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[%d" % len(v))
            for i, x in enumerate(v):
                walk(x, (*path, i))
            h.update(b"]")
        elif isinstance(v, (bytes, bytearray)):
            h.update(b"B%d:" % len(v))
            h.update(v)
        else:
            h.update(f"{type(v).__name__}:{v!r};".encode())

    walk({k: v for k, v in state.items() if k != CHECKSUMS}, ())
    return tensors, h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def checksums(state: dict) -> dict[str, str]:
    """The checksums a checkpoint of ``state`` carries: one per tensor, and ``records`` for the rest."""
    tensors, rest = _tensors_and_records(state)
    return {**{path: tensor_digest(t) for path, t in tensors.items()}, RECORDS: rest}


def stamp(state: dict) -> dict:
    """``state`` with its checksums (what ``Checkpointer.save`` writes)."""
    return {**state, CHECKSUMS: checksums(state)}


def what(path: str) -> str:
    """A checkpoint path in words: ``clients/2/residual`` -> "the residual of client 2"."""
    parts = path.split("/")
    if parts[:1] == ["clients"] and len(parts) == 3:
        return {"residual": "the residual", "replica": "the model replica", "start": "the warm start"}.get(
            parts[2], f"the {parts[2]}") + f" of client {parts[1]}"
    words = {"server/weights": "the server weights", "server/downlink/start": "the server's downlink warm start",
             RECORDS: "the records (round, metrics, ledger, settings, spill entries)"}
    if path in words:
        return words[path]
    if parts[:4] == ["server", "downlink", "ef", "residuals"] and len(parts) == 5:
        return "the server's downlink residual"
    return path


def verify(state) -> None:
    """Recompute a checkpoint's checksums (a Damaged error naming the first part that does not match),
    then require every floating-point tensor to be finite (a Damaged error naming it)."""
    if not isinstance(state, dict):
        raise Damaged("it is not an e3sfc checkpoint")
    stored = state.get(CHECKSUMS)
    if not isinstance(stored, dict):
        raise Damaged("it has no checksums (written by an older e3sfc, or damaged)")
    tensors, rest = _tensors_and_records(state)
    if stored.get(RECORDS) != rest:
        raise Damaged(f"{what(RECORDS)} do not match their checksum")
    if set(stored) != {*tensors, RECORDS}:
        extra = sorted(set(stored) ^ {*tensors, RECORDS})[0]
        raise Damaged(f"its checksums do not list the tensors it holds ({what(extra)})")
    for path, t in tensors.items():
        if stored[path] != tensor_digest(t):
            raise Damaged(f"{what(path)} does not match its checksum")
    for path, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise Damaged(f"{what(path)} holds non-finite values (inf or NaN); no run can continue from it")


def check_state(state, cfg: RunConfig, num_params: int, uplink: Compressor, downlink: Compressor | None,
                ctx: Context) -> None:
    """Shapes and ranges of a checkpoint against the run of ``cfg``, before any of it is used; the warm
    starts by the compressor that keeps them (the clients' by ``uplink``, the server's by ``downlink``,
    None for the dense downlink) at ``ctx`` (the run's model)."""
    if not isinstance(state, dict) or not isinstance(state.get("server"), dict):
        raise ValueError("not an e3sfc checkpoint")
    # settings added since the checkpoint was written: their defaults; the rounds may differ (a run
    # extended with --resume --rounds N rewrites config.json before its next checkpoint), its round may not
    # pass them (below)
    defaults = {**RunConfig().to_dict(), "rounds": None}
    if {**defaults, **(state.get("config") or {}), "rounds": None} != {**defaults, **cfg.to_dict(), "rounds": None}:
        raise ValueError("its config differs from config.json")
    if not isinstance(state["round"], int) or not 0 <= state["round"] <= cfg.rounds:
        raise ValueError(f"round {state['round']!r} is outside 0..{cfg.rounds}")
    from ..records import metrics_problem
    rows = state["metrics"]
    for i, row in enumerate(rows):
        why = metrics_problem(row, rows[i - 1] if i else None)
        if why:
            raise ValueError(f"its metrics row {i + 1} is not a row of a run ({why})")
    if not (isinstance(state["elapsed"], (int, float)) and math.isfinite(state["elapsed"])):
        raise ValueError(f"its elapsed time {state['elapsed']!r} is not a finite number")
    down = state["server"]["downlink"]
    if len(down["version"]) != cfg.clients or len(down["owed"]) != cfg.clients:
        raise ValueError(f"its downlink state is for {len(down['version'])} clients, not {cfg.clients}")
    shape = (num_params,)
    tensors = [state["server"]["weights"], *state["server"]["downlink"]["ef"]["residuals"].values()]
    for k, c in state["clients"].items():
        if not (isinstance(k, int) and 0 <= k < cfg.clients):
            raise ValueError(f"client id {k!r} is outside 0..{cfg.clients - 1}")
        tensors += [v for v in (c["replica"], c["residual"]) if v is not None]
        for name, n in (c.get("spilled") or {}).get("layout", []):
            if name in ("replica", "residual") and n != num_params:
                raise ValueError(f"client {k}'s spilled {name} has {n} numbers; this run's model has "
                                 f"{num_params:,} parameters")
            if name == "start":  # a spilled warm start: its length, as the method would check it
                uplink.check_carry(torch.zeros(int(n)), ctx)
        if c.get("start") is not None:  # warm starts: what the method's carry could have kept
            uplink.check_carry(c["start"], ctx)
    if down.get("start") is not None:
        if downlink is None:
            raise ValueError("it holds a downlink warm start; this run's downlink is dense")
        downlink.check_carry(down["start"], ctx)
    for v in tensors:
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape or v.dtype != torch.float32:
            raise ValueError(f"a model-sized tensor is {getattr(v, 'shape', type(v).__name__)}; "
                             f"this run's model has {num_params:,} parameters")


class Checkpointer:
    """A run's state (round, server runtime, client runtimes, records, config) to and from a checkpoint.

    ``store``: the in-process client runtimes (None where the clients live elsewhere, as under the
    Flower driver: the checkpoint then holds no client)."""

    def __init__(self, cfg: RunConfig, out_dir: Path | None, server, recorder, device: torch.device | str = "cpu",
                 store: ClientStore | None = None):
        self.cfg, self.out_dir, self.server, self.recorder = cfg, out_dir, server, recorder
        self.device, self.store = device, store

    def state_dict(self, round: int, spilled: dict[int, dict] | None = None) -> dict:
        """The run's state; ``spilled``: the snapshot entries of the clients on disk (see ``save``)."""
        clients = {}
        if self.store is not None:
            clients = {k: c.state_dict() for k, c in self.store.live.items()}
            for k, (c, _) in self.store.cold.items():
                if spilled is None:
                    raise RuntimeError("clients are spilled to disk: their state is in a checkpoint's snapshot")
                clients[k] = {**c.state_dict(), "spilled": spilled[k]}
        return {"round": round, "server": self.server.state_dict(), "clients": clients,
                **self.recorder.state_dict(), "config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict) -> int:
        """Restore a checked state (see check_state); returns its round."""
        self.server.load_state_dict(state["server"], self.device)
        store = self.store
        if store is not None:
            store.live.clear()
            store.cold.clear()
            if store.folder is not None and store.folder.exists():
                shutil.rmtree(store.folder)  # the stopped run's spills: the checkpoint's snapshot replaces them
            for k, cs in state["clients"].items():
                c = store.make(int(k))
                c.load_state_dict(cs, self.device)
                if "spilled" in cs:
                    store.restore(self.out_dir, int(k), c, cs["spilled"])
                else:
                    store.live[int(k)] = c
        self.recorder.load_state_dict(state)
        return int(state["round"])

    def save(self, round: int) -> None:
        """Write the checkpoint of the run after ``round`` (atomically; spilled clients by snapshot)."""
        assert self.out_dir is not None
        spilled = self.store.snapshot(self.out_dir, round) if self.store is not None else {}
        state = stamp(self.state_dict(round, spilled))
        io.atomic_write(self.out_dir / CHECKPOINT, lambda f: torch.save(state, f), mode="wb")
        ClientStore.prune(self.out_dir, f"state-r{round}" if spilled else None)
