"""Communication budget scheduler (E-3SFC component; docs/design.md §1.3).

The paper names a scheduler that spreads a communication budget over rounds but
does not publish its formula. Ours: the knob is M_t, the number of synthetic
samples per payload in round t, and the caller gives ``cost(M)``: the bytes that
round t commits at M (its uplink plus every downlink copy it will cause).

Schedules:
- ``constant``: M_t = ``samples`` without a budget; with one, the largest M with
  cost(M) <= remaining / rounds_left (leftovers carry to later rounds, so the
  budget is spent, not wasted).
- ``decay``: front-loaded. Round t's share of what remains is
  gamma^(t-1) / sum_{s>=t} gamma^(s-1); without a budget M_t = round(samples gamma^(t-1)).
- ``adaptive``: M_t = M_{t-1} + 1 when the last round's mean |cos| fell below
  ``target_cosine``, M_{t-1} - 1 when above (within 1..max_samples).

Guarantee (tested): every choice leaves enough for M = 1 in each remaining
round, so cumulative bytes never exceed the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

SCHEDULES = ("constant", "decay", "adaptive")


@dataclass
class BudgetScheduler:
    schedule: str = "constant"
    budget: int | None = None        # bytes, up and down together, for the whole run
    rounds: int = 1
    samples: int = 1                 # M without a budget (constant), start value (adaptive, decay)
    max_samples: int = 64
    target_cosine: float = 0.5
    gamma: float = 0.97
    last: int | None = None          # M of the previous round (adaptive)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule: {self.schedule!r} is not allowed; expected one of {', '.join(SCHEDULES)}")

    def check(self, cost: Callable[[int], int]) -> None:
        """Refuse a budget too small for one sample per payload in every round."""
        if self.budget is not None:
            need = cost(1) * self.rounds
            if need > self.budget:
                raise ConfigError(
                    f"--budget-bytes: {self.budget} is too small; one synthetic sample per client "
                    f"per round for {self.rounds} rounds needs at least {need} bytes"
                )

    def _largest(self, cost: Callable[[int], int], limit: float) -> int:
        m = 0
        while m < self.max_samples and cost(m + 1) <= limit:
            m += 1
        return m

    def choose(self, t: int, cost: Callable[[int], int], remaining: int | None = None,
               last_cosine: float | None = None) -> int:
        """M_t for round t (1-based); ``remaining`` = budget minus bytes committed so far."""
        rounds_left = self.rounds - t + 1
        if self.schedule == "adaptive":
            m = self.samples if self.last is None else self.last
            if last_cosine is not None and self.last is not None:
                m = m + 1 if last_cosine < self.target_cosine else m - 1
            m = min(max(m, 1), self.max_samples)
        elif self.budget is None:
            m = self.samples if self.schedule == "constant" else max(1, round(self.samples * self.gamma ** (t - 1)))
        elif self.schedule == "constant":
            m = self._largest(cost, remaining / rounds_left)
        else:  # decay
            weights = [self.gamma ** (s - 1) for s in range(t, self.rounds + 1)]
            m = self._largest(cost, remaining * weights[0] / sum(weights))
        if self.budget is not None:
            assert remaining is not None
            safe = self._largest(cost, remaining - (rounds_left - 1) * cost(1))
            if safe < 1:
                raise RuntimeError(f"budget exhausted before round {t}: {remaining} bytes left")
            m = min(max(m, 1), safe)
        self.last = m
        return m

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = state["last"]
