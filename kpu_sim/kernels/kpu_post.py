"""Batch-norm then activation of a block of KPU accumulators (kpu_semantics.md §3 steps 3-4).

    y = ((acc * bn_mul) >> bn_shift) + bn_add          (int64, floor shift, no rounding)
    out = activation(y)                                 (kpu_activation.py)

The straightforward path computes y and calls `activate`. The fused path, used when a block of
channels shares one bn_shift s and the activation has a step lookup (`StepLut`, base b, bucket
width 2^k), folds the add into the product and the two shifts into one: with

    y2 = acc * bn_mul + ((bn_add - b) << s)

floor division commutes with adding a multiple of 2^s, so y = (y2 >> s) + b, the lookup key
(y - b) >> k is y2 >> (s + k), and y >= threshold  <=>  y2 >= (threshold - b) << s. That is the
same integer result with half the passes over the block. It needs |y2| < 2^62 (no int64
wrap-around the C++ would not also have), which the caller guarantees from static bounds.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from kpu_sim.kernels.kpu_activation import (
    LUT_DOMAIN,
    StepLut,
    activate,
    activate_exact,
    step_lut,
)
from kpu_sim.kernels.kpu_layer import Activation, cached

I64 = np.int64
_SAFE = 1 << 62


@lru_cache(maxsize=1024)
def _shifted_thresholds(lut: StepLut, shift: int) -> np.ndarray:
    """(threshold - base) << shift per bucket; buckets without a breakpoint keep a never-reached value."""
    never = lut.threshold >= (1 << 62)
    scaled = (lut.threshold - lut.base) << I64(shift)
    return np.where(never, np.iinfo(I64).max, scaled)


def fused_bound_ok(acc_bound: int, mul: np.ndarray, add: np.ndarray, shift: np.ndarray, act: Activation) -> bool:
    """Whether y2 cannot leave (-2^62, 2^62) for |acc| <= acc_bound (so the fused path is exact)."""
    lut = cached(act, lambda: step_lut(act))
    if lut is None or not len(mul):
        return False
    term = int(np.abs(mul).max()) * acc_bound
    offset = (int(np.abs(add).max()) + abs(lut.base)) << int(shift.max())
    return term + offset < _SAFE


def batch_norm_activate(acc: np.ndarray, mul: np.ndarray, shift: np.ndarray, add: np.ndarray, act: Activation,
                        fused: bool) -> np.ndarray:
    """(rows, pixels) int64 accumulators (modified in place) -> uint8 outputs; one row per channel.

    `fused` says the static bound of `fused_bound_ok` holds for this layer.
    """
    s = int(shift[0]) if len(shift) else 0
    if not fused or acc.size == 0 or np.any(shift != s):
        acc *= mul[:, None]
        acc >>= shift[:, None]
        acc += add[:, None]
        return activate(acc, act)
    lut: StepLut = cached(act, lambda: step_lut(act))
    y2 = acc
    y2 *= mul[:, None]
    y2 += (add - lut.base)[:, None] << I64(s)
    lo, hi = (int(y2.min()) >> s) + lut.base, (int(y2.max()) >> s) + lut.base
    if lo < lut.lowest or hi > LUT_DOMAIN:
        return activate_exact((y2 >> s) + lut.base, act)  # also raises the "no segment" error
    key = y2 >> (s + lut.k)
    np.maximum(key, 0, out=key)
    if hi - lut.base >> lut.k >= len(lut.low):
        np.minimum(key, len(lut.low) - 1, out=key)
    out = np.take(lut.low, key)
    out += y2 >= np.take(_shifted_thresholds(lut, s), key)
    if hi >= lut.complex_from:
        where = np.nonzero(lut.complex[key])
        if where[0].size:
            out[where] = activate_exact((y2[where] >> s) + lut.base, act)
    return out
