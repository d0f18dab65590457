"""The KPU's 16-segment activation (kpu_semantics.md §3 step 4, §11 traps 1-2), exactly.

For a batch-norm output y (int64): pick the **highest index** i with y > x_start[i] (strict; the
table need not be sorted), then out = clamp(carry_shift_banker((y - x_start[i]) * mul[i],
shift[i]) + bias[i], 0, 255). If no segment qualifies nncase reads outside the table
(undefined); the simulator raises `SimulatorError`.

`activate_exact` evaluates that formula element by element (numpy, int64, wrap-around like
the C++). It is the reference and the fallback. `activate` first tries a step-function
lookup: for the tables ncc writes (non-negative slopes, shifts <= 31) the output as a function
of y is a non-decreasing step function on each segment's interval, so its breakpoints can be
computed once per table, exactly, and the per-element work becomes a bucketed table lookup.
`tests/kpu_sim/test_sim_kpu_activation.py` checks the two paths agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kcc.errors import SimulatorError
from kpu_sim.kernels.intmath import carry_shift_banker
from kpu_sim.kernels.kpu_layer import Activation, cached

I64 = np.int64
LUT_DOMAIN = 1 << 40  # the lookup path is used only for |y| <= 2^40: (y - x_start) * mul cannot overflow
_MAX_BUCKETS = 8192
_NEVER = I64(1 << 62)


def select_segment(y: np.ndarray, act: Activation) -> np.ndarray:
    """Index of the highest segment with y > x_start (int64 array); raises if none matches."""
    if act.is_sorted:
        # Non-decreasing starts: the qualifying segments are a prefix, so the highest one is
        # (number of starts < y) - 1; ties in x_start pick the later index, as `rbegin` does.
        idx = np.searchsorted(act.start, y, side="left").astype(I64) - 1
    else:
        idx = np.full(y.shape, -1, dtype=I64)
        for i, start in enumerate(act.start):
            idx[y > start] = i
    if idx.size and idx.min() < 0:
        bad = int(y.reshape(-1)[np.argmin(idx.reshape(-1))])
        raise SimulatorError(
            f"activation: value {bad} is not above any segment start (lowest x_start {int(act.start.min())}); "
            "nncase reads outside the table here (undefined)"
        )
    return idx


def activate_exact(y: np.ndarray, act: Activation) -> np.ndarray:
    """The §3 formula for every element of `y` (int64); returns uint8 of the same shape."""
    y = np.asarray(y, dtype=I64)
    idx = select_segment(y, act)
    v = (y - act.start[idx]) * act.mul[idx]  # int64, wraps like the C++ on overflow
    z = carry_shift_banker(v, act.shift[idx]) + act.add[idx]
    return np.clip(z, 0, 255).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class StepLut:
    """out(y) as a bucketed step function.

    Bucket j >= 1 covers [base + j*2^k, base + (j+1)*2^k); bucket 0 everything from `lowest`
    (the lowest y with a defined output) up to base + 2^k. A bucket holds at most one breakpoint
    where the level rises by exactly 1: out = low + (y >= threshold) (threshold = 2^62 when the
    level is constant). Buckets with more breakpoints, or another jump, are `complex`: their
    elements go through `activate_exact`. Every complex bucket lies at or above `complex_from`.
    """

    lowest: int
    base: int
    k: int
    threshold: np.ndarray  # int64 per bucket
    low: np.ndarray  # uint8 per bucket
    complex: np.ndarray  # bool per bucket
    complex_from: int  # lowest y that can fall in a complex bucket (2^62: none)

    def keys(self, y: np.ndarray, hi: int) -> np.ndarray:
        key = y - self.base
        key >>= self.k
        np.maximum(key, 0, out=key)
        if (hi - self.base) >> self.k >= len(self.low):
            np.minimum(key, len(self.low) - 1, out=key)
        return key

    def __call__(self, y: np.ndarray, key: np.ndarray) -> np.ndarray:
        out = np.take(self.low, key)
        out += y >= np.take(self.threshold, key)
        return out


def _segment_breaks(start: int, end: int | None, mul: int, shift: int, add: int) -> tuple[np.ndarray, np.ndarray]:
    """(first y, level) of every output level of one monotone segment active on (start, end].

    `end` None means +inf. With t = y - start >= 1, v = t*mul >= 0 and R = banker round of
    v / 2^shift (round half to even, as v >= 0), out = min(R + add, 255). R >= r holds from
    v >= V(r), with V(r) = r for shift 0 and V(r) = (r - 1)*2^s + 2^(s-1) + [r - 1 even]
    otherwise (a tie rounds up only when that gives an even r).
    """
    t_end = None if end is None else end - start
    if t_end is not None and t_end < 1:
        return np.zeros(0, I64), np.zeros(0, I64)
    first = min((mul if shift == 0 else _round_half_even(mul, shift)) + add, 255)  # level at t = 1
    if mul <= 0 or first >= 255:
        return np.array([start + 1], dtype=I64), np.array([first], dtype=I64)
    level = np.arange(first, 256, dtype=I64)  # level[0] = first, at t = 1
    r = level[1:] - add  # >= 1 because first >= add
    v_min = r if shift == 0 else ((r - 1) << shift) + (1 << (shift - 1)) + ((r - 1) % 2 == 0)
    t = np.concatenate([[1], np.maximum(1, -(-v_min // mul))])
    if t_end is not None:  # t is non-decreasing: keep the levels reached inside the interval
        keep = np.searchsorted(t, t_end, side="right")
        t, level = t[:keep], level[:keep]
    return start + t, level


def _round_half_even(v: int, s: int) -> int:
    q, f = divmod(v, 1 << s)
    half = 1 << (s - 1)
    return q + (1 if f > half or (f == half and q % 2) else 0)


_LUTS: dict[bytes, StepLut | None] = {}


def step_lut(act: Activation) -> StepLut | None:
    """`build_step_lut`, cached by table contents (many layers share one table)."""
    key = b"".join(a.tobytes() for a in (act.start, act.mul, act.shift, act.add))
    if key not in _LUTS:
        if len(_LUTS) > 4096:
            _LUTS.clear()
        _LUTS[key] = build_step_lut(act)
    return _LUTS[key]


def build_step_lut(act: Activation) -> StepLut | None:
    """The lookup form of `act`, or None if some reachable segment is not monotone increasing."""
    start = [int(s) for s in act.start]
    pieces = []
    for i in range(16):
        later = start[i + 1 :]
        end = min(later) if later else None
        if end is not None and end <= start[i]:
            continue  # never selected: a later segment starts at or below it
        if act.mul[i] < 0 or not 0 <= act.shift[i] <= 31:
            return None  # negative slope (biased rounding) or x86 shift quirks: not monotone
        pieces.append(_segment_breaks(start[i], end, int(act.mul[i]), int(act.shift[i]), int(act.add[i])))
    y_all = np.concatenate([p[0] for p in pieces])
    lv_all = np.concatenate([p[1] for p in pieces])
    order = np.lexsort((lv_all, y_all))  # by y, then level: the last of equal y is the highest level
    y_all, lv_all = y_all[order], lv_all[order]
    last_of_y = np.append(y_all[1:] != y_all[:-1], True)
    y_all, lv_all = y_all[last_of_y], lv_all[last_of_y]
    changes = np.insert(lv_all[1:] != lv_all[:-1], 0, True)
    ys, levels = y_all[changes], lv_all[changes]
    if ys[0] > LUT_DOMAIN:
        return None
    b, lv = ys, levels
    base = int(b[1]) if len(b) > 1 else int(b[0])
    span = max(0, int(min(b[-1], LUT_DOMAIN)) - base)
    k = 0
    while (span >> k) + 1 > _MAX_BUCKETS:
        k += 1
    buckets = (span >> k) + 1
    lo_edge = base + (np.arange(buckets, dtype=I64) << k)
    first = np.searchsorted(b, lo_edge, side="right") - 1  # break in force at the bucket start
    first[0] = 0  # bucket 0 starts at b[0] = lowest
    inner_lo = first + 1
    inner_hi = np.searchsorted(b, lo_edge + (I64(1) << k), side="left")  # breaks inside the bucket
    count = inner_hi - inner_lo
    low = lv[first]
    nxt = np.minimum(inner_lo, len(b) - 1)
    simple_step = (count == 1) & (lv[nxt] == low + 1)
    threshold = np.where(simple_step, b[nxt], _NEVER)
    complex_ = (count > 1) | ((count == 1) & ~simple_step)
    # (breaks above LUT_DOMAIN may sit past the last bucket: y never gets there)
    hits = np.flatnonzero(complex_)
    if not hits.size:
        complex_from = int(_NEVER)
    else:
        complex_from = int(b[0]) if hits[0] == 0 else int(lo_edge[hits[0]])
    return StepLut(int(b[0]), base, k, threshold, low.astype(np.uint8), complex_, complex_from)


def activate(y: np.ndarray, act: Activation) -> np.ndarray:
    """`activate_exact`, through the cached lookup when the table and the value range allow it."""
    lut = cached(act, lambda: step_lut(act))
    if lut is None or y.size == 0:
        return activate_exact(y, act)
    lo, hi = int(y.min()), int(y.max())
    if lo < lut.lowest or hi > LUT_DOMAIN:
        return activate_exact(y, act)  # also produces the "no segment" error
    key = lut.keys(y, hi)
    out = lut(y, key)
    if hi >= lut.complex_from:
        where = np.nonzero(lut.complex[key])
        if where[0].size:
            out[where] = activate_exact(y[where], act)
    return out
