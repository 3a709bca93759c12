"""The server step, shared by every driver: admit, decode, bound, aggregate.

w_{t+1} = w_t + sum_k a_k * clip(decoded_k) with a_k = 1/|S| (uniform) or n_k / sum n
(sample-weighted). Nothing a client sends is trusted:

- :func:`admit` checks each reply's envelope before anything is allocated from it: the
  client id must be one the server asked this round, one reply per client, the payload
  must be bytes of exactly the method's size (at most it, for a method of variable size),
  ``num_samples`` a positive integer no larger than that client's partition, stats finite numbers (a cosine in [-1, 1]);
- :func:`screen` decodes each admitted payload (the wire decoder checks magic,
  method, shapes and finiteness) and rejects an update whose values or norm are not
  finite;
- robust aggregation (``norm_clip``, default 3): an update whose norm exceeds
  ``norm_clip`` times the round's (lower) median norm is scaled down to that bound
  (:func:`bounded`), so one client can move the mean by at most ``norm_clip`` honest-sized
  steps divided by the number of clients. Honest updates of a round have similar norms, so
  they are rarely touched (a round where none is scaled is bit-identical to the unclipped mean);
- where partition sizes are unknown (the Flower add-on), a claimed sample count is held to
  ``norm_clip`` times the round's median claim (:func:`cap_samples`);
- :func:`aggregate` averages the bounded updates (``aggregate="mean"``, the default), or
  (``aggregate="cclip"``) takes their centered-clipping aggregate (:func:`centered_clip`,
  Karimireddy, He and Jaggi, ICML 2021): a direction-aware rule that holds a group of clients
  sending one shared update to a bounded pull on the result, or (``aggregate="direction"``)
  averages those that pass the direction screen (:func:`direction_screen`). Each update's
  reference direction is the server's history h (h <- 0.9 h + the round's aggregate: where the
  model has been moving, which no client of this round can move); in the first round, with no
  history, the geometric median of the other updates (a few Weiszfeld iterations, float64;
  :func:`cosines_to_others`: leaving the update itself out matters for sparse updates). An update
  is left out when its component along the reference is below -0.2 x the round's median update
  norm (``PULL``: it pulls back the way the model has been going; a noisy honest update that
  disagrees a little is kept), or when its client's mean pull over the rounds it took part in is
  below -0.1 (``STANDING``: a hostile client with noisy, compressed updates points back on
  average, even in a round where it does not; kept in ``ServerRuntime.standing``). If that would
  leave out half the updates or more, the screen cannot tell honest from hostile: it keeps them
  all and the round's aggregate is their geometric median (breakdown point 1/2). A round it leaves
  nobody out of is bit-identical to the mean; history and standing are checkpointed.
  :func:`server_step` is screen + aggregate; the Flower add-on hands the updates as the rule
  counts them (:func:`robust`) to the wrapped strategy instead (under direction: those that
  pass, or every one as the geometric median; the history follows the strategy's move).

Every rejection is logged with its reason and counted in the round's ``rejected``; a reply from a
client the server did not ask, or a second reply of a client, is dropped and logged (not counted).
An update the direction screen leaves out was well-formed: it is logged with its cosine and counted
in the round's ``screened`` (summary.json: ``screened_updates``), not in ``rejected`` (a round the
screen leaves out of is never a round whose every update was rejected).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..compress import Compressor, Context
from ..errors import PayloadError
from .client import ClientUpdate

log = logging.getLogger(__name__)

# a well-formed payload may still fail in a method's decoder; none of these may stop a round
DECODE_ERRORS = (PayloadError, ValueError, RuntimeError, IndexError, TypeError, OverflowError)
AGGREGATES = ("mean", "cclip", "direction")  # --aggregate
CCLIP_ITERS = 3                  # centered-clipping iterations per round
GM_ITERS = 10                    # Weiszfeld iterations for the direction screen's first-round reference
PULL = 0.2                       # the direction screen leaves out an update pulling back along its reference by more
                                 # than this x the round's median update norm
STANDING = 0.1                   # ... or whose client's mean pull over the rounds it took part in is below -STANDING
HISTORY_DECAY = 0.9              # the direction screen's reference: h <- 0.9 h + the round's aggregate
KEEP_DECODED_BYTES = 1 << 28  # decoded updates held between the two passes up to this size, else decoded again


@dataclass
class Aggregate:
    delta: torch.Tensor            # (P,) mean decoded update
    accepted: list[int]
    rejected: dict[int, str]
    clipped: list[int] = field(default_factory=list)
    screened: dict[int, float] = field(default_factory=dict)  # left out by the direction screen: client -> cosine


def _clean_stats(stats: Any) -> dict[str, float]:
    """A reply's stats, kept only where they are finite numbers (a cosine in [-1, 1])."""
    out: dict[str, float] = {}
    if not isinstance(stats, dict):
        return out
    for k, v in itertools.islice(stats.items(), 64):
        if not isinstance(k, str) or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        try:
            v = float(v)
        except OverflowError:  # an int too large for a float
            continue
        if math.isfinite(v) and (k != "cosine" or -1.0 <= v <= 1.0):
            out[k] = v
    return out


