"""Shared pieces of the feature-synthesis methods (3SFC, E-3SFC, FedSynth).

The decoder "model is the decompressor": g(x, y) = grad_w L(w_t; x, y) with the
soft-label cross-entropy L = mean_m -sum_c y_mc log softmax(f_w(x_m))_c
(docs/design.md §1.1; y unconstrained). The model is used as it is (eval mode, at w_t)
and never modified: gradients are taken with ``torch.autograd.grad``, so no
``.grad`` field of a parameter is touched.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def soft_ce(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L(w; x, y) = mean_m -sum_c y_mc log_softmax(f_w(x_m))_c ; x (M, *in), y (M, C)."""
    return -(y * F.log_softmax(model(x), dim=1)).sum(1).mean()


_CUDNN_LOCK = threading.Lock()
_CUDNN_HELD: list = [0, None]  # how many are inside deterministic_cudnn, and the flags they found


@contextmanager
def deterministic_cudnn(on: bool = True) -> Iterator[None]:
    """While inside (and ``on``): cuDNN picks only deterministic algorithms and does not benchmark.
    Decoding must give the same bits in every replica; cuDNN's default weight-gradient kernels
    may add in a different order on each call. No effect on a CPU."""
    if not on:
        yield
        return
    b = torch.backends.cudnn
    with _CUDNN_LOCK:  # threads may decode at once: the first in sets the flags, the last out restores them
        if _CUDNN_HELD[0] == 0:
            _CUDNN_HELD[1] = (b.deterministic, b.benchmark)
            b.deterministic, b.benchmark = True, False
        _CUDNN_HELD[0] += 1
    try:
        yield
    finally:
        with _CUDNN_LOCK:
            _CUDNN_HELD[0] -= 1
            if _CUDNN_HELD[0] == 0:
                b.deterministic, b.benchmark = _CUDNN_HELD[1]


