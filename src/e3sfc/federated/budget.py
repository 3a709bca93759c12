"""Communication budget scheduler (E-3SFC component; docs/design.md §1.3).

The paper names a scheduler that spreads a communication budget over rounds but
does not publish its formula. Ours: the knob is M_t, the number of synthetic
samples per payload in round t, and the caller gives ``cost(M)``: the bytes that
round t commits at M (its uplinks, the full models it sends, and one broadcast
for every client under a compressed downlink; none after the last round) and
``remaining``: the budget less what earlier rounds committed (sent or owed).

With a budget every schedule paces it: round t may spend its share of what is
left for the rounds that are left, allowance_t = remaining / rounds_left x s_t,
and takes the largest M whose cost fits (at least 1; the last round takes
everything that fits). What the rounds before left unspent is in ``remaining``,
so it carries forward and the budget is spent. The shape s_t is where the
schedules differ:
- ``constant``: s_t = 1 (an even spread).
- ``decay``: s_t = gamma^(t-1) / mean_{u>=t} gamma^(u-1) (front-loaded).
- ``adaptive``: s_t = clip(target_cosine / c_{t-1}, 1/2, 2), c_{t-1} the mean
  compression cosine the clients measured last round: rounds whose updates
  compress worse than the target get more samples, rounds that compress
  better give some back (s_1 = 1).
Without a budget: ``constant`` sends ``samples``; ``decay`` round(samples
gamma^(t-1)); ``adaptive`` moves M by one sample a round towards the target
cosine (within 1..max_samples).

Guarantee (tested): every choice leaves enough for M = 1 in each remaining
round, so what a run commits never exceeds the budget; over 5 to 100 rounds at
full and partial participation every schedule commits at least 95% of it.
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
        if self.budget is None:
            if self.schedule == "adaptive":
                m = self.samples if self.last is None else self.last
                if last_cosine is not None and self.last is not None:
                    m = m + 1 if last_cosine < self.target_cosine else m - 1
                m = min(max(m, 1), self.max_samples)
            elif self.schedule == "constant":
                m = self.samples
            else:
                m = max(1, round(self.samples * self.gamma ** (t - 1)))
            self.last = m
            return m
        assert remaining is not None
        allowance = remaining / rounds_left * self.shape(t, last_cosine)
        if rounds_left == 1:
            allowance = remaining  # the last round: whatever is left
        safe = self._largest(cost, remaining - (rounds_left - 1) * cost(1))
        if safe < 1:
            raise RuntimeError(f"budget exhausted before round {t}: {remaining} bytes left")
        m = min(max(self._largest(cost, allowance), 1), safe)
        self.last = m
        return m

    def shape(self, t: int, last_cosine: float | None) -> float:
        """s_t: this round's multiple of an even share of what is left (see the module docstring)."""
        if self.schedule == "decay":
            weights = [self.gamma ** (s - 1) for s in range(t, self.rounds + 1)]
            return weights[0] * len(weights) / sum(weights)
        if self.schedule == "adaptive" and last_cosine is not None and last_cosine > 0:
            return min(2.0, max(0.5, self.target_cosine / last_cosine))
        return 1.0

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = state["last"]