def admit(
    updates: list[Any],
    asked: set[int],
    payload_bytes: int,
    sizes: dict[int, int] | None = None,
    exact: bool = True,
) -> tuple[list[ClientUpdate], dict[int, str], dict[int, int]]:
    """Check every reply's envelope before use. Returns the admitted updates (in the order
    given, stats cleaned), the rejected ones by client id with the reason, and the bytes each
    asked client sent (its first reply's payload length, for the ledger). A reply whose id is
    not one of ``asked``, or a second reply for an id, is dropped and logged. ``exact`` False (a method
    whose payloads vary in size, ``Compressor.fixed_size``): ``payload_bytes`` is the most allowed."""
    admitted: list[ClientUpdate] = []
    rejected: dict[int, str] = {}
    received: dict[int, int] = {}
    for u in updates:
        cid = getattr(u, "client", None)
        if not isinstance(u, ClientUpdate) or isinstance(cid, bool) or not isinstance(cid, int) or cid not in asked:
            log.warning("dropped a reply from a client the server did not ask this round (client %r)", cid)
            continue
        if cid in received:
            log.warning("dropped a second reply of client %d this round", cid)
            continue
        blob, n = u.blob, u.num_samples
        received[cid] = len(blob) if isinstance(blob, (bytes, bytearray)) else 0
        if not isinstance(blob, (bytes, bytearray)):
            reason = f"payload is {type(blob).__name__}, not bytes"
        elif len(blob) > payload_bytes or (exact and len(blob) != payload_bytes):
            reason = f"payload is {len(blob)} bytes; this round's payload is {'exactly' if exact else 'at most'} " \
                     f"{payload_bytes}"
        elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
            reason = f"num_samples {n!r} is not a positive integer"
        elif sizes is not None and n > sizes.get(cid, 0):
            reason = f"num_samples {n} exceeds the client's partition ({sizes.get(cid, 0)} samples)"
        else:
            admitted.append(ClientUpdate(cid, bytes(blob), n, _clean_stats(u.stats)))
            continue
        log.warning("rejected the reply of client %d: %s", cid, reason)
        rejected[cid] = reason
    return admitted, rejected, received


@dataclass
class Screened:
    """The admitted updates that decode to finite updates, with the norm bound each is held to."""

    updates: list[ClientUpdate]
    norms: list[float]
    bound: float                                  # inf: no clipping
    rejected: dict[int, str]
    decoded: dict[int, torch.Tensor] = field(default_factory=dict)  # by position, where kept between passes

    @property
    def clipped(self) -> list[int]:
        return [u.client for u, n in zip(self.updates, self.norms) if n > self.bound]


