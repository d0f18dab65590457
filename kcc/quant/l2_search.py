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
   E is only computed where the clipped tails alone (a lower bound of E, separable: a
   non-decreasing function of L plus a non-increasing one of U, so each L keeps an interval of U)
   do not already exceed the best upper bound found on a coarse grid (L, U multiples of 16).
   The ~zb * bins candidates are never materialised.
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


def _expand(lowers: np.ndarray, u_from: np.ndarray, u_to: int) -> tuple[np.ndarray, np.ndarray]:
    """(L, U) pairs, per row L (ascending) U from `u_to` down to that row's u_from (ncc's order)."""
    n = np.maximum(0, u_to - u_from + 1)
    lo = np.repeat(lowers, n)
    start = np.repeat(np.cumsum(n) - n, n)
    return lo, u_to - (np.arange(lo.size, dtype=np.int64) - start)


def _row_starts(zb: int, bins: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Every lower threshold L = 0..zb and the smallest upper ncc tries for it, max(L + levels, zb)."""
    lowers = np.arange(zb + 1, dtype=np.int64)
    return lowers, np.maximum(lowers + levels, zb)


def search_space(zb: int, bins: int = BINS, levels: int = LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """All (lower, upper) pairs ncc visits, in its order: lower ascending, upper descending."""
    return _expand(*_row_starts(zb, bins, levels), bins)


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


def _tails(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clipping losses from int64 prefix sums (exact), as float64, for k = 0..bins:
    below[k] = sum_{i<k} c_i (k-i)^2 (non-decreasing), above[k] = sum_{i>k} c_i (i-k)^2
    (non-increasing)."""
    i = np.arange(c.size, dtype=np.int64)
    k = np.arange(c.size + 1, dtype=np.int64)
    zero = np.zeros(1, np.int64)
    c0, c1, c2 = (np.concatenate([zero, np.cumsum(x), np.sum(x, keepdims=True)]) for x in (c, i * c, i * i * c))
    below = k * k * c0[:-1] - 2 * k * c1[:-1] + c2[:-1]  # c*[k] = sum over i < k
    d0, d1, d2 = c0[-1] - c0[1:], c1[-1] - c1[1:], c2[-1] - c2[1:]  # sums over i > k
    above = k * k * d0 - 2 * k * d1 + d2
    return below.astype(np.float64), above.astype(np.float64)


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
    below, above = _tails(c)
    inner = _inner_losses(c, lowers, uppers, levels) / float((levels - 1) ** 2)
    return below[lowers] + above[uppers] + inner


def _bound_terms(counts: np.ndarray) -> tuple[float, float, float, float]:
    """(kappa sqrt(N), gamma, eps, kappa) of the stage-0 bounds for these counts."""
    c = np.minimum(counts, FLOAT_COUNT_LIMIT)
    bins, nz = c.size, np.count_nonzero(c)
    kappa = 32 * bins * _U32
    gamma = nz * (_U32 + _U64) / (1 - nz * _U32) + 4 * _U32
    eps = 1.01 * bins * _U32  # the float32 matrix product; float64 sums are far below
    return kappa * float(np.sqrt(c.sum(dtype=np.float64))), gamma, eps, kappa


def loss_bounds(e: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on ncc's float32 loss, in units of I^2, from E = `real_losses` (module docstring).

    The lower bound is non-decreasing in E, so a lower bound of E gives one of the loss too."""
    kn, gamma, eps, _ = _bound_terms(counts)
    low = np.maximum(0.0, e * (1 - eps) - 2 * kn * np.sqrt(e * (1 + eps))) * (1 - gamma)
    high = (np.sqrt(e * (1 + eps)) + kn) ** 2 * (1 + gamma)
    return low, high


def _largest_e(best: float, counts: np.ndarray) -> float:
    """The largest E whose lower bound is <= best: lower(E) = (a x^2 - b x)(1 - gamma) with x = sqrt(E),
    a = 1 - eps, b = 2 kappa sqrt(N (1 + eps)), solved for x (with a little slack upwards)."""
    kn, gamma, eps, _ = _bound_terms(counts)
    a, b = 1 - eps, 2 * kn * np.sqrt(1 + eps)
    x = (b + np.sqrt(b * b + 4 * a * best / (1 - gamma))) / (2 * a)
    return float(x * x) * (1 + 1e-9)


def _stage0(counts: np.ndarray, zb: int, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lowers, uppers, loss lower bounds in units of I^2) of the candidates that may be optimal.

    A coarse grid (L, U multiples of 16) bounds the optimum from above; the clipping tails alone
    (a lower bound of E, separable in L and U) then leave, per L, only U >= some cut: above(U) is
    non-increasing. E is computed for those candidates only."""
    c = np.minimum(counts, FLOAT_COUNT_LIMIT).astype(np.int64)
    bins = c.size
    lowers, u_min = _row_starts(zb, bins, levels)
    grid = lowers % 16 == 0
    gl, gu = _expand(lowers[grid], u_min[grid], bins)
    on_grid = gu % 16 == 0
    gl, gu = (gl[on_grid], gu[on_grid]) if on_grid.any() else (lowers[:1], np.array([bins]))
    best = loss_bounds(real_losses(c, gl, gu, levels), c)[1].min()
    below, above = _tails(c)
    room = _largest_e(best, c) - below[lowers]  # above(U) must not exceed this
    cut = np.searchsorted(-above, -room, side="left")  # first U with above(U) <= room
    L, U = _expand(lowers, np.maximum(u_min, cut), bins)
    low, high = loss_bounds(real_losses(c, L, U, levels), c)
    sure = low <= min(best, high.min())
    return L[sure], U[sure], low[sure]


def _candidate_count(zb: int, bins: int, levels: int) -> int:
    _, u_min = _row_starts(zb, bins, levels)
    return int(np.maximum(0, bins - u_min + 1).sum())


def l2_threshold(counts: np.ndarray, lo: float, hi: float, levels: int = LEVELS,
                 direct_work: int = DIRECT_WORK) -> L2Result:
    """ncc's optimal (lower, upper) bin pair for `counts` over the fixed-up range [lo, hi]
    (`fixup_range` output: lo <= 0 <= hi, which the error bounds of stage 0 rely on)."""
    if not lo <= 0.0 <= hi:
        raise ValueError(f"l2_threshold needs a fixed-up range containing 0, got [{lo}, {hi}]")
    h = Histogram(lo, hi, len(counts), np.asarray(counts, np.int64))
    bins, zb = h.bins, h.zero_bin
    edges = bin_edges(lo, h.interval, bins)
    fc = h.float_counts()
    total = _candidate_count(zb, bins, levels)
    nz = np.flatnonzero(fc)
    if nz.size == 0:  # every loss is 0: the first candidate wins
        return L2Result(0, bins, 0.0, total, 0, 1)
    if total * nz.size > direct_work:
        lowers, uppers, low = _stage0(h.counts, zb, levels)
        order = np.argsort(low, kind="stable")
        lowers, uppers, low = lowers[order], uppers[order], low[order] * float(h.interval) ** 2
    else:
        lowers, uppers = search_space(zb, bins, levels)
        low = np.zeros(lowers.size)
    gamma = nz.size * (_U32 + _U64) / (1 - nz.size * _U32) + 1e-12
    sums = np.full(lowers.size, np.inf)  # stage A, in growing blocks: the optimum tends to come early
    a, step, best = 0, 64, np.inf
    while a < lowers.size and low[a] <= best:
        b = a + step
        sums[a:b] = candidate_terms(edges, fc, nz, lowers[a:b], uppers[a:b], levels).sum(axis=0)
        best = min(best, float(sums[a:b].min()) * (1 + gamma))
        a, step = b, min(2 * step, max(64, _CHUNK // nz.size))
    screened = int(np.isfinite(sums).sum())
    near = np.flatnonzero(sums * (1 - gamma) <= best)
    near = near[np.lexsort((-uppers[near], lowers[near]))]  # ncc's visiting order
    losses = l2_losses(edges, fc, lowers[near], uppers[near], levels)  # stage B
    best_loss = losses.min()
    if not best_loss < FLT_MAX:
        return L2Result(None, None, float(best_loss), total, screened, near.size)
    j = near[int(np.flatnonzero(losses == best_loss)[0])]
    return L2Result(int(lowers[j]), int(uppers[j]), float(best_loss), total, screened, near.size)


def l2_range(hist: Histogram, levels: int = LEVELS) -> tuple[float, float]:
    """The l2-optimal range [p_L, p_U] of a histogram, or its own range if nothing was chosen."""
    res = l2_threshold(hist.counts, hist.lo, hist.hi, levels)
    if res.lower is None:
        return hist.lo, hist.hi
    edges = hist.edges()
    return float(edges[res.lower]), float(edges[res.upper])
