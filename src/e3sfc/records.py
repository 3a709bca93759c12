"""What a run folder's records must look like, checked wherever they are read back (a resume, the
checkpoint's own rows, ``e3sfc plot | compare``): light, no torch."""

from __future__ import annotations

import json
from pathlib import Path

from .metrics import DOWN, UP

BYTE_COUNTS = ("cum_uplink_bytes", "cum_downlink_bytes")
NUMBERS = ("loss", "cosine", "downlink_cosine", "aggregate_cosine", "aggregate_downlink_cosine", "client_accuracy",
           "uplink_bytes", "downlink_bytes", "participants", "rejected", "missing", "clipped",
           "screened")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def metrics_problem(row, previous: dict | None = None) -> str | None:
    """What is wrong with ``row`` as a metrics.jsonl row written by a run (after ``previous``, the row
    before it), or None: a JSON object, ``round`` an integer >= 1 above the previous row's, ``accuracy``
    a number in [0, 1], cumulative byte counts that never go down, ``seconds`` a finite number >= 0,
    and the other numbers numbers (or null)."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    r = row.get("round")
    if not _int(r) or r < 1:
        return f"round {r!r} is not an integer >= 1"
    if previous is not None and r <= previous["round"]:
        return f"round {r} does not follow round {previous['round']}"
    a = row.get("accuracy")
    if not _number(a) or not 0 <= a <= 1:
        return f"accuracy {a!r} is not a number in [0, 1]"
    for key in BYTE_COUNTS:
        v = row.get(key)
        if not _int(v) or v < 0:
            return f"{key} {v!r} is not a byte count"
        if previous is not None and v < previous[key]:
            return f"{key} {v} is below the previous row's {previous[key]}"
    sec = row.get("seconds")
    if not _number(sec) or not 0 <= sec < float("inf"):
        return f"seconds {sec!r} is not a finite number >= 0"
    for key in NUMBERS:
        if key in row and row[key] is not None and not _number(row[key]):
            return f"{key} {row[key]!r} is not a number"
    return None


def ledger_problem(row) -> str | None:
    """What is wrong with ``row`` as a ledger.jsonl row, or None: a JSON object with ``round`` an integer
    >= 1 and ``up`` and ``down`` objects of client id -> byte count."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    if not _int(row.get("round")) or row["round"] < 1:
        return f"round {row.get('round')!r} is not an integer >= 1"
    for d in (UP, DOWN):
        v = row.get(d)
        if not isinstance(v, dict) or not all(isinstance(k, str) and k.isdigit() and _int(n) and n >= 0
                                              for k, n in v.items()):
            return f"{d!r} is not an object of client id -> byte count"
    return None


def read_rows(path: Path, problem) -> list[dict]:
    """The rows of a JSON-lines record, each checked by ``problem(row, previous)``; a ValueError naming
    the line and what is wrong at the first bad one (not UTF-8, not JSON, not such a row)."""
    rows: list[dict] = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path} line {i} is not JSON ({exc})") from None
        why = problem(row, rows[-1] if rows else None)
        if why:
            raise ValueError(f"{path} line {i} is not a row of a run ({why})")
        rows.append(row)
    return rows
