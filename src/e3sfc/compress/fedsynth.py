"""``fedsynth``: synthetic data whose unrolled SGD steps reproduce the update
(Hu, Goetz, Rabbat et al., "FedSynth", 2022), with error feedback.

Encoder: learn x (M, *input_shape), soft labels y (M, C) and a step size eta so
that ``unroll`` plain-SGD steps from w_t on (x, y) land near w_t + tau:
    min ||U(x, y, eta) - tau||^2 / ||tau||^2,
    U = w_k - w_t, w_{j+1} = w_j - eta * grad_w L(w_j; x, y)
through a differentiable unroll (torch.func.functional_call, create_graph),
optimised with Adam for ``synth_iters`` iterations, keeping the best iterate.
Decoder: the same unroll (first order) from w_t.

Wire format: float32 x (M, *input_shape), y (M, C), eta ().
Size: as 3SFC: 4 (M d + M C + 1) bytes of data plus the same header.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import functional_call

from ..wire import FieldSpec, Payload
from . import register
from .base import SAMPLES, Compressor, Context, Option
from .synth import soft_ce

# the options (base.Option; each a run setting, --synth-iters, unless setting=False)
OPTIONS = (
    SAMPLES,  # synthetic samples M per payload (base.py: 3SFC's too)
    Option("unroll", int, 2, "unrolled SGD steps", low=1),
    Option("synth_iters", int, 50, "Adam iterations", low=0),
    Option("synth_lr", float, 0.05, "Adam learning rate", low=0, low_open=True),
    Option("init_eta", float, 0.01, "the learned step size's start", setting=False),
)


@register
class FedSynth(Compressor):
    name = "fedsynth"
    decodes_through_model = True
    method_id = 6
    biased = True

    sized_by_samples = True
    options = OPTIONS
    samples: int
    unroll: int
    synth_iters: int
    synth_lr: float
    init_eta: float

    def fields(self, ctx: Context) -> list[FieldSpec]:
        f4 = np.dtype("<f4")
        m = ctx.samples or self.samples
        return [FieldSpec(f4, (m, *ctx.input_shape)), FieldSpec(f4, (m, ctx.num_classes)), FieldSpec(f4, ())]

    def unrolled(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eta: torch.Tensor,
               create_graph: bool) -> torch.Tensor:
        """U(x, y, eta) = w_k - w_t (P,)."""
        names = [n for n, _ in ctx.model.named_parameters()]
        shapes = [p.shape for _, p in ctx.model.named_parameters()]
        flat = ctx.weights.detach()
        params, off = [], 0
        for s in shapes:
            n = math.prod(s)
            params.append(flat[off:off + n].view(s).clone().requires_grad_(True))
            off += n
        start = [p.detach() for p in params]
        with torch.enable_grad():
            for _ in range(self.unroll):
                loss = soft_ce(lambda inp: functional_call(ctx.model, dict(zip(names, params)), (inp,)), x, y)
                grads = torch.autograd.grad(loss, params, create_graph=create_graph)
                params = [p - eta * g for p, g in zip(params, grads)]
        return torch.cat([(p - s).reshape(-1) for p, s in zip(params, start)])

    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        g = ctx.generator
        dev = ctx.device
        m = ctx.samples or self.samples
        x = torch.randn((m, *ctx.input_shape), generator=g).to(dev, ctx.weights.dtype).requires_grad_(True)
        y = torch.randn((m, ctx.num_classes), generator=g).to(dev, ctx.weights.dtype).requires_grad_(True)
        eta = torch.tensor(self.init_eta, device=dev, dtype=ctx.weights.dtype, requires_grad=True)
        tau = target.detach()
        tn2 = float(tau.dot(tau)) or 1.0
        best = (math.inf, x.detach().clone(), y.detach().clone(), eta.detach().clone())
        opt = torch.optim.Adam([x, y, eta], lr=self.synth_lr)
        for _ in range(self.synth_iters):
            u = self.unrolled(ctx, x, y, eta, create_graph=True)
            loss = (u - tau).pow(2).sum() / tn2
            val = float(loss.detach())
            if val < best[0]:
                best = (val, x.detach().clone(), y.detach().clone(), eta.detach().clone())
            gx, gy, ge = torch.autograd.grad(loss, [x, y, eta])
            x.grad, y.grad, eta.grad = gx, gy, ge
            opt.step()
        _, bx, by, beta = best
        decoded = self.unrolled(ctx, bx, by, beta, create_graph=False).detach()
        cos = float(torch.nn.functional.cosine_similarity(decoded, tau, dim=0))
        eta = beta.cpu().numpy().astype(np.float32)
        return Payload.of(self.method_id, bx.float(), by.float(), eta), {"cosine": cos}

    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        dt = ctx.weights.dtype
        x, y = payload.tensor(0, ctx.device).to(dt), payload.tensor(1, ctx.device).to(dt)
        eta = payload.tensor(2, ctx.device).to(dt)
        return self.unrolled(ctx, x, y, eta, create_graph=False).detach()
