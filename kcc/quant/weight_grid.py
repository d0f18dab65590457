"""The grid a model's weights may already lie on (pre-quantized models, quantization-aware training):
rounding onto it is lossless, so such weights keep their codes instead of being equalized and
re-rounded (kcc.quant.kpu_params) and are on the KPU whatever their range (kcc.passes.legalize_kpu).
"""

from __future__ import annotations

import numpy as np

from kcc.quant.params import QuantParam


def on_own_grid(w: np.ndarray) -> bool:
    """Weights a pre-quantized model brought: per tensor (weight_grid) or per channel (channel_grids,
    for a FC's [out, in] matrix too: axis 0 is the output channel either way)."""
    return weight_grid(w) is not None or channel_grids(w) is not None


def weight_grid(w: np.ndarray) -> QuantParam | None:
    """The uint8 grid the weights already lie on, if any (models exported from quantization-aware
    training, or dequantized from a uint8 .tflite): w = (q - z)/s for integers 0 <= q <= 255.

    Quantizing on that grid is lossless, while per-channel equalization would move every weight
    off it and add rounding error; so such layers keep their grid.
    """
    u = np.unique(w.astype(np.float64))
    if len(u) < 2 or len(u) > 256:
        return None
    step = float(np.diff(u).min())
    # the smallest gap of two float32 weights is the step only to ~1e-6; a least-squares fit over
    # every weight's code gets it to float32 precision (and keeps the checks below meaningful at z ~ 255)
    k = np.round(u / step)
    if np.any(k):
        step = float(np.dot(u, k) / np.dot(k, k))
    zp = -u[0] / step
    q = u / step + round(zp)
    if abs(zp - round(zp)) > 1e-3 or np.abs(q - np.round(q)).max() > 1e-3 or q.min() < -1e-3 or q.max() > 255 + 1e-3:
        return None
    # the scale stays float64: fitted over every weight it is exact to ~1e-9, which the exact clamp
    # path's multipliers need (a float32 would be 6e-8 off: flips of outputs 1e-5 of a step from a half)
    return QuantParam(int(round(zp)), 1.0 / step)


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
        step = float(np.dot(a, k) / np.dot(k, k))  # least squares over every weight, as weight_grid
        if np.abs(a / step - np.round(a / step)).max() <= 1e-3:
            return step
    return None


def channel_grids(w: np.ndarray) -> tuple[QuantParam, np.ndarray] | None:
    """int8 per-channel weights (w[oc] = s_oc * q, |q| <= 127) as one uint8 grid: (grid, e) with
    w[oc] * e[oc] = s * q exactly on the grid (zero point 128, step s = the largest s_oc). The KPU has
    one weight grid per layer but a batch-norm multiplier per channel, which undoes e[oc]: the model's
    own weights, losslessly, like weight_grid for per-tensor ones. None if a channel is off such a grid."""
    steps = []
    for oc in range(w.shape[0]):  # float weights fail at their first channel
        steps.append(_symmetric_step(w[oc]))
        if steps[-1] is None and np.any(w[oc]):
            return None
    if all(st is None for st in steps):
        return None
    ref = max(st for st in steps if st is not None)
    e = np.array([ref / st if st is not None else 1.0 for st in steps], np.float64)
    return QuantParam(128, 1.0 / ref), e
