"""Quantization facts the K210 path shares between its passes and its quantizer.

* `fixup_range`: nncase v0.2's fixup of every range before it becomes a quant param (kpu_semantics.md
  §4.1); `kcc.quant.params` builds every quant param on it, and `widest_weight_range` /
  `weights_reason` / `channels_over_threshold` compare the fixed-up weight ranges with
  --weights-quantize-threshold, as ncc does (kcc.passes.legalize_kpu, kcc.passes.channel_split).
* `shared_zero_point`: the grids of ranges that must share one zero point (a decomposed 5x5's channel
  groups as the batches of one KPU layer, whose pad value is one code): kcc.quant.policy gives them,
  kcc.passes.decompose_kernels weighs what they cost first.
* The uint8 grid a model's weights may already lie on (pre-quantized models, quantization-aware
  training): the KPU holds uint8 weights on one grid per layer and a batch-norm multiplier per
  channel, so such weights are represented exactly. `kcc.quant.weight_grid` turns these grids into
  quant params (the weights keep their codes); legalize_kpu puts such layers on the KPU whatever
  their range.

Pure numpy, in float32 where nncase computes in float32.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def fixup_range(lo: float, hi: float) -> tuple[float, float]:
    """Clamp to ±1000, give a degenerate range a minimum width, and make it contain 0 (float32)."""
    lo, hi = F32(max(lo, -1000.0)), F32(min(hi, 1000.0))
    r = F32(hi - lo)
    if r == 0:
        r = F32(0.1)
    elif r < F32(0.01):
        r = F32(0.01)
    hi = F32(lo + r)
    if hi < 0:
        hi = F32(0)
    if lo > 0:
        lo = F32(0)
    return float(lo), float(hi)


def on_own_grid(w: np.ndarray) -> bool:
    """Weights a pre-quantized model brought: per tensor (uint8_grid) or per channel
    (int8_channel_grids, for a FC's [out, in] matrix too: axis 0 is the output channel either way)."""
    return uint8_grid(w) is not None or int8_channel_grids(w) is not None


def uint8_grid(w: np.ndarray) -> tuple[int, float] | None:
    """(zero point z, scale s) of the uint8 grid the weights already lie on, if any (models exported
    from quantization-aware training, or dequantized from a uint8 .tflite): w = (q - z)/s for
    integers 0 <= q <= 255.

    Quantizing on that grid is lossless, while per-channel equalization would move every weight
    off it and add rounding error; so such layers keep their grid.
    """
    u = np.unique(w.astype(np.float64))
    if len(u) < 2 or len(u) > 256:
        return None
    gap = float(np.diff(u).min())
    # the smallest gap of two weights is the step, or a few steps when no two weights are on
    # neighbouring codes (kcc.passes.fine_weights' coarse layer: taps and a centre weight j/k)
    for n in range(1, MAX_SKIPPED_CODES + 2):
        grid = _grid_of(u, gap / n)
        if grid is not None:
            return grid
    return None


#: codes a grid's closest two weights may be apart beyond the next (`uint8_grid`)
MAX_SKIPPED_CODES = 7


def _grid_of(u: np.ndarray, step: float) -> tuple[int, float] | None:
    """(z, s) if the sorted distinct weights u lie on codes 0..255 of the grid of about `step`."""
    # the gap of two float32 weights is the step only to ~1e-6; a least-squares fit over every
    # weight's code gets it to float32 precision (and keeps the checks below meaningful at z ~ 255)
    k = np.round(u / step)
    if np.any(k):
        step = float(np.dot(u, k) / np.dot(k, k))
    zp = -u[0] / step
    q = u / step + round(zp)
    if (abs(zp - round(zp)) > 1e-3 or np.abs(q - np.round(q)).max() > 1e-3
            or q.min() < -1e-3 or q.max() > 255 + 1e-3):
        return None
    # the scale stays float64: fitted over every weight it is exact to ~1e-9, which the exact clamp
    # path's multipliers need (a float32 would be 6e-8 off: flips of outputs 1e-5 of a step from a half)
    return int(round(zp)), 1.0 / step


def _symmetric_step(wc: np.ndarray) -> float | None:
    """The step s of one channel's weights if they are s*q with integers |q| <= 127 (TFLite's symmetric
    int8 per-channel scheme, where the largest weight is exactly +-127 steps), else None."""
    a = np.abs(wc.astype(np.float64)).ravel()
    top = float(a.max())
    if top == 0.0:
        return None
    nonzero = np.unique(a[a > 0])
    for step in (top / 127, float(np.diff(np.concatenate([[0.0], nonzero])).min())):
        k = np.round(a / step)
        if k.max() > 127:
            continue
        step = float(np.dot(a, k) / np.dot(k, k))  # least squares over every weight, as uint8_grid
        if np.abs(a / step - np.round(a / step)).max() <= 1e-3:
            return step
    return None


def int8_channel_grids(w: np.ndarray) -> tuple[float, np.ndarray] | None:
    """int8 per-channel weights (w[oc] = s_oc * q, |q| <= 127) as one uint8 grid: (s, e) with
    w[oc] * e[oc] = s * q exactly on the grid of zero point 128 and step s = the largest s_oc. The KPU
    has one weight grid per layer but a batch-norm multiplier per channel, which undoes e[oc]: the
    model's own weights, losslessly, like uint8_grid for per-tensor ones. None if a channel is off
    such a grid."""
    steps = []
    for oc in range(w.shape[0]):  # float weights fail at their first channel
        steps.append(_symmetric_step(w[oc]))
        if steps[-1] is None and np.any(w[oc]):
            return None
    if all(st is None for st in steps):
        return None
    ref = max(st for st in steps if st is not None)
    e = np.array([ref / st if st is not None else 1.0 for st in steps], np.float64)
    return ref, e


def widest_weight_range(w: np.ndarray) -> float:
    """The widest per-output-channel weight range (fixed up like nncase's ranges).

    ncc compares the whole layer's range with --weights-quantize-threshold. kcc, like ncc, scales
    every output channel to the full 8-bit range and undoes it in the BN multiplier, so a channel's
    precision depends on its own range only: kcc compares the widest channel instead, and a layer
    with one outlier channel among small ones no longer falls back to the CPU.
    """
    flat = w.reshape(w.shape[0], -1)
    lo, hi = _fixup_ranges(flat.min(axis=1), flat.max(axis=1))
    return float(np.max(hi - lo))


def _fixup_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`fixup_range` of every (lo[i], hi[i]) at once, float32 step for float32 step (legalize asks for
    the widest channel of every conv many times), returned as float64 like fixup_range's floats."""
    lo = np.maximum(lo.astype(np.float64), -1000.0).astype(F32)
    hi = np.minimum(hi.astype(np.float64), 1000.0).astype(F32)
    r = (hi - lo).astype(F32)
    r = np.where(r == 0, F32(0.1), np.where(r < F32(0.01), F32(0.01), r)).astype(F32)
    hi = (lo + r).astype(F32)
    hi = np.where(hi < 0, F32(0), hi)
    lo = np.where(lo > 0, F32(0), lo)
    return lo.astype(np.float64), hi.astype(np.float64)


def channels_over_threshold(w: np.ndarray, threshold: float) -> list[bool]:
    """Per output channel of conv weights w [OC, ...]: whether its own range exceeds
    --weights-quantize-threshold `threshold` (what keeps the layer off the KPU, `weights_reason`)."""
    if on_own_grid(w):
        return [False] * w.shape[0]
    return [widest_weight_range(w[c:c + 1]) > threshold for c in range(w.shape[0])]


def weights_reason(w: np.ndarray, ranges_of: np.ndarray, threshold: float) -> str | None:
    """Why weights `w` (per-output-channel ranges taken over `ranges_of`) stay off the KPU, if they
    do: a range above --weights-quantize-threshold, unless they already lie on a grid."""
    rng = widest_weight_range(ranges_of)
    if rng <= threshold or on_own_grid(w):
        return None
    return (f"weights range {rng:.1f} > threshold {threshold:g} "
            f"(--weights-quantize-threshold {math.ceil(rng)} puts it on the KPU)")


def shared_zero_point(lo: np.ndarray, hi: np.ndarray) -> tuple[int, np.ndarray]:
    """(z, levels per unit a range) of the grids holding ranges [lo, hi] (each fixed up) that all
    have zero point z: a range's scale is the most its two sides allow (z levels below 0, 255 - z
    above), and z (1..254) the one with the least mean squared step (1 / scale) over the ranges."""
    fixed = [fixup_range(float(a), float(b)) for a, b in zip(lo, hi)]
    lo = np.array([a for a, _ in fixed], np.float64)
    hi = np.array([b for _, b in fixed], np.float64)
    z = np.arange(1, 255, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore"):
        levels = np.minimum(np.where(lo < 0, z / -lo, np.inf), np.where(hi > 0, (255.0 - z) / hi, np.inf))
    best = int(np.argmin(np.mean(1.0 / levels ** 2, axis=1)))
    return int(z[best, 0]), levels[best]


def zero_point_growth(lo: np.ndarray, hi: np.ndarray) -> float:
    """How much `shared_zero_point` widens the ranges' mean squared step against a grid each (its own
    zero point): 1.0 when nothing is lost."""
    fixed = np.array([fixup_range(float(a), float(b)) for a, b in zip(lo, hi)], np.float64)
    own = np.mean(((fixed[:, 1] - fixed[:, 0]) / 255.0) ** 2)
    _, levels = shared_zero_point(lo, hi)
    return float(np.mean(1.0 / levels ** 2) / own)