def synth_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """g(x, y) as one flat (P,) vector. Without ``create_graph`` (decoding) on a GPU it runs under
    :func:`deterministic_cudnn`, so that the server and every replica decode a payload to the same bits."""
    params = [p for p in model.parameters()]
    with torch.enable_grad(), deterministic_cudnn(x.is_cuda and not create_graph):
        if not create_graph:
            x, y = x.detach(), y.detach()
        grads = torch.autograd.grad(soft_ce(model, x, y), params, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def upsample(z: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """The synthetic inputs x from their search variable z (``--feature-res``, docs/design.md §1.1):
    z itself when ``size`` is None (the published parametrization), else z (M, C, r, r') bilinearly
    upsampled to the model's (H, W) = ``size``, ``align_corners=False`` (each of z's pixels covers an
    equal share of the image, as image resizing does; no antialiasing, which only acts when shrinking).
    Linear in z, deterministic: the encoder and every decoder compute the same x from the same z."""
    if size is None:
        return z
    return F.interpolate(z, size=tuple(size), mode="bilinear", align_corners=False)


def ls_scale(g: torch.Tensor, target: torch.Tensor) -> float:
    """alpha = <g, tau> / ||g||^2 (least squares), 0 when the norm is 0 or the result is not finite."""
    gg = float(g.double().dot(g.double()))
    if gg == 0.0:
        return 0.0
    a = float(g.double().dot(target.double())) / gg
    return a if torch.isfinite(torch.tensor(a)) else 0.0


FLAT = 1e-12  # a block with ||g_l||^2 below FLAT max_l ||g_l||^2 has no gradient: its scale is 0


def block_scales(g: torch.Tensor, target: torch.Tensor, sizes: list[int]) -> list[float]:
    """The least-squares scale of each block of g (sizes: the parameter tensors), as in :func:`projection_cosine`:
    a_l = <g_l, tau_l> / ||g_l||^2, 0 for a block without gradient."""
    gb, tb = g.double().split(sizes), target.double().split(sizes)
    n = [float(gl @ gl) for gl in gb]
    top = max(n, default=0.0)
    return [ls_scale(gl, tl) if nl > FLAT * top else 0.0 for gl, tl, nl in zip(gb, tb, n)]


def projection_cosine(q: torch.Tensor, n: torch.Tensor, tau_sq: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The cosine to tau of tau's projection onto the span of the blocks g_l (per-tensor scales):
    with q_l = <g_l, tau_l> and n_l = ||g_l||^2 per parameter tensor l (last dimension), the decoded
    update sum_l a_l g_l, a_l = q_l / n_l, is that projection and captures E = sum_l q_l^2 /
    (n_l ||tau||^2) of ||tau||^2; its cosine to tau is sqrt(E) (|cos(g, tau)| when there is one
    block). Returns sqrt(E) and the derivatives of -sqrt(E) by each q_l and n_l (0 where E = 0). A
    block with no gradient to speak of (n_l at most ``FLAT`` times the largest n_l, e.g. a bias that
    a normalisation cancels, whose "gradient" is rounding noise) gets scale 0 and counts for nothing."""
    pos = n > FLAT * n.amax(-1, keepdim=True).clamp_min(0)
    r = torch.where(pos, q / torch.where(pos, n, torch.ones_like(n)), torch.zeros_like(q))  # a_l
    s = ((r * q).sum(-1) / tau_sq).clamp_min(0).sqrt()
    inv = torch.where(s > 0, 1 / (s * tau_sq).clamp_min(1e-300), torch.zeros_like(s)).unsqueeze(-1)
    return s, -r * inv, 0.5 * r * r * inv


class CosineMatch:
    """The 3SFC objective on a flat z = (x, y):  f(z) = 1 - |cos(g(x, y), tau)| + lambda (||x|| + ||y||);
    with ``per_tensor`` (one scale per parameter tensor) |cos| becomes sqrt(E) of :func:`projection_cosine`.

    Its gradient is taken in two passes rather than by differentiating f end to end:
    g = grad_w L(w; x, y) with a graph, then the scalars g.tau and g.g without one, then
    v = df/dg = -sign(cos) (tau / D - (g.tau) |tau| g / (D^2 |g|)), D = |g| |tau| + 1e-12,
    and one backward pass of g with ``grad_outputs = v`` gives df/dz = v^T dg/dz. Same
    value and gradient as autograd through cos (the chain rule, written out; tested),
    without the P-sized products that autograd would record and replay for the two dot
    products and the norm.

    With ``size`` (``--feature-res``) the x-part of z has the low-resolution shape ``x_shape`` and the
    model sees x = :func:`upsample` (z_x, size); autograd carries df/dx back through the upsampling,
    and the regulariser acts on z.
    """

    def __init__(self, model: nn.Module, target: torch.Tensor, x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                 lambd: float = 0.0, per_tensor: bool = False, size: tuple[int, int] | None = None):
        self.model, self.lambd, self.per_tensor = model, lambd, per_tensor
        self.size = None if size is None else tuple(size)  # --feature-res: x = upsample(z-part, size)
        self.params = [p for p in model.parameters()]
        self.sizes = [p.numel() for p in self.params]
        self.tau = target.detach()
        self.tau_norm = float(self.tau.norm())
        self.x_shape, self.y_shape = x_shape, y_shape
        self.nx = math.prod(x_shape)

        # objectives with equal keys can be evaluated together (CosineMatchBatch): one model object
        self.key = (id(model), x_shape, y_shape, lambd, per_tensor, self.tau.dtype, self.tau.device, self.size)
        self.tau_blocks = self.tau.split(self.sizes)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[:self.nx].view(self.x_shape), z[self.nx:].view(self.y_shape)

    def __call__(self, z: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        """(f(z), |cos|, df/dz)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            x, y = self.split(z)
            gs = torch.autograd.grad(soft_ce(self.model, upsample(x, self.size), y), self.params, create_graph=True)
            with torch.no_grad():
                if self.per_tensor:
                    cos, vs = self._per_tensor(gs)
                else:
                    cos, vs = self._one_scale(gs)
            obj = 1.0 - abs(cos)
            outs, grads = list(gs), vs
            if self.lambd:
                reg = self.lambd * (x.norm() + y.norm())
                obj += float(reg.detach())
                outs, grads = [*outs, reg], [*grads, torch.ones_like(reg)]
            (dz,) = torch.autograd.grad(outs, [z], grad_outputs=grads)
        return obj, abs(cos), dz

    def _per_tensor(self, gs) -> tuple[float, list[torch.Tensor]]:
        """sqrt(E) of :func:`projection_cosine` and df/dg_l = c_q,l tau_l + 2 c_n,l g_l per tensor."""
        q = torch.stack([(gi.reshape(-1) * ti).sum() for gi, ti in zip(gs, self.tau_blocks)])
        n = torch.stack([(gi * gi).sum() for gi in gs])
        s, cq, cn = projection_cosine(q, n, q.new_tensor(self.tau_norm ** 2))
        vs = [ti.view_as(gi) * a + gi * (2 * b) for gi, ti, a, b in zip(gs, self.tau_blocks, cq, cn)]
        return float(s), vs

    def _one_scale(self, gs) -> tuple[float, list[torch.Tensor]]:
        """cos(g, tau) and df/dg for one scale (the published objective)."""
        g = torch.cat([gi.reshape(-1) for gi in gs])
        gt, n = float(g @ self.tau), math.sqrt(float(g @ g))
        D = n * self.tau_norm + 1e-12
        cos = gt / D
        sgn = -math.copysign(1.0, cos) if cos != 0 else 0.0
        c2 = -sgn * gt * self.tau_norm / (D * D * n) if n > 0 else 0.0
        v = self.tau.mul(sgn / D).add_(g, alpha=c2)
        return cos, [vi.view_as(p) for vi, p in zip(v.split(self.sizes), self.params)]


def batch_results(cos: torch.Tensor, x: torch.Tensor, y: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor,
                  lambd: float) -> list[tuple[float, float, torch.Tensor]]:
    """The end of a batched objective: from cos (B,), the points x (B, nx), y (B, ny) and the
    gradients of -|cos| with respect to them, add lambda (||x|| + ||y||) and return
    (f, |cos|, df/dz) per objective (the norm's gradient at 0 taken as 0)."""
    obj = 1.0 - cos.abs()
    if lambd:
        xn, yn = x.norm(dim=1, keepdim=True), y.norm(dim=1, keepdim=True)
        obj = obj + lambd * (xn + yn).squeeze(1)
        dx = dx + torch.where(xn > 0, x * (lambd / xn.clamp_min(1e-300)), torch.zeros_like(x))
        dy = dy + torch.where(yn > 0, y * (lambd / yn.clamp_min(1e-300)), torch.zeros_like(y))
    grads = torch.cat([dx, dy], 1)
    return [(o, c, grads[k]) for k, (o, c) in enumerate(zip(obj.tolist(), cos.abs().tolist()))]


class CosineMatchBatch:
    """Several :class:`CosineMatch` objectives of one model (same shapes and lambda, each its own
    target) evaluated together: g for every point at once with ``torch.func`` (vmap over the
    objectives of grad through ``functional_call``), then one vector-Jacobian product with the
    stacked df/dg gives every df/dz. Same value and gradient as each alone, to float rounding
    (tested). Large models go in chunks of at most ``max_floats`` gradient numbers (B x P), so
    the stacked gradients stay bounded.

    With ``graphs`` and the points on a GPU (one scale, one chunk), the evaluation is captured once
    as a CUDA graph and replayed for every later point: the same kernels without their launch cost,
    which dominates these one-image double backprops (benchmarks/RESULTS.md: 5.6x to 6.8x an
    evaluation, a ConvNet 3SFC round from 5.6x to 1.8x a FedAvg round on an H200). The batch lives
    while the same objectives search together, so one capture serves all their evaluations. Every
    tensor the graph reads must live as long as the graph (it reads their addresses). ``graphs`` is
    off by default: it is turned on only where tests/test_cuda_graphs.py (graph against eager path)
    passes on the GPU in use."""

    max_floats = 2 ** 26        # gradient numbers per chunk (B x P) on a CPU; 4x that on a GPU
    graphs = False              # replay a captured CUDA graph where the points are on a GPU

    def __init__(self, fs: list[CosineMatch]):
        f0 = fs[0]
        if any(f.key != f0.key for f in fs):
            raise ValueError("CosineMatchBatch: objectives of different models, shapes or lambdas")
        self.fs, self.model, self.lambd = fs, f0.model, f0.lambd
        self.nx, self.x_shape, self.y_shape, self.size = f0.nx, f0.x_shape, f0.y_shape, f0.size
        self.params = {n: p.detach() for n, p in f0.model.named_parameters()}
        room = self.max_floats * (4 if f0.tau.is_cuda else 1)
        self.chunk = max(1, room // max(1, sum(f0.sizes)))

    def _grad(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def loss(params):
            return soft_ce(lambda inp: torch.func.functional_call(self.model, params, (upsample(inp, self.size),)),
                           x, y)
        return torch.cat([g.reshape(-1) for g in torch.func.grad(loss)(self.params).values()])

    def __call__(self, zs: list[torch.Tensor]) -> list[tuple[float, float, torch.Tensor]]:
        """(f(z), |cos|, df/dz) for each objective at its point, in order."""
        if self.graphs and zs[0].is_cuda and not self.fs[0].per_tensor and len(zs) <= self.chunk:
            return self._replay(zs)
        out = []
        for i in range(0, len(zs), self.chunk):
            out += self._call(self.fs[i:i + self.chunk], zs[i:i + self.chunk])
        return out

    @torch.no_grad()
    def _call(self, fs: list[CosineMatch], zs: list[torch.Tensor]) -> list[tuple[float, float, torch.Tensor]]:
        Z = torch.stack(zs)
        cos, dx, dy = self._core(Z, fs)
        return batch_results(cos, Z[:, :self.nx], Z[:, self.nx:], dx, dy, self.lambd)

    def _core(self, Z: torch.Tensor, fs: list[CosineMatch], tn: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cos and the gradients of -|cos| at the stacked points of ``fs``; with ``tn`` (the targets'
        norms on the device, one scale) it needs no host sync, so that it can be captured."""
        B = Z.shape[0]
        X, Y = Z[:, :self.nx].reshape(B, *self.x_shape), Z[:, self.nx:].reshape(B, *self.y_shape)
        with torch.enable_grad():
            G, vjp = torch.func.vjp(torch.func.vmap(self._grad), X, Y)
        cos, V = self._per_tensor(fs, G) if fs[0].per_tensor else self._one_scale(fs, G, tn)
        dX, dY = vjp(V)
        return cos, dX.reshape(B, -1), dY.reshape(B, -1)

    @torch.no_grad()
    def _replay(self, zs: list[torch.Tensor]) -> list[tuple[float, float, torch.Tensor]]:
        if getattr(self, "_graph", None) is None:
            static = torch.stack(zs)
            tn = torch.tensor([f.tau_norm for f in self.fs], dtype=static.dtype, device=static.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm up outside the capture (torch.func, cuDNN choices)
                for _ in range(2):
                    self._core(static, self.fs, tn)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._core(static, self.fs, tn)
            self._graph = (graph, static, out, tn)  # the graph reads tn's memory: it must outlive it
        graph, static, (cos, dx, dy), _ = self._graph
        static.copy_(torch.stack(zs))
        graph.replay()
        return batch_results(cos.clone(), static[:, :self.nx].clone(), static[:, self.nx:].clone(), dx.clone(),
                             dy.clone(), self.lambd)

    def _per_tensor(self, fs: list[CosineMatch], G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(E) per objective (:func:`projection_cosine`) and df/dg, block by block."""
        sizes = fs[0].sizes
        Gb = G.split(sizes, dim=1)
        q = torch.stack([torch.stack([(gb[k] * tb).sum() for gb, tb in zip(Gb, f.tau_blocks)])
                         for k, f in enumerate(fs)])                                   # (B, L)
        n = torch.stack([(gb * gb).sum(1) for gb in Gb], 1)                            # (B, L)
        tsq = torch.tensor([f.tau_norm ** 2 for f in fs], dtype=G.dtype, device=G.device)
        s, cq, cn = projection_cosine(q, n, tsq)
        V = torch.cat([gb * (2 * cn[:, j:j + 1]) for j, gb in enumerate(Gb)], 1)
        counts = torch.tensor(sizes, device=G.device)
        for k, f in enumerate(fs):  # V[k] += (c_q,l spread over block l) * tau_k
            V[k].addcmul_(f.tau, torch.repeat_interleave(cq[k], counts))
        return s, V

    def _one_scale(self, fs: list[CosineMatch], G: torch.Tensor, tn: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos(g, tau) per objective and df/dg for one scale (the published objective)."""
        gt = torch.stack([g @ f.tau for g, f in zip(G, fs)])
        n = (G * G).sum(1).sqrt()
        if tn is None:
            tn = torch.tensor([f.tau_norm for f in fs], dtype=G.dtype, device=G.device)
        D = n * tn + 1e-12
        cos = gt / D
        sgn = -torch.sign(cos)
        V = G * torch.where(n > 0, -sgn * gt * tn / (D * D * n.clamp_min(1e-300)), torch.zeros_like(n))[:, None]
        a = sgn / D
        for k, f in enumerate(fs):  # V[k] += a[k] tau_k, without stacking the targets or a device sync
            V[k].addcmul_(f.tau, a[k])
        return cos, V
