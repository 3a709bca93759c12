"""Error feedback (memory) as its own component (Karimireddy et al. 2019; GRACE's Memory).

For each party k: target = e_k + delta; after compressing, e_k <- target - decoded.
Invariant (tested in float64): decoded + e_new == target.
"""

from __future__ import annotations

import torch


class ErrorFeedback:
    """Residuals keyed by a stable party id (client index; -1 for the server)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.residuals: dict[int, torch.Tensor] = {}

    def target(self, key: int, delta: torch.Tensor) -> torch.Tensor:
        """tau = e_k + delta (a new tensor; ``delta`` is not modified)."""
        e = self.residuals.get(key)
        if not self.enabled or e is None:
            return delta.clone()
        return e.to(delta.device, delta.dtype) + delta

    def update(self, key: int, target: torch.Tensor, decoded: torch.Tensor) -> None:
        """e_k <- target - decoded."""
        if self.enabled:
            self.residuals[key] = (target - decoded).detach()

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "residuals": {k: v.cpu() for k, v in self.residuals.items()}}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.enabled = state["enabled"]
        self.residuals = {int(k): v.to(device) for k, v in state["residuals"].items()}