def screen(ctx: Context, updates: list[ClientUpdate], compressor: Compressor, *, norm_clip: float = 0.0) -> Screened:
    """Decode every (admitted) update at w_t (``ctx``), reject those that do not decode to a finite
    update, and set the round's norm bound: ``norm_clip`` x the lower median norm (inf when off).
    Decoded updates are kept for :func:`bounded` while they fit in ``KEEP_DECODED_BYTES``, else
    decoded again there (decoding is deterministic), so the server holds a bounded number of
    model-sized tensors however many clients report."""
    rejected: dict[int, str] = {}
    kept: list[ClientUpdate] = []
    norms: list[float] = []
    keep = len(updates) * ctx.num_params * 4 <= KEEP_DECODED_BYTES
    decoded: dict[int, torch.Tensor] = {}
    for u in updates:
        try:
            upd = compressor.decode_update(u.blob, ctx)
            norm = float(torch.linalg.vector_norm(upd.double()))
            if not math.isfinite(norm):
                raise PayloadError("decoded update's norm is not finite")
        except DECODE_ERRORS as exc:
            log.warning("round %d: rejected update of client %d: %s", ctx.round, u.client, exc)
            rejected[u.client] = str(exc) if isinstance(exc, PayloadError) else f"payload cannot be decoded ({exc})"
            continue
        if keep:
            decoded[len(kept)] = upd
        kept.append(u)
        norms.append(norm)
    bound = norm_clip * sorted(norms)[(len(norms) - 1) // 2] if norm_clip and norms else math.inf
    return Screened(kept, norms, bound, rejected, decoded)


def bounded(ctx: Context, s: Screened, compressor: Compressor) -> Iterator[tuple[ClientUpdate, torch.Tensor, float]]:
    """Each screened update with its decoded update and the factor that bounds it: ``s.bound / norm``
    where the norm exceeds the bound (logged), else 1."""
    for i, (u, norm) in enumerate(zip(s.updates, s.norms)):
        upd = s.decoded.pop(i) if i in s.decoded else compressor.decode_update(u.blob, ctx)
        if norm > s.bound:
            log.info("round %d: update of client %d scaled from norm %.4g to %.4g", ctx.round, u.client, norm, s.bound)
        yield u, upd, (s.bound / norm if norm > s.bound else 1.0)


def server_step(
    ctx: Context,
    updates: list[ClientUpdate],
    compressor: Compressor,
    *,
    weighted: bool = False,
    norm_clip: float = 0.0,
    rule: str = "mean",
    start: torch.Tensor | None = None,
) -> Aggregate:
    """Decode every (admitted) update at w_t (``ctx``), bound its norm and aggregate: :func:`screen`,
    then :func:`aggregate` (``rule`` mean: each :func:`bounded` update added into one running sum)."""
    s = screen(ctx, updates, compressor, norm_clip=norm_clip)
    return aggregate(ctx, s, compressor, weighted=weighted, rule=rule, start=start)


def aggregate(ctx: Context, s: Screened, compressor: Compressor, *, weighted: bool = False, rule: str = "mean",
              start: torch.Tensor | None = None, standing: dict[int, tuple[float, int]] | None = None) -> Aggregate:
    """The (uniform or sample-weighted) mean of the screened updates, each held to the round's bound
    (``rule`` "mean"); their centered-clipping aggregate from ``start`` (``rule`` "cclip", see
    :func:`robust`); or the mean of those that pass the direction screen (``rule`` "direction",
    :func:`direction_screen`; a round where it leaves nobody out is bit-identical to "mean")."""
    if rule == "mean":
        delta = _mean(ctx, ((u, upd, norm) for (u, upd, _), norm in zip(bounded(ctx, s, compressor), s.norms)),
                      s.bound, weighted)
        return Aggregate(delta, [u.client for u in s.updates], s.rejected, s.clipped)
    if rule == "direction":
        items = [(u, upd, norm) for (u, upd, _), norm in zip(bounded(ctx, s, compressor), s.norms)]
        if not items:
            return Aggregate(torch.zeros_like(ctx.weights), [], s.rejected, s.clipped)
        d = _screen_directions(ctx.round, items, s.bound, start, standing)
        keep = d.keep.tolist()
        delta = _mean(ctx, (it for it, k in zip(items, keep) if k), s.bound, weighted) if d.median is None \
            else d.median.to(ctx.weights.dtype)
        return Aggregate(delta, [u.client for (u, _, _), k in zip(items, keep) if k], s.rejected, s.clipped,
                         {u.client: float(c) for (u, _, _), k, c in zip(items, keep, d.cosine) if not k})
    _, delta = robust(ctx, s, compressor, weighted=weighted, rule=rule, start=start)
    return Aggregate(delta, [u.client for u in s.updates], s.rejected, s.clipped)


def _mean(ctx: Context, items, bound: float, weighted: bool) -> torch.Tensor:
    """The (uniform or sample-weighted) mean of ``items`` (update, decoded update, its norm), each held to
    ``bound``: added one by one into a running sum (the same float operations for every rule that uses it)."""
    delta = torch.zeros_like(ctx.weights)
    total = 0.0
    for u, upd, norm in items:
        a = float(u.num_samples) if weighted else 1.0
        delta.add_(upd, alpha=a * bound / norm if norm > bound else a)
        total += a
    if total > 0:
        delta.div_(total)
    return delta


def geometric_median(xs: torch.Tensor, iters: int = GM_ITERS) -> torch.Tensor:
    """The geometric median of the rows of ``xs`` (n, P), approximated by ``iters`` Weiszfeld iterations
    from their mean (v <- sum_i x_i / ||x_i - v|| / sum_i 1 / ||x_i - v||), in float64. Unweighted: a
    client's claimed sample count does not move it. Its breakdown point is 1/2: fewer than half the
    rows, however placed, cannot carry it arbitrarily far from the others."""
    xs = xs.double()
    scale = float(torch.linalg.vector_norm(xs, dim=1).max()) if xs.shape[0] else 0.0
    v = xs.mean(0)
    if not scale > 0:
        return v
    for _ in range(max(0, iters)):
        w = 1.0 / torch.linalg.vector_norm(xs - v, dim=1).clamp_min(1e-12 * scale)
        v = w @ xs / w.sum()
    return v


def _cosines(xs: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The cosine of each row of ``xs`` with ``ref`` (0 where either is zero), float64."""
    xs, ref = xs.double(), ref.double()
    norms = torch.linalg.vector_norm(xs, dim=1) * torch.linalg.vector_norm(ref)
    return torch.where(norms > 0, (xs @ ref) / norms.clamp_min(1e-300), torch.zeros_like(norms)).clamp(-1.0, 1.0)


def cosines_to_others(xs: torch.Tensor, iters: int = GM_ITERS) -> torch.Tensor:
    """Each row's cosine with the geometric median of the other rows, float64: from v, the
    :func:`geometric_median` of all rows, one Weiszfeld step without the row's own term, whose direction
    is sum_{j != i} w_j x_j with w_j = 1 / ||x_j - v|| (O(n P) for all rows together). Leaving the row out
    matters: n nearly orthogonal rows (sparse updates of different supports) each have cosine about
    1 / sqrt(n) with a median that contains them, and none with one that does not."""
    xs = xs.double()
    v = geometric_median(xs, iters)
    scale = float(torch.linalg.vector_norm(xs, dim=1).max()) if xs.shape[0] else 0.0
    if not scale > 0:
        return torch.zeros(xs.shape[0], dtype=torch.float64)
    w = 1.0 / torch.linalg.vector_norm(xs - v, dim=1).clamp_min(1e-12 * scale)
    total = w @ xs
    dots, sq = xs @ total, (xs * xs).sum(1)
    num = dots - w * sq                                                 # x_i . (total - w_i x_i)
    rest = (total @ total - 2 * w * dots + w * w * sq).clamp_min(0.0)   # ||total - w_i x_i||^2
    den = (sq * rest).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den)).clamp(-1.0, 1.0)


def history(prev: torch.Tensor | None, delta: torch.Tensor) -> torch.Tensor:
    """The direction screen's reference after a round whose aggregate was ``delta``: h <- ``HISTORY_DECAY``
    x h + delta (the server's own record of where the model has been moving; no client sets it alone)."""
    return delta.clone() if prev is None else prev.mul(HISTORY_DECAY).add_(delta)


@dataclass
class DirectionScreen:
    """What :func:`direction_screen` decided for the rows of a round."""

    keep: torch.Tensor                    # (n,) bool: the rows the mean takes
    cosine: torch.Tensor                  # (n,) each row's cosine with its reference
    pull: torch.Tensor                    # (n,) each row's component along its reference, in median norms
    standing: torch.Tensor                # (n,) its client's mean pull (each clamped to [-1, 1]), this round's in
    median: torch.Tensor | None = None    # where the screen could not decide: the rows' geometric median


def direction_screen(xs: torch.Tensor, reference: torch.Tensor | None = None, past: torch.Tensor | None = None,
                     tolerance: float = PULL, iters: int = GM_ITERS) -> DirectionScreen:
    """The direction screen of ``xs`` (n, P: the round's bounded updates). Each row's reference direction:
    ``reference`` (the server's :func:`history`) where there is a nonzero one, else (the first round) the
    geometric median of the other rows (:func:`cosines_to_others`). A row whose component along it is below
    -``tolerance`` x the rows' (lower) median norm (it pulls the model back the way it has been moving by more
    than a fraction of an honest step: a sign-flipped update) is left out; an honest update that disagrees a
    little (a noisy, compressed or sparse one, a cosine slightly below 0 at about the median norm) is kept.
    If that would leave out half the rows or more, most of the round disagrees with the reference, which can
    no longer tell honest from hostile (a poisoned history, a change of direction, or a hostile majority):
    every row is kept, and the round's aggregate is their geometric median (``median``; its breakdown point is
    1/2, where the mean's is 0). ``past`` (n, 2): each row's client's sum of (clamped) pulls and rounds before
    this one; a row whose client's mean pull, this round's in, is below -``STANDING`` is left out too (a
    hostile client whose updates are noisy, a compressed one say, points back on average even in a round
    where it does not)."""
    xs = xs.double()
    norms = torch.linalg.vector_norm(xs, dim=1)
    if reference is not None and bool(torch.linalg.vector_norm(reference.double()) > 0):
        cos = _cosines(xs, reference)
    else:
        cos = cosines_to_others(xs, iters)
    m = _lower_median(norms) if xs.shape[0] else torch.zeros((), dtype=torch.float64)
    pull = cos * norms / m if m > 0 else torch.zeros_like(cos)
    past = torch.zeros(xs.shape[0], 2, dtype=torch.float64) if past is None else past.double()
    standing = (past[:, 0] + pull.clamp(-1.0, 1.0)) / (past[:, 1] + 1.0)
    keep = (pull >= -tolerance) & (standing >= -STANDING)
    if 2 * int((~keep).sum()) >= xs.shape[0] and xs.shape[0] > 0 and not bool(keep.all()):
        return DirectionScreen(torch.ones_like(keep), cos, pull, standing, geometric_median(xs, iters))
    return DirectionScreen(keep, cos, pull, standing)


def _screen_directions(t: int, items, bound: float, reference: torch.Tensor | None = None,
                       standing: dict[int, tuple[float, int]] | None = None) -> DirectionScreen:
    """:func:`direction_screen` of the round's bounded updates (``items``: update, decoded update, norm),
    with what it left out (or would have) logged; ``standing`` (client -> sum of clamped pulls, rounds) is
    read and updated with this round's pulls."""
    xs = torch.stack([upd.double() * (bound / norm if norm > bound else 1.0) for _, upd, norm in items])
    standing = {} if standing is None else standing
    past = torch.tensor([list(standing.get(u.client, (0.0, 0))) for u, _, _ in items], dtype=torch.float64)
    d = direction_screen(xs, reference, past)
    del xs
    for (u, _, _), p in zip(items, d.pull.clamp(-1.0, 1.0).tolist()):
        s, n = standing.get(u.client, (0.0, 0))
        standing[u.client] = (s + p, n + 1)
    ref = "the server's history" if reference is not None and bool(reference.abs().sum() > 0) else \
        "the geometric median of the others"
    below = [(u.client, round(float(c), 3), round(float(p), 3), round(float(a), 3))
             for (u, _, _), c, p, a in zip(items, d.cosine, d.pull, d.standing) if p < -PULL or a < -STANDING]
    what = f"clients {[b[0] for b in below]}, cosines {[b[1] for b in below]} with {ref}, pulls " \
           f"{[b[2] for b in below]} median norms, mean pulls {[b[3] for b in below]}"
    if d.median is not None:
        log.warning("round %d: the direction screen would leave out %d of %d updates (%s): half or more, so it "
                    "cannot tell honest from hostile; this round's aggregate is the geometric median of all", t,
                    len(below), len(items), what)
    elif below:
        log.warning("round %d: the direction screen left out %d of %d updates (%s)", t, len(below), len(items), what)
    return d


def _lower_median(x: torch.Tensor) -> torch.Tensor:
    return x.sort().values[(x.numel() - 1) // 2]


def centered_clip(xs: torch.Tensor, a: torch.Tensor, start: torch.Tensor | None = None, *,
                  iters: int = CCLIP_ITERS, tau: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centered clipping (Karimireddy, He and Jaggi, ICML 2021) of the rows of ``xs`` (n, P) with
    weights ``a`` (n,): ``iters`` times v <- v + sum_i a_i c_i (x_i - v) / sum a, c_i = min(1, tau /
    ||x_i - v||). ``start``: the first center (the previous round's aggregate); None: the
    coordinate-wise (lower) median of the rows. ``tau``: the radius; None: at each iteration the
    lower median of the distances ||x_i - v|| (so at least half the rows are never clipped, and each
    row moves the result by at most tau a_i / sum a per iteration). Returns the aggregate v, the last
    iteration's center v' and the factors c_i, so that v = v' + sum_i a_i c_i (x_i - v') / sum a:
    the rows as the rule counts them are v' + c_i (x_i - v') (their weighted mean is v). Float64."""
    xs, a = xs.double(), a.double()
    v = xs.median(dim=0).values if start is None else start.double().clone()
    c = torch.ones_like(a)
    prev = v
    for _ in range(max(1, iters)):
        prev = v
        d = xs - v
        dist = torch.linalg.vector_norm(d, dim=1)
        r = _lower_median(dist) if tau is None else torch.tensor(float(tau), dtype=torch.float64)
        c = torch.where(dist > r, r / dist.clamp_min(1e-300), torch.ones_like(dist))
        v = v + (a * c) @ d / a.sum()
    return v, prev, c


def robust(ctx: Context, s: Screened, compressor: Compressor, *, weighted: bool = False, rule: str = "mean",
           start: torch.Tensor | None = None, standing: dict[int, tuple[float, int]] | None = None
           ) -> tuple[list[tuple[ClientUpdate, torch.Tensor]], torch.Tensor]:
    """Each screened update as the rule ``rule`` counts it, and the round's aggregate (their mean,
    sample-weighted where ``weighted``). "mean": the bounded update; "cclip": the update's clipped
    deviation around the last center, v' + c_k (x_k - v') (:func:`centered_clip` of the bounded
    updates from ``start``), whose mean is the centered-clipping aggregate; "direction": the bounded
    update, where it passes the direction screen (those it leaves out are not in the list; their mean is
    the aggregate), or, where the screen cannot decide, every update as the round's geometric median
    (``start``: the history, ``standing``: read and updated). Holds every decoded update of the round at
    once (n x P floats)."""
    if rule == "direction":
        items = [(u, upd, norm) for (u, upd, _), norm in zip(bounded(ctx, s, compressor), s.norms)]
        if not items:
            return [], torch.zeros_like(ctx.weights)
        d = _screen_directions(ctx.round, items, s.bound, start, standing)
        if d.median is not None:  # the screen could not decide: every update counted as the geometric median
            gm = d.median.to(ctx.weights.dtype)
            return [(u, gm) for u, _, _ in items], gm
        items = [it for it, k in zip(items, d.keep.tolist()) if k]
        return ([(u, upd * (s.bound / norm) if norm > s.bound else upd) for u, upd, norm in items],
                _mean(ctx, items, s.bound, weighted))
    pairs = [(u, upd * factor if factor != 1.0 else upd) for u, upd, factor in bounded(ctx, s, compressor)]
    if not pairs:
        return [], torch.zeros_like(ctx.weights)
    a = torch.tensor([float(u.num_samples) if weighted else 1.0 for u, _ in pairs], dtype=torch.float64)
    if rule == "mean":
        delta = torch.zeros_like(ctx.weights)
        for (_, x), ak in zip(pairs, a.tolist()):
            delta.add_(x, alpha=ak)
        return pairs, delta.div_(float(a.sum()))
    xs = torch.stack([x for _, x in pairs])
    if rule != "cclip":
        raise ValueError(f"unknown aggregation rule {rule!r} (one of {', '.join(AGGREGATES)})")
    v, prev, c = centered_clip(xs, a, start)
    dtype = ctx.weights.dtype
    moved = [int(k) for k in torch.nonzero(c < 1).flatten()]
    if moved:
        log.info("round %d: centered clipping held the updates of clients %s", ctx.round,
                 [pairs[k][0].client for k in moved])
    out = [(u, (prev + c[i] * (x.double() - prev)).to(dtype)) for i, (u, x) in enumerate(pairs)]
    return out, v.to(dtype)


def cap_samples(updates: list[ClientUpdate], factor: float) -> list[int]:
    """Where partition sizes are unknown (the Flower add-on), a reply's sample count is a claim: hold each
    to ``factor`` x the round's lower median count, as update norms are held; returns the capped ids."""
    if not factor or not updates:
        return []
    cap = int(factor * sorted(u.num_samples for u in updates)[(len(updates) - 1) // 2])
    capped = []
    for u in updates:
        if u.num_samples > cap:
            log.warning("client %d claims %d samples; held to %d (%g x the round's median)", u.client,
                        u.num_samples, cap, factor)
            u.num_samples = cap
            capped.append(u.client)
    return capped
