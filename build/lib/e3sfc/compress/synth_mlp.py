"""The 3SFC objective in closed form for Linear/ReLU chains (the MLP of the paper).

For a model ``Sequential([Flatten,] Linear, ReLU, Linear, ReLU, ..., Linear)`` the
gradient g(x, y) of the soft-label cross-entropy is, layer by layer, G_l = D_l^T A_l
and g_b = D_l^T 1 (A_l: the M inputs of layer l, D_l: the loss gradient at its
outputs). So the two numbers the objective needs,

    g.tau = sum_l <D_l T_l, A_l> + (D_l^T 1) . t_l
    g.g   = sum_l <A_l A_l^T, D_l D_l^T> + |D_l^T 1|^2

(T_l, t_l: the parts of tau for layer l), cost a few matrix-vector products with M
rows, and g itself (P numbers) is never formed. The gradient df/d(x, y) is the reverse
pass of that computation, written out below: about a hundred plain tensor operations
and no autograd graph. For M = 1 on the 784-200-200-10 MLP one evaluation takes about a
quarter of the time of the autograd form (:class:`.synth.CosineMatch`, which every other
model uses); value and gradient agree with it to float rounding (tests/test_compress.py).
ReLU's derivative at 0 is taken as 0, as torch does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .synth import batch_results, projection_cosine


def linear_relu_chain(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``model`` when it is exactly [Flatten,] Linear (ReLU Linear)*, else None."""
    if type(model) is not nn.Sequential and not (isinstance(model, nn.Sequential) and
                                                  type(model).forward is nn.Sequential.forward):
        return None
    mods = list(model)
    if mods and type(mods[0]) is nn.Flatten and mods[0].start_dim == 1 and mods[0].end_dim == -1:
        mods = mods[1:]
    if len(mods) % 2 == 0 or not mods:
        return None
    lins = mods[0::2]
    if any(type(m) is not nn.Linear for m in lins) or any(type(m) is not nn.ReLU for m in mods[1::2]):
        return None
    return lins


def _total(terms: list[torch.Tensor], zero: torch.Tensor) -> torch.Tensor:
    """zero + terms[0] + terms[1] + ..., added in that order (g.tau or g.g from its per-tensor terms)."""
    for v in terms:
        zero += v
    return zero


