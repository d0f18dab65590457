"""nncase v0.2's l2 threshold search, exact and fast (kpu_semantics.md §4.2).

The search (ncc `histogram::finish`), over a histogram with bins p_i (left edges, see
`kcc.quant.histogram`), float32 counts c_i, interval I and zero bin zb:

    for L in 0..zb (ascending), for U from bins down while U >= L + levels and U >= zb:
        qlo = p_L, qhi = p_U, qstep = (qhi - qlo) / (levels - 1)
        idx_i = clamp(round((p_i - qlo) / qstep), 0, levels - 1)     round = half away from 0
        loss  = sum_i c_i * (p_i - (qlo + qstep * idx_i))^2
    the first strict minimum (loss < best, best starting at FLT_MAX) wins; range = [p_L, p_U].

All float32, except that each term e^2 * c is formed in double and added to the float32 sum in
double (`d += pow(e, 2) * c`), bin by bin. ncc evaluates all ~zb * bins candidates at O(bins)
each: minutes per tensor. `l2_threshold` returns exactly the same (L, U); each stage below drops
only candidates whose float32 loss is *provably* above the optimum:

0. Real-arithmetic loss in units of I^2, from integers: with W = U - L and m = levels - 1,
       E(L, U) = sum_{i<L} c_i (L-i)^2 + sum_{i>U} c_i (i-U)^2 + sum_{k=0..W} c_{L+k} mu_W(k)^2 / m^2,
       mu_W(k) = min(r, W - r), r = m k mod W      (distance to the nearest level, in I/m)
   (prefix sums for the clipped tails, Hankel(c) @ mu^2 matrix products for the rest). Every
   float32 rounding of positions (<= 2 u n I), grid levels (<= 10 u n I) and index choice
   (<= 8 u n I) moves |e_i| by less than kappa I = 32 u n I from the real distance D_i
   (u = 2^-24, n = bins), and the float32 sum of nz terms is within gamma = nz u' / (1 - nz u')
   of the exact sum (u' = 2^-24 + 2^-53). With N = sum c and Cauchy-Schwarz:
       loss in [(E - 2 kappa sqrt(N E)) (1 - gamma), (sqrt(E) + kappa sqrt(N))^2 (1 + gamma)] I^2.
   E is only computed where the clipped tails alone (a lower bound of E) do not already exceed
   the best upper bound found on a coarse grid (L, U multiples of 16).
A. The survivors, in increasing lower bound, get their float32 terms formed exactly as ncc does
   and summed in float64 (S): loss in S (1 +- gamma). This stops once the next lower bound
   exceeds the best S (1 + gamma) seen, and keeps only near-ties.
B. Those few get ncc's sequential float32 accumulation, bit for bit; the first minimum in
   visiting order wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import numpy as np

from kcc.quant.histogram import BINS, FLOAT_COUNT_LIMIT, Histogram, bin_edges

F32 = np.float32
LEVELS = 256
FLT_MAX = float(np.finfo(F32).max)
_U32, _U64 = 2.0 ** -24, 2.0 ** -53
#: Stage 0 is skipped when the whole search is at most this many (candidate, bin) terms.
DIRECT_WORK = 1 << 20
_CHUNK = 1 << 21  # (bin, candidate) terms per stage-A block
_BLOCK_L = 64  # rows (lower thresholds) per stage-0 matrix product


@dataclass(frozen=True)
class L2Result:
    """Outcome of one search. `lower`/`upper` are None when no loss beat FLT_MAX (ncc then keeps
    the histogram's range). The counters show how much work each stage did."""

    lower: int | None
    upper: int | None
    loss: float
    candidates: int  # size of ncc's exhaustive search
    screened: int  # candidates whose float32 terms were formed (stage A)
    evaluated: int  # candidates summed sequentially in float32 (stage B)


def search_space(zb: int, bins: int = BINS, levels: int = LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """All (lower, upper) pairs ncc visits, in its order: lower ascending, upper descending."""
    lowers = np.arange(zb + 1, dtype=np.int64)
    n = np.maximum(0, bins - np.maximum(lowers + levels, zb) + 1)
    lo = np.repeat(lowers, n)
    start = np.repeat(np.cumsum(n) - n, n)
    up = bins - (np.arange(lo.size, dtype=np.int64) - start)
    return lo, up


def candidate_terms(edges: np.ndarray, counts: np.ndarray, bins_idx: np.ndarray,
                    lowers: np.ndarray, uppers: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """ncc's per-bin loss terms, float64 [len(bins_idx), len(lowers)], formed bit-exactly:
    e = p_i - (qlo + qstep * idx) in float32, then e^2 (exact in double) times c_i (rounded once)."""
    qlo = edges[lowers]
    qstep = (edges[uppers] - qlo) / F32(levels - 1)
    p = edges[bins_idx][:, None]
    r = (p - qlo) / qstep  # float32
    # roundf(r) == floor(r + 0.5) in double for r >= 0; negative r rounds to <= 0 and clamps to 0.
    idx = np.clip(np.floor(r.astype(np.float64) + 0.5), 0, levels - 1).astype(F32)
    e = (p - (qlo + qstep * idx)).astype(np.float64)
    return e * e * counts[bins_idx][:, None]


def sequential_sum(terms: np.ndarray) -> np.ndarray:
    """d = float(double(d) + t) over the rows in order, per column: ncc's `float d; d += ...`."""
    d = np.zeros(terms.shape[1], F32)
    for row in terms:
        d = (d.astype(np.float64) + row).astype(F32)
    return d


def l2_losses(edges: np.ndarray, counts: np.ndarray, lowers: np.ndarray, uppers: np.ndarray,
              levels: int = LEVELS) -> np.ndarray:
    """ncc's float32 loss of each candidate. Empty bins are skipped: they add an exact 0."""
    nz = np.flatnonzero(counts)
    return sequential_sum(candidate_terms(edges, counts, nz, lowers, uppers, levels))


@lru_cache(maxsize=4)
def _mu2(bins: int, levels: int) -> np.ndarray:
    """mu_W(k)^2 [k = 0..bins-1, W = levels..bins], 0 where k > W; float32 (exact, <= 2^20)."""
    k = np.arange(bins, dtype=np.int64)[:, None]
    w = np.arange(levels, bins + 1, dtype=np.int64)[None, :]
    r = ((levels - 1) * k) % w
    mu = np.minimum(r, w - r)
    out = np.where(k <= w, mu * mu, 0).astype(F32)
    out.setflags(write=False)
    return out


def _clip_losses(c: np.ndarray, lowers: np.ndarray, uppers: np.ndarray) -> np.ndarray:
    """sum_{i<L} c_i (L-i)^2 + sum_{i>U} c_i (i-U)^2 from int64 prefix sums (exact), as float64."""
    i = np.arange(c.size, dtype=np.int64)
    zero = np.zeros(1, np.int64)
    c0, c1, c2 = (np.concatenate([zero, np.cumsum(x), np.cumsum(x)[-1:]]) for x in (c, i * c, i * i * c))
    L, U = lowers, uppers
    left = L * L * c0[L] - 2 * L * c1[L] + c2[L]
    d0, d1, d2 = c0[-1] - c0[U + 1], c1[-1] - c1[U + 1], c2[-1] - c2[U + 1]
    return (left + (U * U * d0 - 2 * U * d1 + d2)).astype(np.float64)


def _inner_losses(c: np.ndarray, lowers: np.ndarray, uppers: np.ndarray, levels: int) -> np.ndarray:
    """sum_{k=0..W} c_{L+k} mu_W(k)^2 for candidates sorted by L: a float32 Hankel(c) @ mu^2 product
    per block of L over the columns (W) the block needs. All terms are >= 0, so the result is
    within a relative bins * 2^-24 of the exact sum."""
    bins = c.size
    mu2 = _mu2(bins, levels)
    padded = np.concatenate([c, np.zeros(bins, c.dtype)]).astype(F32)
    hankel = np.lib.stride_tricks.sliding_window_view(padded, bins)
    out = np.empty(lowers.size, np.float64)
    cuts = np.searchsorted(lowers, np.arange(0, int(lowers[-1]) + _BLOCK_L + 1, _BLOCK_L))
    for a, b in pairwise(cuts):
        if a == b:
            continue
        L, W = lowers[a:b], uppers[a:b] - lowers[a:b]
        rows, row_of = np.unique(L, return_inverse=True)
        cols, col_of = np.unique(W, return_inverse=True)
        depth = min(bins, int(cols[-1]) + 1)  # mu_W(k) = 0 for k > W
        if cols.size * 2 < cols[-1] - cols[0] + 1:
            m = mu2[:depth, cols - levels]
        else:
            m = mu2[:depth, cols[0] - levels:cols[-1] - levels + 1]
            col_of = W - cols[0]
        out[a:b] = (hankel[rows, :depth] @ m)[row_of, col_of]
    return out


def real_losses(counts: np.ndarray, lowers: np.ndarray, uppers: np.ndarray,
                levels: int = LEVELS) -> np.ndarray:
    """E(L, U) of stage 0 (real arithmetic, units of interval^2) for candidates sorted by L."""
    c = np.minimum(counts, FLOAT_COUNT_LIMIT).astype(np.int64)
    return _clip_losses(c, lowers, uppers) + _inner_losses(c, lowers, uppers, levels) / float((levels - 1) ** 2)


def loss_bounds(e: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on ncc's float32 loss, in units of I^2, from E = `real_losses` (module docstring).

    The lower bound is non-decreasing in E, so a lower bound of E gives one of the loss too."""
    c = np.minimum(counts, FLOAT_COUNT_LIMIT)
    bins, nz = c.size, np.count_nonzero(c)
    kappa = 32 * bins * _U32
    gamma = nz * (_U32 + _U64) / (1 - nz * _U32) + 4 * _U32
    eps = 1.01 * bins * _U32  # the float32 matrix product; float64 sums are far below
    root_n = float(np.sqrt(c.sum(dtype=np.float64)))
    low = np.maximum(0.0, e * (1 - eps) - 2 * kappa * root_n * np.sqrt(e * (1 + eps))) * (1 - gamma)
    high = (np.sqrt(e * (1 + eps)) + kappa * root_n) ** 2 * (1 + gamma)
    return low, high


def _stage0(counts: np.ndarray, lowers: np.ndarray, uppers: np.ndarray,
            levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, loss lower bounds in units of I^2) of the candidates that may be optimal."""
    c = np.minimum(counts, FLOAT_COUNT_LIMIT).astype(np.int64)
    coarse = np.flatnonzero((lowers % 16 == 0) & (uppers % 16 == 0))
    coarse = coarse if coarse.size else np.arange(1)
    best = loss_bounds(real_losses(c, lowers[coarse], uppers[coarse], levels), c)[1].min()
    keep = np.flatnonzero(loss_bounds(_clip_losses(c, lowers, uppers), c)[0] <= best)
    low, high = loss_bounds(real_losses(c, lowers[keep], uppers[keep], levels), c)
    sure = low <= min(best, high.min())
    return keep[sure], low[sure]


def l2_threshold(counts: np.ndarray, lo: float, hi: float, levels: int = LEVELS,
                 direct_work: int = DIRECT_WORK) -> L2Result:
    """ncc's optimal (lower, upper) bin pair for `counts` over the fixed-up range [lo, hi]
    (`fixup_range` output: lo <= 0 <= hi, which the error bounds of stage 0 rely on)."""
    if not lo <= 0.0 <= hi:
        raise ValueError(f"l2_threshold needs a fixed-up range containing 0, got [{lo}, {hi}]")
    h = Histogram(lo, hi, len(counts), np.asarray(counts, np.int64))
    bins = h.bins
    edges = bin_edges(lo, h.interval, bins)
    fc = h.float_counts()
    lowers, uppers = search_space(h.zero_bin, bins, levels)
    total = lowers.size
    nz = np.flatnonzero(fc)
    if nz.size == 0:  # every loss is 0: the first candidate wins
        return L2Result(int(lowers[0]), int(uppers[0]), 0.0, total, 0, 1)
    if total * nz.size > direct_work:
        keep, low = _stage0(h.counts, lowers, uppers, levels)
        order = np.argsort(low, kind="stable")
        keep, low = keep[order], low[order] * float(h.interval) ** 2
    else:
        keep, low = np.arange(total), np.zeros(total)
    gamma = nz.size * (_U32 + _U64) / (1 - nz.size * _U32) + 1e-12
    sums = np.full(keep.size, np.inf)  # stage A, in growing blocks: the optimum tends to come early
    a, step, best = 0, 64, np.inf
    while a < keep.size and low[a] <= best:
        k = keep[a:a + step]
        sums[a:a + step] = candidate_terms(edges, fc, nz, lowers[k], uppers[k], levels).sum(axis=0)
        best = min(best, float(sums[a:a + step].min()) * (1 + gamma))
        a, step = a + step, min(2 * step, max(64, _CHUNK // nz.size))
    screened = int(np.isfinite(sums).sum())
    final = np.sort(keep[sums * (1 - gamma) <= best])
    losses = l2_losses(edges, fc, lowers[final], uppers[final], levels)  # stage B
    best_loss = losses.min()
    if not best_loss < FLT_MAX:
        return L2Result(None, None, float(best_loss), total, screened, final.size)
    j = final[int(np.flatnonzero(losses == best_loss)[0])]
    return L2Result(int(lowers[j]), int(uppers[j]), float(best_loss), total, screened, final.size)


def l2_range(hist: Histogram, levels: int = LEVELS) -> tuple[float, float]:
    """The l2-optimal range [p_L, p_U] of a histogram, or its own range if nothing was chosen."""
    res = l2_threshold(hist.counts, hist.lo, hist.hi, levels)
    if res.lower is None:
        return hist.lo, hist.hi
    edges = hist.edges()
    return float(edges[res.lower]), float(edges[res.upper])
