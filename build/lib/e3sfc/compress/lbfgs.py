"""L-BFGS on one flat vector: the algorithm of ``torch.optim.LBFGS`` without line search,
with its two-loop recursion done in closed matrix form.

The 3SFC encoder optimises a few hundred numbers (M inputs and M soft labels), so
torch's L-BFGS spends its time in Python: the two-loop recursion is 4 k tiny
tensor operations for k stored pairs (up to ``history`` = 100). Written with
U = the upper triangle of S Y^T (U[i, j] = s_i . y_j for i <= j, so its diagonal holds
s_i . y_i; one new column per new pair), the same recursion is

    U a = -S g;   q = -g - Y^T a;   r = H_diag q;   U^T c = (s.y) * a - Y r;   d = r + S^T c

(the first loop is back substitution, the second forward substitution; Byrd,
Nocedal & Schnabel 1994): a fixed handful of operations whatever k is. Every
other rule is torch's, step for step (lr 1, first step min(1, 1/|g|_1), curvature
check s.y > 1e-10, history shift, max_eval = 5/4 max_iter, the tolerance_grad and
tolerance_change stops, the state kept from one step (one run of :meth:`FlatLBFGS.steps`)
to the next, and the last iteration of a step moving without evaluating). Directions agree with
torch's to float rounding (tests/test_compress.py compares the two).
"""

from __future__ import annotations

from typing import Generator

import torch


class FlatLBFGS:
    """``torch.optim.LBFGS(lr, max_iter, history_size, line_search_fn=None)`` on a flat vector ``z``,
    the objective outside (:meth:`steps`). ``z`` is updated in place.
    """

    def __init__(self, z: torch.Tensor, *, lr: float = 1.0, max_iter: int = 20, history: int = 100,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9):
        self.z, self.lr, self.max_iter, self.history = z, lr, max_iter, history
        self.max_eval = max_iter * 5 // 4
        self.tol_grad, self.tol_change = tolerance_grad, tolerance_change
        n, kw = z.numel(), {"dtype": z.dtype, "device": z.device}
        self.S = torch.zeros(history, n, **kw)   # steps s_i, oldest first
        self.Y = torch.zeros(history, n, **kw)   # gradient changes y_i
        self.U = torch.zeros(history, history, **kw)  # U[i, j] = s_i . y_j for i <= j, 0 below
        self.ys = torch.zeros(history, **kw)     # s_i . y_i
        self.k = 0
        self.n_iter = 0
        self.d: torch.Tensor | None = None
        self.t: float | torch.Tensor = lr
        self.h_diag: float | torch.Tensor = 1.0
        self.prev_grad: torch.Tensor | None = None
        self.prev_loss = 0.0

    def _push(self, s: torch.Tensor, y: torch.Tensor, ys: torch.Tensor) -> None:
        k, h = self.k, self.history
        if k == h:  # forget the oldest pair
            self.S[:-1] = self.S[1:].clone()
            self.Y[:-1] = self.Y[1:].clone()
            self.U[:-1, :-1] = self.U[1:, 1:].clone()
            self.ys[:-1] = self.ys[1:].clone()
            k -= 1
        self.U[:k, k] = self.S[:k] @ y
        self.U[k, :k] = 0
        self.U[k, k] = ys
        self.S[k], self.Y[k], self.ys[k] = s, y, ys
        self.k = k + 1

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        k = self.k
        if k == 0:
            return torch.mul(g.neg(), self.h_diag)
        S, Y, ys = self.S[:k], self.Y[:k], self.ys[:k]
        U = self.U[:k, :k]
        a = torch.linalg.solve_triangular(U, (S @ g).neg().unsqueeze(1), upper=True).squeeze(1)
        r = torch.mul(g.neg() - Y.T @ a, self.h_diag)
        c = torch.linalg.solve_triangular(U.T, (ys * a - Y @ r).unsqueeze(1), upper=False).squeeze(1)
        return r + S.T @ c

    @torch.no_grad()  # on a generator torch enters no_grad at each resume and leaves it at each yield
    def steps(self) -> Generator[torch.Tensor, tuple[float, torch.Tensor], None]:
        """One ``torch.optim.LBFGS.step`` (up to ``max_iter`` iterations) with the objective outside:
        yields the point to evaluate (``self.z`` itself, left untouched until the answer comes) and
        takes (f, grad f) back through ``send``. A caller may evaluate many optimisers' points
        together this way, or stop sending to end the step early (it keeps its own best iterate)."""
        loss, g = yield self.z
        evals = 1
        if g.abs().max() <= self.tol_grad:
            return
        n_iter = 0
        while n_iter < self.max_iter:
            n_iter += 1
            self.n_iter += 1
            if self.n_iter == 1:
                d = g.neg()
                self.k, self.h_diag = 0, 1.0
            else:
                y = g.sub(self.prev_grad)
                s = self.d.mul(self.t)
                ys = y.dot(s)
                if ys > 1e-10:
                    self._push(s, y, ys)
                    self.h_diag = ys / y.dot(y)
                d = self._direction(g)
            self.d = d
            if self.prev_grad is None:
                self.prev_grad = g.clone()
            else:
                self.prev_grad.copy_(g)
            self.prev_loss = loss
            self.t = min(1.0, 1.0 / g.abs().sum()) * self.lr if self.n_iter == 1 else self.lr
            if g.dot(d) > -self.tol_change:
                break
            self.z.add_(d, alpha=float(self.t))
            opt_cond = False
            if n_iter != self.max_iter:
                loss, g = yield self.z
                opt_cond = bool(g.abs().max() <= self.tol_grad)
                evals += 1
            if n_iter == self.max_iter or evals >= self.max_eval or opt_cond:
                break
            if d.mul(self.t).abs().max() <= self.tol_change:
                break
            if abs(loss - self.prev_loss) < self.tol_change:
                break
