"""``3sfc``: single-shot compression by synthesizing features (Zhou et al., ICCV 2023;
docs/design.md §1.1).

Encoder: find x (M, *input_shape), y (M, C) (with ``feature_res``: z, below) minimising
    1 - |cos(g(x, y), tau)| + lambda (||x||_2 + ||y||_2)            (paper Eq. 6)
with g(x, y) = grad_w L(w_t; x, y) (double backprop), by L-BFGS (lr 1,
``max_iter`` per step, history 100 by default (``--history``), no line search) for ``steps`` steps,
keeping the best iterate seen (lowest objective; NaN never chosen).
Speed: the algorithm as above, made cheap in three ways (timings in benchmarks/RESULTS.md):
- the L-BFGS is torch's, rule for rule, with the two-loop recursion in matrix
  form (:mod:`.lbfgs`): a constant number of tensor operations per iteration;
- the objective's gradient is one backward pass of g with grad_outputs
  df/dg (:class:`.synth.CosineMatch`); for Linear/ReLU chains (the MLP) the
  objective in closed form without forming g (:mod:`.synth_mlp`);
- early stop (``patience``, default 20): once the search has locked on
  (best |cos| >= ``lock_cos`` = 0.05), it ends after ``patience`` objective
  evaluations in a row that improved the best objective by less than ``tol``;
  before lock-on it runs on, since some searches sit near cos = 0 for a while
  before they climb. ``patience = 0`` runs all evaluations (the reference
  behaviour). 20 rather than 10 because late-training targets need the longer
  wait to reach about the full search's cosine (docs/findings.md, "Defaults").
Then
alpha = <g*, tau> / ||g*||^2 and the residual is tau - alpha g*, so that
||e||^2 = (1 - cos^2) ||tau||^2.

Decoder: alpha * g(x, y) at w_t.

Wire format (``feature_bits`` 32, the default and the published algorithm): three float32
fields x (M, *input_shape), y (M, C), alpha (). Size: 4 (M d + M C + 1) bytes of data,
d = prod(input_shape), plus a header of 5 + (2 + 4 (1 + len(input_shape))) + (2 + 8) + 2 bytes.
For text models input_shape is the model's synthetic sample (``textbag``: (V,), weights over the
vocabulary; ``transformer``: (4, V), soft tokens; :mod:`e3sfc.models.text`).
MLP on 28x28, C = 10, M = 1: 3,180 + 35 = 3,215 bytes (dense: 796,851).

Low-precision features (ours, ``feature_bits`` 16 or 8): precision traded for
samples. The search runs in full precision; then x and y are rounded to the wire's precision
(float16 saturates at +-65504 rather than overflow)
and alpha, the cosine and the client's residual are computed from the rounded features, so
the decoder sees exactly what the encoder used and the EF identity stays exact.
- 16: x and y as float16 (same fields and shapes, dtype float16): 2 (M d + M C) + 4 bytes
  of data, the same header. M = 2 costs 3,215 bytes on the MLP, what M = 1 costs in float32.
- 8: x and y as symmetric 8-bit integers with one scale each (q = round(v / s), s = max|v| / 127,
  sent as q + 128 in uint8), x flattened: fields xq (M d,) uint8, yq (M, C) uint8 and
  s (3,) float32 = (s_x, s_y, alpha). Size: M d + M C + 12 bytes of data plus a header of
  5 + 6 + 10 + 6 = 27 bytes. M = 4 costs 3,136 + 40 + 12 + 27 = 3,215 bytes on the MLP.

- 4: x and y as symmetric 4-bit integers with one scale each (q = round(v / s), s = max|v| / 7, sent
  as q + 8 in 1..15), two a byte, row by row (entry 2j of a sample in the low nibble of byte j; a row
  of odd length ends in a 0 nibble): fields xq (M, ceil(d / 2)) uint8, yq (M, ceil(C / 2)) uint8 and
  s (3,) float32. Size: M ceil(d / 2) + M ceil(C / 2) + 12 bytes of data plus a header of
  5 + 10 + 10 + 6 = 31 bytes. MLP, M = 4: 1,631 bytes.

Low-resolution features (ours, ``feature_res`` R; default 0 = the input size, the published
parametrization): for an image model with inputs (C, H, W) the search variable and the wire's
features are z (M, C, R, R') with the smaller side R and the other in proportion (R' = round(R W / H)
for H <= W), and the model sees x = bilinear upsample of z to (H, W)
(``interpolate(..., align_corners=False)``, :func:`.synth.upsample`); the decoder computes
alpha g(upsample(z), y) at w_t. R equal to the smaller side is the published algorithm bit for bit
(no upsampling). Everything above holds with d = C R R' in place of prod(input_shape): the
field shapes, sizes and rounding (the rounding acts on z). The search differentiates through the
upsampling: the autograd objective (:class:`.synth.CosineMatch`, which batches with vmap) directly; the
MLP's closed form on x, its gradient carried back to z by the upsampling's adjoint
(:class:`.search.Upsampled`); the regulariser acts on z. 3x32x32 CNN, M = 4, 8 bits: 12,367 bytes at R = 32,
3,151 at 16, 847 at 8. Text models take no R (their samples are not images).

Payload budget (ours, ``payload_bytes`` B; default 0 = off): the method picks R, M and the bits for
the model's input when it is built (:meth:`ThreeSFC.fit`, from ``check_context``) and logs one line. Rule:
8-bit features; the input's own resolution if M >= 4 samples fit in B there, else the largest R of 16, 8, 4
(below the input's smaller side) at which M >= 8 fit, else the R with the most samples; then the largest
M (at most 64) that fits. Informed by the rate-distortion probe (issue 31): on the MLP, full resolution
at M = 4, 8-bit is the best measured at 3.2 KB; on a 3x32x32 CNN, 8x8 at M = 16 captured cos^2 0.805
against 0.714 at 16x16, M = 4 and 0.421 at full resolution, M = 1, at about the same bytes. At B = 3,215
(M = 1 float32 at 28x28): MLP 1x28x28 full, M = 4 (3,215 B); 3x32x32 R = 8, M = 15 (3,069 B); 1x8x8
full, M = 42 (3,147 B). It refuses explicit --samples, --feature-bits or --feature-res and a budget
schedule (which sizes M each round), and a B below the smallest payload (M = 1 at the smallest R).

Per-tensor scales (ours, ``scales = "tensor"``; default ``"one"``, the published algorithm): one
least-squares scale a_l = <g_l, tau_l> / ||g_l||^2 per parameter tensor l instead of one alpha, so
the decoded update sum_l a_l g_l is the projection of tau onto the span of the blocks g_l. The
search maximises the fraction of ||tau||^2 that projection captures, E = sum_l <g_l, tau_l>^2 /
(||g_l||^2 ||tau||^2) (objective 1 - sqrt(E), which is 1 - |cos| for one block;
:func:`.synth.projection_cosine`), and ||e||^2 = ||tau||^2 (1 - E) with the scales as sent. A block without
gradient (||g_l||^2 below 1e-12 of the largest, e.g. a bias that a normalisation layer cancels)
gets scale 0. Wire: the scale field becomes (L,) float32 (L parameter tensors; 8-bit: s is
(2 + L,) = (s_x, s_y, a_1..a_L)), 4 (L - 1) bytes more data and, for float features, 4 more header
bytes. MLP (L = 6), M = 4 at 8 bits: 3,235 bytes.

Start from data (ours, ``feature_init = "data"``; image models): a client's search starts from M of its
own training samples, area-averaged to the features' resolution, with one-hot labels, instead of noise;
the server's downlink search has no data and starts from noise; with nothing to search (steps 0, a zero
target) noise goes, never the data. Measured on quickcnn (docs/results.md, "Any model"): one way at
3.2 KB 3.5 points above noise on one machine. Off by default: a payload can carry low-resolution copies of the client's
images and its labels (docs/design.md §1.1).

Warm start (ours, ``warm_start``): a party's search starts from the better (lower objective) of
its fresh start (noise, or its data) and the features it sent last time (kept per client, and by the server for its
broadcasts; checkpointed). Nothing changes on the wire. Measured on top of e3sfc-plus (the suite's
options group, two seeds): 11.7 points lost at Dirichlet 0.1 and 4.8 at 1.0, so it is off by default.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import wire
from ..wire import FieldSpec, Payload
from . import register
from ..errors import ConfigError
from ._bits import dequantize4, dequantize8, quantize4, quantize8
from .base import SAMPLES, Compressor, Context, Option, Steps, run_steps
from .lbfgs import FlatLBFGS
from .search import closed_form, cosine_match, run_together, start
from .synth import block_scales, ls_scale, synth_grad, upsample

FEATURE_BITS = (32, 16, 8, 4)
SCALES = ("one", "tensor")
FEATURE_INITS = ("noise", "data")

log = logging.getLogger(__name__)

# --payload-bytes (the rule in the module docstring). The reference payload: the published algorithm's
# smallest, M = 1 float32 sample of a 1x28x28 (MNIST) input with 10 classes: 4 (784 + 10 + 1) + 35 bytes.
REFERENCE_PAYLOAD = wire.encoded_size([FieldSpec(np.dtype("<f4"), (1, 1, 28, 28)), FieldSpec(np.dtype("<f4"), (1, 10)),
                                       FieldSpec(np.dtype("<f4"), ())])
FIT_BITS = 8                 # the features' precision it picks
FIT_RES = (16, 8, 4)         # the reduced resolutions it tries, after the input's own
FIT_MIN_FULL, FIT_MIN_LOW = 4, 8   # the samples a resolution must fit: at the input's own, at a reduced one
FIT_MAX_SAMPLES = 64         # at most (the scheduler's default --max-samples)

# the options (base.Option; each a run setting, --max-iter, unless setting=False)
OPTIONS = (
    SAMPLES,  # synthetic samples M per payload (base.py: FedSynth's too)
    Option("steps", int, 10, "L-BFGS steps s", low=0, check_unused=False),
    Option("max_iter", int, 20, "L-BFGS iterations per step", low=1, check_unused=False),
    Option("lambd", float, 0.0, "weight of the ||x|| + ||y|| regulariser", low=0, check_unused=False),
    Option("patience", int, 20, "stop the search after this many evaluations without improvement (0 = never)",
           low=0, note="0 = no early stop", check_unused=False),
    Option("feature_bits", int, 32, "precision of the synthetic features on the wire: 32 (float32, the published "
           "algorithm), 16 (float16), 8 or 4 (integers with one scale per field, 4 packed two a byte); M = 2 at 16 "
           "and M = 4 at 8 cost what M = 1 costs at 32", choices=FEATURE_BITS),
    Option("feature_res", int, 0, "image models: search and send the synthetic inputs at R x R (the smaller "
           "side; the other in proportion) and bilinearly upsample them to the model's input (0 = the input "
           "size, the published algorithm)", low=0, note="0 = the input size; at most its smaller side"),
    Option("payload_bytes", int, 0, "pick --feature-res, --samples and --feature-bits for the model's input so "
           "that a payload fits in this many bytes (rule: docs/design.md §1.1; 0 = off)", low=0,
           note="0 = off; not with --samples, --feature-bits, --feature-res or a budget schedule",
           attr="payload_budget"),
    Option("warm_start", bool, False, "start each search from the better of a fresh start (--feature-init) and "
           "that party's last synthetic features (clients and the server each keep theirs; checkpointed)"),
    Option("feature_init", str, "noise", "where a client's search starts: noise (fresh Gaussian features and "
           "labels, the published algorithm) or data (M of its own training samples, downsampled to the features' "
           "resolution, with one-hot labels; image models; the server's downlink search starts from noise). "
           "The payload then starts as the client's images: see docs/design.md on privacy",
           choices=FEATURE_INITS),
    Option("scales", str, "one", "one (a single scale alpha, the published algorithm) or tensor (one "
           "least-squares scale per parameter tensor; the search maximises the energy of the target they "
           "capture)", choices=SCALES),
    # passed by the run from other settings (--batch-search resolved, --protocol), or for code only
    Option("batch_search", bool, False, "run a round's searches together (compress_many)", setting=False),
    Option("select", str, "every", "which iterate is kept: every evaluation's best, or (the authors') each "
           "step's end", choices=("every", "step"), setting=False),
    Option("history", int, 100, "L-BFGS history: the (step, gradient change) pairs the search keeps (100: torch's "
           "default, the published algorithm's; 20 makes an M = 4 search about a sixth faster for 0.1 to 0.7 points of "
           "accuracy: benchmarks/RESULTS.md)", low=1, check_unused=False),
    Option("tol", float, 1e-4, "early stop: smallest improvement that counts", low=0, setting=False),
    Option("lock_cos", float, 0.05, "early stop: |cos| the search must reach first", low=0, setting=False),
)


@register
class ThreeSFC(Compressor):
    name = "3sfc"
    method_id = 1
    biased = True
    decodes_through_model = True  # no BatchNorm (e3sfc.models.check_decoder)

    sized_by_samples = True
    options = OPTIONS   # set as attributes: self.samples, self.steps, ...

    @property
    def batch_limit(self) -> int | None:
        """With ``batch_search`` a round's searches run together (:meth:`compress_many`)."""
        return None if self.batch_search else 1

    def compress_many(self, targets: list[torch.Tensor], ctxs: list[Context]) -> list[tuple[Payload, dict]]:
        """Several clients' compressions; with ``batch_search`` their searches run together, the
        objective evaluations of each turn batched (:func:`.search.run_together`: the closed form for
        MLPs, torch.func vmap for other models). Same math as one by one, float sums in another order."""
        if not self.batch_search:
            return super().compress_many(targets, ctxs)
        done = run_together({i: start(self.compress_steps(t, c)) for i, (t, c) in enumerate(zip(targets, ctxs))})
        return [done[i] for i in range(len(targets))]

    def feature_shape(self, ctx: Context) -> tuple[int, ...]:
        """One synthetic sample as searched and sent: the model's input shape, or with ``feature_res`` R
        on an image input (C, H, W): (C, R, round(R W / H)) for H <= W, (C, round(R H / W), R) for H > W."""
        if not self.feature_res or len(ctx.input_shape) != 3:
            return tuple(ctx.input_shape)
        c, h, w = ctx.input_shape
        r = self.feature_res
        if h <= w:
            return (c, r, max(1, (2 * r * w + h) // (2 * h)))
        return (c, max(1, (2 * r * h + w) // (2 * w)), r)

    def upsample_size(self, ctx: Context) -> tuple[int, int] | None:
        """(H, W) to upsample the sent features to, or None where they are the model's inputs as they are."""
        shape = self.feature_shape(ctx)
        return None if shape == tuple(ctx.input_shape) else tuple(ctx.input_shape[1:])

    def search_form(self, ctx: Context) -> str | None:
        """``closed form`` for a Linear/ReLU chain at the input's own resolution, else ``autograd``."""
        return "closed form" if closed_form(ctx.model) else "autograd"

    fitted: tuple[int, int, int, int] | None = None   # (R, M, bits, bytes) that payload_bytes picked

    def check_context(self, ctx: Context) -> None:
        """``payload_bytes``: pick R, M and the bits for ``ctx``'s input (:meth:`fit`). ``feature_res`` and
        ``feature_init = data`` need an image model; ``feature_res`` at most its input's smaller side."""
        if self.payload_budget and self.fitted is None:
            self.fit(ctx)
        if self.feature_init == "data" and len(ctx.input_shape) != 3:
            raise ConfigError(f"--feature-init: data is not allowed with this model (its synthetic samples, of shape "
                              f"{tuple(ctx.input_shape)}, are not images); expected noise")
        if not self.feature_res:
            return
        if len(ctx.input_shape) != 3:
            raise ConfigError(f"--feature-res: {self.feature_res} is not allowed; expected 0 with this model (its "
                              f"synthetic samples, of shape {tuple(ctx.input_shape)}, are not images)")
        _, h, w = ctx.input_shape
        if self.feature_res > min(h, w):
            raise ConfigError(f"--feature-res: {self.feature_res} is not allowed; expected an integer in "
                              f"0..{min(h, w)} (0 = the input size; the inputs are {h}x{w})")

    def fit(self, ctx: Context) -> tuple[int, int, int, int]:
        """``payload_bytes`` B: set ``feature_res``, ``samples`` and ``feature_bits`` by the rule of the
        module docstring and log the choice (INFO for the server's compressors, DEBUG for a client's);
        returns (R, M, bits, bytes), R = 0 for the input's own resolution. A ConfigError (one line) where
        the sizes were given too, or where no payload fits in B."""
        b = self.payload_budget
        given = [f"--{k.replace('_', '-')} {v}" for k, v, d in (("samples", self.samples, 1),
                 ("feature_bits", self.feature_bits, 32), ("feature_res", self.feature_res, 0)) if v != d]
        if given:
            raise ConfigError(f"--payload-bytes: {b} is not allowed with {', '.join(given)}; it picks --samples, "
                              "--feature-bits and --feature-res itself (leave them at their defaults, or "
                              "--payload-bytes at 0)")
        image = len(ctx.input_shape) == 3
        side = min(ctx.input_shape[1:]) if image else 0
        tried = []
        for r, need in [(0, FIT_MIN_FULL)] + [(r, FIT_MIN_LOW) for r in FIT_RES if image and r < side]:
            probe = ThreeSFC(feature_bits=FIT_BITS, feature_res=r, scales=self.scales)
            m = 0
            while m < FIT_MAX_SAMPLES and wire.encoded_size(probe.fields(ctx, m + 1)) <= b:
                m += 1
            tried.append((r, m, wire.encoded_size(probe.fields(ctx, max(m, 1)))))
            if m >= need:
                break
        r, m, size = tried[-1]  # the first that fits its minimum, else the one with the most samples
        if m == 0:
            raise ConfigError(f"--payload-bytes: {b} is too small for this model; its smallest payload "
                              f"(M = 1, {FIT_BITS}-bit{f', R = {r}' if r else ''}) is {size} bytes")
        self.feature_res, self.samples, self.feature_bits = r, m, FIT_BITS
        self.fitted = (r, m, FIT_BITS, size)
        shape = "x".join(map(str, ctx.input_shape))
        log.log(logging.INFO if ctx.client < 0 else logging.DEBUG,
                "%s: --payload-bytes %d -> R=%s, M=%d, %d-bit (%s B a payload; inputs %s)", self.name, b,
                r or f"{side} (the input's)" if image else "the input's", m, FIT_BITS, f"{size:,}", shape)
        return self.fitted

    def fields(self, ctx: Context, samples: int | None = None) -> list[FieldSpec]:
        m = samples or ctx.samples or self.samples
        f4, u1 = np.dtype("<f4"), np.dtype("u1")
        L = len(ctx.param_shapes)
        shape = self.feature_shape(ctx)
        n = 3 if self.scales == "one" else 2 + L
        if self.feature_bits == 8:
            return [FieldSpec(u1, (m * math.prod(shape),)), FieldSpec(u1, (m, ctx.num_classes)), FieldSpec(f4, (n,))]
        if self.feature_bits == 4:
            half = (math.prod(shape) + 1) // 2, (ctx.num_classes + 1) // 2
            return [FieldSpec(u1, (m, half[0])), FieldSpec(u1, (m, half[1])), FieldSpec(f4, (n,))]
        ft = f4 if self.feature_bits == 32 else np.dtype("<f2")
        return [FieldSpec(ft, (m, *shape)), FieldSpec(ft, (m, ctx.num_classes)),
                FieldSpec(f4, () if self.scales == "one" else (L,))]

    def synthesize(self, target: torch.Tensor, ctx: Context, samples: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """L-BFGS on z = (x, y); returns the best (x, y) and its |cos|."""
        return run_steps(self.search(target, ctx, samples))

    def search(self, target: torch.Tensor, ctx: Context, samples: int | None = None) -> Steps:
        """:meth:`synthesize` with the objective's evaluations outside: yields (f, z), the objective
        and the point to evaluate, takes f(z) = (value, |cos|, gradient) back through ``send`` and
        returns the best (x, y) and its |cos|. :func:`~.base.run_steps` drives it one point at a time; a
        driver may instead evaluate several searches' points together."""
        m = samples or ctx.samples or self.samples
        x_shape, y_shape = (m, *self.feature_shape(ctx)), (m, ctx.num_classes)
        g = ctx.generator
        x = torch.randn(x_shape, generator=g).to(ctx.device, ctx.weights.dtype)
        y = torch.randn(y_shape, generator=g).to(ctx.device, ctx.weights.dtype)
        f = cosine_match(ctx.model, target, tuple(x.shape), tuple(y.shape), self.lambd, self.scales == "tensor",
                         self.upsample_size(ctx))
        if f.tau_norm == 0.0 or self.steps == 0:  # nothing to search: noise goes (scale 0), never the data
            return x, y, 0.0
        data = ctx.extra.get("local_data") if self.feature_init == "data" else None
        if data is not None:  # after the two draws above, so that every other draw stays where it was
            x, y = data_start(data, x, y, g, ctx)
        z = torch.cat([x.reshape(-1), y.reshape(-1)])
        start = ctx.start if self.warm_start else None
        if start is not None and start.numel() == z.numel():  # the better of the fresh start and last round's features
            warm = start.detach().to(ctx.device, ctx.weights.dtype).reshape(-1).clone()
            fresh_val = (yield f, z)[0]
            if (yield f, warm)[0] < fresh_val:
                z = warm
        best_obj, best_z, best_cos, stale = math.inf, z.clone(), 0.0, 0
        opt = FlatLBFGS(z, lr=1.0, max_iter=self.max_iter, history=self.history)
        for _ in range(self.steps):
            steps = opt.steps()
            zk = next(steps)
            while True:
                val, cos, grad = yield f, zk
                improved = val < best_obj - self.tol
                if val < best_obj and self.select == "every":  # NaN never compares smaller
                    best_obj, best_z, best_cos = val, zk.clone(), cos
                stale = 0 if improved else stale + 1
                if self.patience and stale >= self.patience and best_cos >= self.lock_cos:
                    steps.close()  # converged: the early stop
                    bx, by = f.split(best_z)
                    return bx, by, best_cos
                try:
                    zk = steps.send((val, grad))
                except StopIteration:
                    break
            if self.select == "step":  # the authors' rule: the point a step ends at, evaluated once more
                val, cos, _ = yield f, opt.z
                if 0 <= val < best_obj:
                    best_obj, best_z, best_cos = val, opt.z.clone(), cos
        bx, by = f.split(best_z)
        return bx, by, best_cos

    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        return run_steps(self.compress_steps(target, ctx))

    def compress_steps(self, target: torch.Tensor, ctx: Context) -> Steps:
        x, y, _ = yield from self.search(target, ctx)
        wire_x, wire_y, x, y = self._round(x, y, ctx)  # what goes on the wire, and what it decodes to
        g = synth_grad(ctx.model, upsample(x, self.upsample_size(ctx)), y)
        if self.scales == "one":
            alpha = ls_scale(g, target)
            cos = abs(float(torch.nn.functional.cosine_similarity(g, target, dim=0))) if alpha else 0.0
            alphas = np.float32(alpha)
        else:  # the least-squares scale of each tensor's block: the projection onto their span
            sizes = [math.prod(s) for s in ctx.param_shapes]
            alphas = np.array(block_scales(g, target, sizes), np.float32)
            dec = _scaled(g, alphas, sizes)
            cos = abs(float(torch.nn.functional.cosine_similarity(dec, target, dim=0))) if dec.any() else 0.0
        if self.feature_bits in (8, 4):
            scales = np.concatenate([np.array([wire_x[1], wire_y[1]], np.float32), np.atleast_1d(alphas)])
            return Payload.of(self.method_id, wire_x[0], wire_y[0], scales), {"cosine": cos}
        return Payload.of(self.method_id, wire_x, wire_y, alphas), {"cosine": cos}

    def _round(self, x: torch.Tensor, y: torch.Tensor, ctx: Context):
        """The features at the wire's precision: (wire x, wire y, x and y as the decoder sees them)."""
        dt = ctx.weights.dtype
        if self.feature_bits == 32:
            return x.float(), y.float(), x, y
        if self.feature_bits == 16:
            big = torch.finfo(torch.float16).max  # no inf on the wire
            hx, hy = x.clamp(-big, big).half(), y.clamp(-big, big).half()
            return hx, hy, hx.to(dt), hy.to(dt)
        if self.feature_bits == 4:
            (qx, sx), (qy, sy) = quantize4(x.reshape(x.shape[0], -1)), quantize4(y)
            return ((qx.cpu(), sx), (qy.cpu(), sy), dequantize4(qx, math.prod(x.shape[1:]), sx, dt).reshape(x.shape),
                    dequantize4(qy, y.shape[1], sy, dt))
        (qx, sx), (qy, sy) = quantize8(x), quantize8(y)
        return ((qx.reshape(-1).cpu(), sx), (qy.cpu(), sy), dequantize8(qx, sx, dt).reshape(x.shape),
                dequantize8(qy, sy, dt))

    def features(self, payload: Payload, ctx: Context) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(x, y, the scale(s) alpha) as the decoder sees them; x as sent (with ``feature_res``, before
        the upsampling)."""
        dt, shape = ctx.weights.dtype, self.feature_shape(ctx)
        if self.feature_bits in (8, 4):
            sx, sy = (float(v) for v in payload.fields[2][:2])
            m = payload.fields[1].shape[0]
            if self.feature_bits == 4:
                x = dequantize4(payload.tensor(0, ctx.device), math.prod(shape), sx, dt).reshape(m, *shape)
                return x, dequantize4(payload.tensor(1, ctx.device), ctx.num_classes, sy, dt), payload.fields[2][2:]
            x = dequantize8(payload.tensor(0, ctx.device), sx, dt).reshape(m, *shape)
            y = dequantize8(payload.tensor(1, ctx.device), sy, dt)
            return x, y, payload.fields[2][2:]
        return payload.tensor(0, ctx.device).to(dt), payload.tensor(1, ctx.device).to(dt), payload.fields[2]

    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        x, y, alphas = self.features(payload, ctx)
        g = synth_grad(ctx.model, upsample(x, self.upsample_size(ctx)), y)
        if self.scales == "one":
            return float(np.asarray(alphas).reshape(-1)[0]) * g
        return _scaled(g, alphas, [math.prod(s) for s in ctx.param_shapes])

    def carry(self, payload: Payload, ctx: Context) -> torch.Tensor | None:
        """With ``warm_start``: the features just sent (as decoded), flat, where the next search starts."""
        if not self.warm_start:
            return None
        x, y, _ = self.features(payload, ctx)
        return torch.cat([x.reshape(-1), y.reshape(-1)])

    def check_carry(self, value, ctx: Context) -> None:
        """A warm start is M_s whole samples of features (x and y of each, flat)."""
        per_sample = math.prod(self.feature_shape(ctx)) + ctx.num_classes
        if not (isinstance(value, torch.Tensor) and value.dim() == 1 and value.is_floating_point() and value.numel()
                and value.numel() % per_sample == 0):
            raise ValueError(f"a warm start is {getattr(value, 'shape', type(value).__name__)}; expected a whole "
                             f"number of samples of {per_sample} numbers")


def data_start(data: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor, g: torch.Generator,
               ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """``feature_init = data``: the search's start from a client's own training data (x (N, *input), labels
    (N,)) in place of the noise start (x (M, *features), y (M, C)): min(N, M) samples drawn by ``g`` without
    replacement, area-averaged down to the features' resolution where it is lower, with their one-hot
    labels (the objective's cosine does not depend on the labels' scale: the gradient is linear in y). Where
    N < M the other rows keep their noise: a repeated sample would stay a copy through the search (equal
    rows get equal gradients) and waste its bytes."""
    xs, labels = data
    n, m = xs.shape[0], x.shape[0]
    k = min(n, m)
    if k == 0:
        return x, y
    idx = torch.randperm(n, generator=g)[:k]
    real = xs[idx.to(xs.device)].to(ctx.device, ctx.weights.dtype).reshape(k, *ctx.input_shape)
    if tuple(real.shape[-2:]) != tuple(x.shape[-2:]):
        real = F.interpolate(real, size=tuple(x.shape[-2:]), mode="area")
    onehot = F.one_hot(labels[idx.to(labels.device)].long().to(ctx.device), y.shape[1]).to(ctx.weights.dtype)
    x, y = x.clone(), y.clone()
    x[:k], y[:k] = real.reshape(k, *x.shape[1:]), onehot
    return x, y


def _scaled(g: torch.Tensor, alphas: np.ndarray, sizes: list[int]) -> torch.Tensor:
    """sum_l alpha_l g_l: each parameter tensor's block of g times its own scale."""
    return torch.cat([float(a) * gl for a, gl in zip(alphas, g.split(sizes))])


@register
class E3SFC(ThreeSFC):
    """``e3sfc`` (Zhou et al., TNNLS 2025): the 3SFC uplink of this file; the simulator
    adds the double-way downlink (the server compresses its aggregate the same way)
    and the budget scheduler (docs/design.md §1.2, §1.3). Same wire format as ``3sfc``. The server's
    downlink search has its own early stop, ``downlink_patience`` (default 0: all
    evaluations): one search a round reaches every client, and an early-stopped one cost
    accuracy in the runs made to decide it (docs/findings.md, "Defaults")."""

    name = "e3sfc"
    method_id = 7
    downlink = "3sfc"     # E-3SFC: the server compresses its aggregate the same way
    init = "seed"         # every party builds w_1 from the shared seed
    as_downlink = False   # as a downlink it is 3sfc
