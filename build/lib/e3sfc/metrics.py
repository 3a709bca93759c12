"""The byte ledger (one for the whole project) and the run-record writers.

The ledger counts the exact length of every serialized payload, per round,
client and direction ("up": client -> server, "down": server -> client).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

UP, DOWN = "up", "down"


class Ledger:
    def __init__(self) -> None:
        # round -> direction -> client -> bytes
        self._rows: dict[int, dict[str, dict[int, int]]] = defaultdict(lambda: {UP: {}, DOWN: {}})
        self._totals = {UP: 0, DOWN: 0}  # running sums: total() is read every round

    def add(self, round: int, client: int, direction: str, nbytes: int) -> None:
        if direction not in (UP, DOWN):
            raise ValueError(f"direction must be {UP!r} or {DOWN!r}, got {direction!r}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        d = self._rows[round][direction]
        d[client] = d.get(client, 0) + int(nbytes)
        self._totals[direction] += int(nbytes)

    def round_bytes(self, round: int, direction: str) -> int:
        return sum(self._rows[round][direction].values()) if round in self._rows else 0

    def per_client(self, round: int, direction: str) -> dict[int, int]:
        return dict(self._rows[round][direction]) if round in self._rows else {}

    def total(self, direction: str, upto: int | None = None) -> int:
        """Bytes sent in ``direction`` in every round (up to round ``upto`` inclusive, where given)."""
        if upto is None:
            return self._totals[direction]
        return sum(
            sum(r[direction].values()) for t, r in self._rows.items() if upto is None or t <= upto
        )

    def rounds(self) -> list[int]:
        return sorted(self._rows)

    def rows(self) -> Iterable[dict]:
        """One JSON-able row per round with per-client bytes in each direction."""
        for t in self.rounds():
            r = self._rows[t]
            yield {
                "round": t,
                "up": {str(k): v for k, v in sorted(r[UP].items())},
                "down": {str(k): v for k, v in sorted(r[DOWN].items())},
            }

    def state_dict(self) -> list[dict]:
        return list(self.rows())

    def load_state_dict(self, rows: list[dict]) -> None:
        self._rows.clear()
        self._totals = {UP: 0, DOWN: 0}
        for row in rows:
            for direction in (UP, DOWN):
                for k, v in row[direction].items():
                    self.add(int(row["round"]), int(k), direction, int(v))
