"""Parameters of one quantized KPU layer (kpu_semantics.md §4.3), computed the way nncase v0.2 does.

Given a float `KpuConv2D` (weights W, bias b, clamp [a_lo, a_hi], optional function f) and the
calibrated ranges of its input X, its pre-activation output Y and its final output Z:

1. input:   (z_x, s_x) = qparam(X); the 3x3 border is filled with pad_value = z_x.
2. weights: every output channel is first scaled by e_oc to fill the layer's range (a per-channel
            scale the BN multiplier undoes), then one (z_w, s_w) quantizes all of them.
3. conv:    arg_x = -z_w, arg_w = -z_x, arg_add = k*k*z_w*z_x, so acc = sum (x - z_x)(w - z_w).
4. BN:      y = (acc*mul >> shift) + add = (conv + b) * s_act_in, where s_act_in = s_y*2^up carries
            up to `up` extra fraction bits into the activation stage.
5. act:     f on [xf_min, xf_max] approximated by 15 linear segments; output (z_z, s_z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kcc.eval.kernels import kpu_activation
from kcc.ir.kpu_ops import KpuConv2D, KpuLayer
from kcc.quant.params import (QuantParam, fixup_range, get_fixed_mul, get_quant_param, get_range, range_param,
                               round_half_away)

F32 = np.float32
ACT_SAMPLES = 1024
ACT_SEGMENTS = 15  # + segment 0, the catch-all below the first knot
SEG0_X_START = -(1 << 35)  # raw 0x800000000 sign-extended (kmodel_v4.md §9.5)


@dataclass(frozen=True)
class LayerRanges:
    x: QuantParam  # input (fixed by whoever produces it: a previous layer or a quantize)
    y: tuple[float, float]  # conv + bias, clamped (what the activation table reads)
    z: tuple[float, float]  # output
    # Mean bias of the input, in input steps: the KPU's mean pools floor (sum/4, sum/16), so a map
    # pooled by the previous layer reads on average (k-1)/(2k) of a step low (k = window size).
    x_bias: float = 0.0


def equalize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale each output channel to fill the whole layer's weight range; returns (scaled W, e)."""
    t_lo, t_hi = fixup_range(*get_range(w))
    # e_oc = min(T.hi/R.hi, T.lo/R.lo) over the finite positive ratios: a channel with no negative
    # (positive) weights is scaled by its positive (negative) side alone, as ncc's min/max rules do.
    e = np.ones(w.shape[0], np.float32)
    for oc in range(w.shape[0]):
        r_lo, r_hi = fixup_range(*get_range(w[oc]))
        ratios = [F32(t) / F32(r) for t, r in ((t_hi, r_hi), (t_lo, r_lo)) if r != 0 and t / r > 0]
        if ratios:
            e[oc] = min(ratios)
    scaled = (w.astype(F32) * e.reshape(-1, *([1] * (w.ndim - 1)))).astype(F32)
    return scaled, e


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
    return QuantParam(int(round(zp)), float(F32(1.0 / step)))