def _addmm(a: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return a @ W.T if b is None else torch.addmm(b, a, W.T)


def _matmul_add(a: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return a @ W.T if b is None else a @ W.T + b


def _forward(layers, x: torch.Tensor, y: torch.Tensor, linear) -> tuple:
    """The forward pass of (x, y) (M, d) or batched (B, M, d) through ``layers`` and the loss gradients
    at each layer's output: A[l] is the input of layer l, mask[l] where its ReLU passes, p the softmax,
    s the label sums and D[l] = dL/dH[l] (mean over the M samples). ``linear(a, W, b)`` is the affine
    map (the single objective's addmm, the batch's matmul + b: each path keeps its own rounding)."""
    L, M = len(layers), x.shape[-2]
    A, H = [x], []
    for i, (W, b, _, _) in enumerate(layers):
        h = linear(A[-1], W, b)
        H.append(h)
        if i < L - 1:
            A.append(h.clamp_min(0))
    mask = [h > 0 for h in H[:-1]]
    p = torch.softmax(H[-1], dim=-1)
    s = y.sum(-1, keepdim=True)
    D: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
    D[-1] = (p * s - y) / M
    for i in range(L - 1, 0, -1):
        D[i - 1] = (D[i] @ layers[i][0]) * mask[i - 1]
    return A, mask, p, s, D


def _reverse(layers, aD: list, aA: list, mask: list, p: torch.Tensor, s: torch.Tensor) -> tuple:
    """The adjoints of x and y, given those of each layer's D[l] (``aD``) and input A[l] (``aA``) from
    the objective: back through D[l-1] = (D[l] W_l) * mask[l-1], D[L-1] = (softmax(H) s - y) / M and the
    forward pass. Single (M, .) or batched (B, M, .) tensors; ``aD`` and ``aA`` are consumed."""
    L, M = len(layers), p.shape[-2]
    for i in range(1, L):
        aD[i] = aD[i] + (aD[i - 1] * mask[i - 1]) @ layers[i][0].T
    u = aD[-1]
    up = (u * p).sum(-1, keepdim=True)
    dy = (up - u) / M
    ap = u * (s / M)
    ah = p * (ap - (ap * p).sum(-1, keepdim=True))
    for i in range(L - 1, -1, -1):
        aA[i] = aA[i] + ah @ layers[i][0]
        if i > 0:
            ah = aA[i] * mask[i - 1]
    return aA[0], dy


class MLPCosineMatch:
    """f(z) = 1 - |cos(g(x, y), tau)| + lambda (||x|| + ||y||) and df/dz for a Linear/ReLU chain
    (with ``per_tensor``, |cos| is sqrt(E) of :func:`.synth.projection_cosine`: one (g.tau, g.g) per tensor).

    Same interface as :class:`.synth.CosineMatch` (``split``, ``tau_norm``, call -> (f, |cos|, df/dz)).
    """

    def __init__(self, lins: list[nn.Linear], model: nn.Module, target: torch.Tensor,
                 x_shape: tuple[int, ...], y_shape: tuple[int, ...], lambd: float = 0.0, per_tensor: bool = False):
        self.lambd, self.per_tensor = lambd, per_tensor
        self.tau = target.detach()
        self.tau_norm = float(self.tau.norm())
        self.x_shape, self.y_shape = x_shape, y_shape
        self.nx = math.prod(x_shape)
        self.m = x_shape[0]
        # (W, b, T, t) per layer; tau is laid out like model.parameters() (W1, b1, W2, b2, ...)
        views, off = {}, 0
        for p in model.parameters():
            views[p] = self.tau[off:off + p.numel()].view_as(p)
            off += p.numel()
        self.layers = [(lin.weight.detach(), None if lin.bias is None else lin.bias.detach(),
                        views[lin.weight], None if lin.bias is None else views[lin.bias]) for lin in lins]
        # objectives with equal keys can be evaluated together (MLPCosineMatchBatch): same weights in memory
        self.key = (tuple((W.data_ptr(), tuple(W.shape), b is None) for W, b, _, _ in self.layers),
                    x_shape, y_shape, lambd, per_tensor, self.tau.dtype, self.tau.device)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[:self.nx].view(self.x_shape), z[self.nx:].view(self.y_shape)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        M = self.m
        x = z[:self.nx].view(M, -1)
        y = z[self.nx:].view(self.y_shape)
        A, mask, p, s, D = _forward(self.layers, x, y, _addmm)
        # q = g_l.tau_l and n = g_l.g_l per tensor l, in parameter order (W_1, b_1, W_2, ...), without forming g
        DT, Ka, Kd, Ds, q, nn_ = [], [], [], [], [], []
        for i, (_, b, T, t) in enumerate(self.layers):
            DT.append(D[i] @ T)
            Ka.append(A[i] @ A[i].T)
            Kd.append(D[i] @ D[i].T)
            q.append((DT[i] * A[i]).sum())
            nn_.append((Ka[i] * Kd[i]).sum())
            Ds.append(None if b is None else D[i].sum(0))
            if b is not None:
                q.append(Ds[i] @ t)
                nn_.append(Ds[i] @ Ds[i])
        if self.per_tensor:
            sE, cq, cn = projection_cosine(torch.stack(q), torch.stack(nn_), z.new_tensor(self.tau_norm ** 2))
            cos, cq, cn = float(sE), cq.tolist(), cn.tolist()
            coef, j = [], 0
            for _, b, _, _ in self.layers:  # (df/dq, df/dn) of the weight, then of the bias
                coef.append((cq[j], cn[j], *((cq[j + 1], cn[j + 1]) if b is not None else (0.0, 0.0))))
                j += 1 if b is None else 2
        else:
            gt, gg = _total(q, z.new_zeros(())), _total(nn_, z.new_zeros(()))  # g.tau, g.g
            gt_, n = float(gt), math.sqrt(max(float(gg), 0.0))
            D_ = n * self.tau_norm + 1e-12
            cos = gt_ / D_
            sgn = math.copysign(1.0, cos) if cos != 0 else 0.0
            c_gt = -sgn / D_                                                  # df/d(g.tau)
            c_gg = sgn * gt_ * self.tau_norm / (2 * D_ * D_ * n) if n > 0 else 0.0  # df/d(g.g)
            coef = [(c_gt, c_gg, c_gt, c_gg)] * len(self.layers)
        # reverse pass: adjoints of D[i] and A[i] from g.tau and g.g
        aD, aA = [], []
        for i, (_, b, T, t) in enumerate(self.layers):
            cwq, cwn, cbq, cbn = coef[i]
            ad = (A[i] @ T.T).mul_(cwq).add_(Ka[i] @ D[i], alpha=2 * cwn)
            if b is not None:
                ad.add_(t * cbq + Ds[i] * (2 * cbn))
            aD.append(ad)
            aA.append(DT[i].mul(cwq).add_(Kd[i] @ A[i], alpha=2 * cwn))
        dx, dy = _reverse(self.layers, aD, aA, mask, p, s)
        obj = 1.0 - abs(cos)
        if self.lambd:
            xn, yn = float(x.norm()), float(y.norm())
            obj += self.lambd * (xn + yn)
            if xn > 0:
                dx = dx.add(x, alpha=self.lambd / xn)
            if yn > 0:
                dy = dy.add(y, alpha=self.lambd / yn)
        return obj, abs(cos), torch.cat([dx.reshape(-1), dy.reshape(-1)])


class MLPCosineMatchBatch:
    """Several :class:`MLPCosineMatch` objectives of one model (same layers, shapes and lambda; each
    its own target) evaluated in one pass: the same arithmetic with a leading batch dimension, so
    about a hundred operations serve all of them. Agrees with evaluating each alone to float
    rounding (the batched products sum in another order; tested)."""

    def __init__(self, fs: list[MLPCosineMatch]):
        f0 = fs[0]
        if any(f.key != f0.key for f in fs):
            raise ValueError("MLPCosineMatchBatch: objectives of different models, shapes or lambdas")
        self.fs, self.n = fs, len(fs)
        self.m, self.nx, self.lambd, self.y_shape = f0.m, f0.nx, f0.lambd, f0.y_shape
        self.per_tensor = f0.per_tensor
        self.layers = []
        for i, (W, b, _, _) in enumerate(f0.layers):
            T = torch.stack([f.layers[i][2] for f in fs])                    # (B, out, in)
            t = None if b is None else torch.stack([f.layers[i][3] for f in fs]).unsqueeze(1)  # (B, 1, out)
            self.layers.append((W, b, T, t))
        self.tau_norm = torch.tensor([f.tau_norm for f in fs], dtype=T.dtype, device=T.device)

    @torch.no_grad()
    def __call__(self, zs: list[torch.Tensor]) -> list[tuple[float, float, torch.Tensor]]:
        """(f(z), |cos|, df/dz) for each objective at its point, in order."""
        B, M = self.n, self.m
        Z = torch.stack(zs)
        x = Z[:, :self.nx].reshape(B, M, -1)
        y = Z[:, self.nx:].reshape(B, *self.y_shape)
        A, mask, p, s, D = _forward(self.layers, x, y, _matmul_add)
        DT, Ka, Kd, Ds, q, nn_ = [], [], [], [], [], []
        for i, (_, b, T, t) in enumerate(self.layers):
            DT.append(torch.bmm(D[i], T))
            Ka.append(A[i] @ A[i].transpose(1, 2))
            Kd.append(D[i] @ D[i].transpose(1, 2))
            q.append((DT[i] * A[i]).sum((1, 2)))
            nn_.append((Ka[i] * Kd[i]).sum((1, 2)))
            Ds.append(None if b is None else D[i].sum(1, keepdim=True))      # (B, 1, out)
            if b is not None:
                q.append((Ds[i] * t).sum((1, 2)))
                nn_.append((Ds[i] * Ds[i]).sum((1, 2)))
        if self.per_tensor:
            cos, cq, cn = projection_cosine(torch.stack(q, 1), torch.stack(nn_, 1), self.tau_norm ** 2)
            cq, cn = cq.view(B, -1, 1, 1), cn.view(B, -1, 1, 1)
            coef, j = [], 0
            for _, b, _, _ in self.layers:
                coef.append((cq[:, j], cn[:, j], *((cq[:, j + 1], cn[:, j + 1]) if b is not None else (0.0, 0.0))))
                j += 1 if b is None else 2
        else:
            gt, gg = _total(q, Z.new_zeros(B)), _total(nn_, Z.new_zeros(B))
            n = gg.clamp_min(0).sqrt()
            Dn = n * self.tau_norm + 1e-12
            cos = gt / Dn
            sgn = torch.sign(cos)
            c_gt = (-sgn / Dn).view(B, 1, 1)
            c_gg = torch.where(n > 0, sgn * gt * self.tau_norm / (2 * Dn * Dn * n.clamp_min(1e-300)),
                               torch.zeros_like(n)).view(B, 1, 1)
            coef = [(c_gt, c_gg, c_gt, c_gg)] * len(self.layers)
        aD, aA = [], []
        for i, (_, b, T, t) in enumerate(self.layers):
            cwq, cwn, cbq, cbn = coef[i]
            ad = torch.bmm(A[i], T.transpose(1, 2)) * cwq + (Ka[i] @ D[i]) * (2 * cwn)
            if b is not None:
                ad = ad + (t * cbq + Ds[i] * (2 * cbn))
            aD.append(ad)
            aA.append(DT[i] * cwq + (Kd[i] @ A[i]) * (2 * cwn))
        dx, dy = _reverse(self.layers, aD, aA, mask, p, s)
        return batch_results(cos, x.reshape(B, -1), y.reshape(B, -1), dx.reshape(B, -1), dy.reshape(B, -1),
                             self.lambd)