def piecewise_linear(x: np.ndarray, y: np.ndarray, segments: int = ACT_SEGMENTS):
    """Merge the len(x)-1 segments between samples down to `segments` (kpu_semantics.md §4.3.5).

    Repeatedly merges the first adjacent pair with the smallest |slope difference|; the merged
    segment keeps the left start and intercept and ends where the right one ended. float32 like nncase.
    Returns (start, slope, intercept) arrays.
    """
    start = x[:-1].astype(F32)
    stop = x[1:].astype(F32)
    inter = y[:-1].astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = ((y[1:] - y[:-1]) / (x[1:] - x[:-1])).astype(F32)
    while len(start) > segments:
        diff = np.abs(slope[:-1] - slope[1:])
        diff = np.where(np.isnan(diff), np.inf, diff)
        j = int(np.argmin(diff))  # first minimum
        y_stop = F32((stop[j + 1] - start[j + 1]) * slope[j + 1] + inter[j + 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            slope[j] = F32((y_stop - inter[j]) / F32(stop[j + 1] - start[j]))
        stop[j] = stop[j + 1]
        start, stop, slope, inter = (np.delete(a, j + 1) for a in (start, stop, slope, inter))
    return start, slope, inter


def activation_table(op: KpuConv2D, yq: QuantParam, zq: QuantParam, act_in: float) -> np.ndarray:
    """[16, 4] int64 rows (x_start, mul, shift, bias) of the layer's activation table."""
    a_lo, a_hi = op.act
    xf_min = F32(min(max(F32(-yq.zero_point / F32(yq.scale)), a_lo), a_hi))
    xf_max = F32(min(max(F32((255 - yq.zero_point) / F32(yq.scale)), a_lo), a_hi))
    step = F32((xf_max - xf_min) / F32(ACT_SAMPLES - 1))
    xs = (xf_min + np.arange(ACT_SAMPLES, dtype=F32) * step).astype(F32)
    ys = kpu_activation(op.fn, xs)
    start, slope, inter = piecewise_linear(xs, ys)
    table = np.zeros((16, 4), np.int64)
    table[0] = (SEG0_X_START, 0, 0, 0)
    act_in32 = F32(act_in)
    for i in range(len(start)):
        x_start = int(round_half_away(float(F32(start[i] * act_in32))))
        fm = get_fixed_mul(float(F32(slope[i] / F32(act_in32 / F32(zq.scale)))), 16, 20, True)
        bias = int(np.clip(round_half_away(float(F32(inter[i] * F32(zq.scale) + F32(zq.zero_point)))), 0, 255))
        table[i + 1] = (x_start, fm.rounded_mul, fm.shift, bias)
    for i in range(len(start) + 1, 16):  # unused segments never match (x_start near 2^35)
        table[i] = ((1 << 35) - 1, 0, 0, 255)
    return table


def balanced_up(total_shift: int) -> int:
    """Extra fraction bits `up` carried from the BN stage into the activation stage.

    The layer must realise y = acc * so with so ~ m0 * 2^-total_shift (21-bit m0). The BN shift
    field holds at most 15 (4 bits) and the BN shift cannot be negative, so up <= total_shift and
    the BN multiplier keeps 21 - max(0, total_shift - up - 15) significant bits; the activation
    multiplier (16-bit, shift <= 20) keeps min(21 - up, 15) bits; and the BN stage floors, so `up`
    fraction bits bound that bias by 2^-up of an output step.
    ncc takes up = max(0, total_shift - 15): a 21-bit BN multiplier but, for a typical up = 13,
    an 8-bit activation multiplier (a systematic 0.2 % scale error per layer that compounds), and
    no fraction bits at all when total_shift <= 15 (a -0.5 step bias per layer). kcc maximises the
    smaller of the two multipliers' precisions and, among equals, takes the up closest to 6.
    """
    def bits(up: int) -> int:
        return min(21 - max(0, total_shift - up - 15), 21 - up, 15)

    candidates = range(0, max(total_shift, 0) + 1)
    return max(candidates, key=lambda up: (bits(up), -abs(up - 6)))


def kpu_layer(op: KpuConv2D, w: np.ndarray, b: np.ndarray, r: LayerRanges) -> KpuLayer:
    """Quantize one float KPU layer into its encoded parameters."""
    k = op.kernel
    xq = r.x
    yq = range_param(r.y)
    zq = range_param(r.z)
    grid = weight_grid(w)
    if grid is not None:
        w_eq, e, wq = w.astype(F32), np.ones(w.shape[0], F32), grid
    else:
        w_eq, e = equalize_weights(w)
        wq = get_quant_param(*get_range(w_eq))
    w_u8 = wq.quantize(w_eq)

    s_a = F32(F32(xq.scale) * F32(wq.scale))
    so = F32(F32(yq.scale) / s_a)
    m0 = get_fixed_mul(float(so), 22, 255, True)
    up = balanced_up(m0.shift)
    corr = float(F32(F32(m0.rounded_mul) / F32(m0.mul))) if m0.mul else 1.0
    post = corr * math.pow(2.0, up)  # double, as nncase promotes pow(float, int)
    s_act_in = float(yq.scale) * post
    bn = np.zeros((w.shape[0], 3), np.int64)
    for oc in range(w.shape[0]):
        fm = get_fixed_mul(float(F32(float(so) * post / float(e[oc]))), 22, 15, True)
        # the input's floor bias, seen through this channel's weights: acc misses x_bias * sum(w - z_w)
        acc_bias = r.x_bias * float(np.sum(w_u8[oc].astype(np.int64) - wq.zero_point))
        add = float(b[oc]) * s_act_in + acc_bias * float(so) * post / float(e[oc])
        bn[oc] = (fm.rounded_mul, fm.shift, int(round_half_away(add)))
    # arg_add is per input channel: the KPU multiplies it by the channels in the group (§3 step 2)
    return KpuLayer(
        kernel=k, depthwise=op.depthwise, pool=op.pool, pad_value=xq.zero_point,
        arg_x=-wq.zero_point, arg_w=-xq.zero_point, arg_add=k * k * wq.zero_point * xq.zero_point,
        weights=w_u8, bn=bn, act_table=activation_table(op, yq, zq, s_act_in),
        out_q=(zq.zero_point, zq.scale))
