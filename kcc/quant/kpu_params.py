"""Parameters of one quantized KPU layer (kpu_semantics.md §4.3), computed the way nncase v0.2 does.

Given a float `FloatKpuConv` (weights W, bias b, clamp [a_lo, a_hi], optional function f) and the
calibrated ranges of its input X, its pre-activation output Y and its final output Z:

1. input:   (z_x, s_x) = qparam(X); the 3x3 border is filled with pad_value = z_x.
2. weights: every output channel is first scaled by e_oc to fill the layer's range (a per-channel
            scale, negative for a channel turned over, that the BN multiplier undoes), then one
            (z_w, s_w) quantizes all of them: to the nearest code, or, with the calibration's
            moments of the input, for the least output error, each channel's mean error taken off
            its bias (kcc.quant.weight_rounding).
3. conv:    arg_x = -z_w, arg_w = -z_x, arg_add = k*k*z_w*z_x, so acc = sum (x - z_x)(w - z_w).
4. BN:      y = (acc*mul >> shift) + add = (conv + b) * s_act_in, where s_act_in = s_y*2^up carries
            up to `up` extra fraction bits into the activation stage.
5. act:     f on [xf_min, xf_max] approximated by 15 linear segments; output (z_z, s_z).

A layer whose activation is only a clamp (identity, ReLU, ReLU6: most layers) takes an exact path
instead (`clamp_bn`, `clamp_table`): the BN stage targets the *output* grid with up to 20 fraction
bits and a 22-bit multiplier, and the table is one slope-1 segment (multiplier 1, shift = the
fraction bits) between two constants; per channel, the add (and if need be the multiplier) is
chosen so that the output steps at exactly the accumulators where round-half-up of
(acc + bias) * s_z/(s_x s_w) steps (`clamp_bn`). Each output is then what TFLite's integer kernels
compute: a pre-quantized model runs as its own uint8 reference does, bit for bit, and a calibrated
one loses nothing beyond the grids' own rounding.
(nncase targets the pre-activation grid with a 15-segment table fitted to samples; that floors away
up to 2^-up of a step per layer and rounds each segment's intercept.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kcc.eval.kernels import kpu_activation
from kcc.ir.kpu_ops import FloatKpuConv, QuantKpuLayer
from kcc.passes.residual_kpu import STACK_LIMIT  # |codes - 128| of the stack's weights (no channel turned)
from kcc.quant.params import (
    QuantParam,
    get_fixed_mul,
    get_quant_param,
    get_range,
    range_param,
    round_half_away,
)
from kcc.quant.weight_grid import channel_grids, weight_grid
from kcc.quant.weight_rounding import PatchMoments, round_weights
from kcc.target.quant_rules import fixup_range

F32 = np.float32
ACT_SAMPLES = 1024
ACT_SEGMENTS = 15  # + segment 0, the catch-all below the first knot
SEG0_X_START = -(1 << 35)  # raw 0x800000000 sign-extended (kmodel_v4.md §9.5)
UNUSED_X_START = (1 << 35) - 1  # a segment no BN output exceeds
ACT_SHIFT_MAX = 20  # nncase never emits larger activation shifts (kpu_semantics.md §4.3); stay within
BN_MUL_MAX = (1 << 23) - 1  # norm_mul is a signed 24-bit field (kmodel_v4.md §9.4)
BN_SHIFT_MAX = 15  # norm_shift is 4 bits
Y_LIMIT = 1 << 30  # |BN output|: x_start is s36, but the silicon's BN width is unknown (kpu_semantics.md §10 q2): stay in 32 bits
BN_ADD_LIMIT = (1 << 31) - 1  # norm_add is a signed 32-bit field (kmodel_v4.md §9.4)


@dataclass(frozen=True)
class LayerRanges:
    x: QuantParam  # input (fixed by whoever produces it: a previous layer or a quantize)
    y: tuple[float, float]  # conv + bias, clamped (what the activation table reads)
    z: tuple[float, float]  # output
    # Mean bias of the input, in input steps: the KPU's mean pools floor (sum/4, sum/16), so a map
    # pooled by the previous layer reads on average (k-1)/(2k) of a step low (k = window size).
    x_bias: float = 0.0
    # Steps added to the output before it is rounded: the floors of the mean pools that average its
    # codes later, taken in advance where nothing after them can (kcc.quant.floors `floor_debts`).
    z_bias: float = 0.0


def equalize_weights(w: np.ndarray, turn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Scale each output channel to fill the layer's weight grid; returns (scaled W, e), W[oc] * e[oc].
    With turn=False, ncc's rule (`--weight-equalization ncc`, below): every e > 0.

    The BN multiplier undoes e per channel, and it is signed (24 bits, kpu_semantics.md §1.1), so a
    channel may also be flipped (e < 0): every channel is turned so that its larger side is
    positive. The grid is then [tau, 1] * t_hi, with the ratio tau (<= 0) chosen among the
    channels' own ratios (negative side / positive side) for the least mean squared step relative
    to each channel's rms: a channel whose negative side fits is scaled by its positive side, the
    others by their negative side. (ncc scales every channel, unflipped, into the raw weights'
    global range: a depthwise kernel with a large centre of either sign then uses about half the
    codes. Measured over the reference models' layers: 0.6-1.3 dB less weight rounding noise on
    dense layers, 0.9-4.8 dB on depthwise ones; end to end in docs/kpu.md.)"""
    if not turn:
        return _ncc_equalization(w)
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    hi = np.maximum(flat.max(axis=1, initial=0.0), 0.0)
    lo = np.minimum(flat.min(axis=1, initial=0.0), 0.0)
    sign = np.where(hi >= -lo, 1.0, -1.0)
    low = np.where(sign > 0, lo, -hi)  # the smaller side, made negative
    # the larger side, made positive; a channel spans at least 0.01 (fixup_range, as ncc), so
    # that a nearly dead one (weights of 1e-34 in ulffd) is not blown up by 1e34
    peak = np.where(sign > 0, hi, -lo)
    top = np.maximum(peak, low + 0.01)
    live = np.any(flat != 0, axis=1)
    e = np.ones(w.shape[0], F32)
    if live.any():
        rho = low[live] / top[live]
        rms = np.sqrt(np.mean(flat[live] ** 2, axis=1))
        taus = np.unique(rho)
        # per candidate tau (rows) and channel: the step relative to the channel's rms (as if its
        # peak filled the grid: a channel widened to 0.01 would otherwise weigh ~1e33 times more)
        fill = np.where(rho[None, :] >= taus[:, None], 1.0, taus[:, None] / np.where(rho < 0, rho, -1.0)[None, :])
        with np.errstate(divide="ignore"):  # tau = 0 leaves no room for a negative side: infinite cost
            cost = np.mean(((1.0 - taus[:, None]) / fill * (peak[live] / rms)[None, :]) ** 2, axis=1)
        tau = float(taus[int(np.argmin(cost))])
        t_hi = float(top.max())
        scale = np.where(rho >= tau, t_hi / top[live], tau * t_hi / np.where(rho < 0, low[live], -1.0))
        e[live] = (sign[live] * scale).astype(F32)
    scaled = (w.astype(F32) * e.reshape(-1, *([1] * (w.ndim - 1)))).astype(F32)
    return scaled, e


def _ncc_equalization(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ncc's rule: e_oc = min(T.hi/R.hi, T.lo/R.lo) over the finite positive ratios, T the whole
    layer's range and R the channel's (both fixup_range): a channel with no negative (positive)
    weights is scaled by its positive (negative) side alone."""
    t_lo, t_hi = fixup_range(*get_range(w))
    e = np.ones(w.shape[0], F32)
    for oc in range(w.shape[0]):
        r_lo, r_hi = fixup_range(*get_range(w[oc]))
        ratios = [F32(t) / F32(r) for t, r in ((t_hi, r_hi), (t_lo, r_lo)) if r != 0 and t / r > 0]
        if ratios:
            e[oc] = min(ratios)
    return (w.astype(F32) * e.reshape(-1, *([1] * (w.ndim - 1)))).astype(F32), e


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


def activation_table(op: FloatKpuConv, yq: QuantParam, zq: QuantParam, act_in: float) -> np.ndarray:
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


def clamp_bounds(act: tuple[float, float], zq: QuantParam) -> tuple[int, int]:
    """The clamp [a_lo, a_hi] as output codes, rounded like TFLite's quantized activation bounds."""
    def code(v: float, default: int) -> int:
        return default if not math.isfinite(v) else int(np.clip(round_half_away(v * zq.scale + zq.zero_point), 0, 255))
    return code(act[0], 0), code(act[1], 255)


def clamp_table(act: tuple[float, float], zq: QuantParam, up: int) -> np.ndarray:
    """Activation table of a clamp-only layer whose BN output is y = (value*s_z) * 2^up.

    z = z_z + round(y / 2^up), clamped to the clamp's codes [lo, hi]: segment 0 gives lo; segment 1
    starts at the code lo (an integer number of steps, so shifting by it keeps the rounding) with
    slope 1 (multiplier 1, shift up: exact); segment 2 gives hi above the code hi. Segments are
    chosen by y > x_start (strict), and at y == x_start both neighbours agree."""
    lo, hi = clamp_bounds(act, zq)
    table = np.zeros((16, 4), np.int64)
    table[0] = (SEG0_X_START, 0, 0, lo)
    table[1] = ((lo - zq.zero_point) << up, 1, up, lo)
    table[2] = ((hi - zq.zero_point) << up, 0, 0, hi)
    table[3:] = (UNUSED_X_START, 0, 0, 255)
    return table


def _acc_bound(w_u8: np.ndarray, z_w: int, z_x: int) -> np.ndarray:
    """Per output channel, the largest |acc| = |sum (x - z_x)(w - z_w)| any uint8 input can give."""
    d = np.abs(w_u8.reshape(w_u8.shape[0], -1).astype(np.int64) - z_w).sum(axis=1)
    return d * max(z_x, 255 - z_x)


def bn_fixed_mul(v: float) -> tuple[int, int]:
    """(mul, shift) with mul * 2^-shift closest to v > 0: the largest shift <= 15 keeping |mul| in the
    24-bit field, in float64 (nncase's get_fixed_mul keeps 21 bits, in float32)."""
    shift = max(0, min(BN_SHIFT_MAX, math.floor(math.log2(BN_MUL_MAX / v))))
    mul = round(v * 2.0 ** shift)
    while mul > BN_MUL_MAX and shift > 0:
        shift -= 1
        mul = round(v * 2.0 ** shift)
    return min(mul, BN_MUL_MAX), shift


def accumulator_bias(b: np.ndarray, acc_per_unit: np.ndarray) -> np.ndarray:
    """The bias in accumulator units, b * s_x s_w e. A pre-quantized model's bias is an int32 on that
    grid (TFLite adds it to the accumulator), stored here as float32: snap it back when it is within
    float32 noise of an integer, so that the multiplier alone decides each rounding."""
    v = b.astype(np.float64) * acc_per_unit
    snapped = np.round(v)
    return np.where(np.abs(v - snapped) <= np.maximum(1e-3, 1e-6 * np.abs(v)), snapped, v)


def _reference_thresholds(r: float, b_acc: float, z_z: int, lo: int, hi: int) -> np.ndarray:
    """T[k - lo - 1] for k = lo+1..hi: the least accumulator whose exact output
    z_z + floor((acc + b_acc)*r + 1/2) (round half up, as TFLite's integer kernels) is >= k."""
    k = np.arange(lo + 1, hi + 1, dtype=np.float64)
    return np.ceil((k - z_z - 0.5) / r - b_acc).astype(np.int64)


def _table_thresholds(z_z: int, lo: int, hi: int, up: int) -> np.ndarray:
    """Y[k - lo - 1]: the least BN output y for which clamp_table's output is >= k. Segment 1 gives
    lo + carry_shift_banker(y - x_start, up), whose ties round to even (kpu_semantics.md §3 step 4)."""
    j = np.arange(1, hi - lo + 1, dtype=np.int64)  # k - lo
    x_start = (lo - z_z) << up
    if up == 0:
        return x_start + j
    return x_start + (j - 1) * (1 << up) + (1 << (up - 1)) + ((j - 1) % 2 == 0)


_NUDGES = np.array([0, *(s * i for i in range(1, 65) for s in (1, -1))], np.int64)  # 0, 1, -1, 2, -2...


def _exact_bn(mul: int, shift: int, t: np.ndarray, y: np.ndarray, acc_max: int, nominal: int) -> tuple[int, int] | None:
    """(mul + d, add), the smallest nudge |d| <= 64 and the add closest to `nominal`, for which
    floor(acc*mul/2^shift) + add crosses every output threshold y[k] exactly at the reference
    accumulator t[k], for all |acc| <= acc_max; None if there is none."""
    reached = t <= acc_max  # k is reached: y(max(t, -acc_max)) >= Y
    below = t - 1 >= -acc_max  # k is missed just below: y(min(t - 1, acc_max)) < Y
    a_on = np.maximum(t[reached], -acc_max)
    a_off = np.minimum(t[below] - 1, acc_max)
    for muls in (np.array([mul], np.int64), mul + _NUDGES[1:]):  # the nominal multiplier alone first
        muls = muls[(muls > 0) & (muls <= BN_MUL_MAX)]
        found = _first_feasible(muls, shift, a_on, y[reached], a_off, y[below], nominal)
        if found is not None:
            return found
    return None


def _first_feasible(muls, shift, a_on, y_on, a_off, y_off, nominal) -> tuple[int, int] | None:
    low = np.max(y_on - ((a_on[None, :] * muls[:, None]) >> shift), axis=1, initial=-(1 << 62))
    high = np.min(y_off - 1 - ((a_off[None, :] * muls[:, None]) >> shift), axis=1, initial=1 << 62)
    ok = np.nonzero(low <= high)[0]
    if len(ok) == 0:
        return None
    i = int(ok[0])
    return int(muls[i]), min(max(nominal, int(low[i])), int(high[i]))


def clamp_bn(so: float, e: np.ndarray, b_acc: np.ndarray, acc_max: np.ndarray, z_z: int, lo: int,
             hi: int) -> tuple[np.ndarray, int, int]:
    """BN words (mul, shift, add) per channel for clamp_table, `up`, and how many channels are exact.

    y = floor(acc*mul/2^shift) + add ~ (acc + b_acc) * so/e * 2^up, with `so` = s_z/(s_x s_w) in
    float64 (output steps per accumulator unit, channel oc scaled by 1/e[oc] by weight equalization)
    and `b_acc` the bias in accumulator units; `up` is the most fraction bits (<= 20) for which every
    channel's |y| stays within Y_LIMIT and every add within its 32-bit field.

    A 24-bit multiplier is exact to ~1e-5 of a step at the top of the range: outputs closer than that
    to a half would round the wrong way, and one such flip in an early layer changes a classifier's
    outputs downstream. But only the <= 255 accumulators where the output steps up matter, so each
    channel's (mul, add) is chosen so that the KPU's steps fall at exactly the same accumulators as
    the exact rounding's, checked in integers over every |acc| <= acc_max; the multiplier is nudged
    by up to +-64 when the add alone cannot do it (rare)."""
    r_all = so / e.astype(np.float64)
    y_max = float(np.max((acc_max + np.abs(b_acc)) * r_all)) + 1.0  # |y| / 2^up, in output steps
    add_max = float(np.max(np.abs(b_acc) * r_all)) + 1.0  # |add| / 2^up
    first = min(ACT_SHIFT_MAX, max(0, math.floor(math.log2(min(Y_LIMIT / y_max, BN_ADD_LIMIT / add_max))) - 1))
    for up in range(first, -1, -1):
        y_thr = _table_thresholds(z_z, lo, hi, up)
        bn = np.zeros((len(e), 3), np.int64)
        exact = 0
        fits = True
        for oc in range(len(e)):
            r = so / float(e[oc])
            mul, shift = bn_fixed_mul(r * 2.0 ** up)
            half = 0.5 if shift > 0 else 0.0
            add = int(math.floor(float(b_acc[oc]) * r * 2.0 ** up + half + 0.5))
            t = _reference_thresholds(r, float(b_acc[oc]), z_z, lo, hi)
            a_max = int(acc_max[oc])
            found = _exact_bn(mul, shift, t, y_thr, a_max, add)
            if found is not None:
                (mul, add), exact = found, exact + 1
            bn[oc] = (mul, shift, add)
            if a_max * mul / 2.0 ** shift + abs(add) >= Y_LIMIT or abs(add) > BN_ADD_LIMIT:
                fits = False
                break
        if fits:
            return bn, up, exact
    raise ValueError("KPU layer: the batch-norm output cannot fit 36 bits")


@dataclass(frozen=True)
class LayerWeights:
    """A KPU layer's weights in 8 bits: W[oc] * e[oc] ~ (codes[oc] - grid.zero_point) / grid.scale,
    and the bias that goes with them (less each channel's mean rounding error, with moments)."""

    codes: np.ndarray  # uint8, W's shape
    grid: QuantParam
    e: np.ndarray  # per output channel scale (equalization), undone by the BN multiplier
    bias: np.ndarray

    def dequantized(self) -> np.ndarray:
        """The weights the layer computes with, in W's units (float64)."""
        shape = (-1, *([1] * (self.codes.ndim - 1)))
        return self.grid.dequantize(self.codes).astype(np.float64) / self.e.astype(np.float64).reshape(shape)


def layer_weights(w: np.ndarray, b: np.ndarray, depthwise: bool, moments: PatchMoments | None = None,
                  turn_channels: bool = True) -> LayerWeights:
    """W's codes on the layer's one weight grid: its own grid when it has one (exact), else each
    channel equalized (`equalize_weights`) and rounded; with the `moments` of its input
    (calibration), for the least output error, each channel's mean error off its bias
    (kcc.quant.weight_rounding)."""
    grid = weight_grid(w)
    per_channel = channel_grids(w) if grid is None else None
    if grid is not None:
        return LayerWeights(grid.quantize(w.astype(F32)), grid, np.ones(w.shape[0], F32), b)
    if per_channel is not None:
        wq, e = per_channel  # e stays float64: the BN multipliers must undo it exactly
        w_eq = (w.astype(np.float64) * e.reshape(-1, *([1] * (w.ndim - 1)))).astype(F32)
        return LayerWeights(wq.quantize(w_eq), wq, e, b)
    w_eq, e = equalize_weights(w, turn_channels)
    wq = get_quant_param(*get_range(w_eq))
    codes, mean_err = round_weights(w_eq, wq, moments, depthwise)
    if moments is not None:  # bias correction (without moments b stays as it is, bit for bit)
        b = (b.astype(np.float64) - mean_err / e.astype(np.float64)).astype(b.dtype)
    return LayerWeights(codes, wq, e, b)


STACK_ZERO = 128  # the weight zero point of a layer over a multi-grid stack: codes - 128 in [-128, 127]


@dataclass(frozen=True)
class StackedWeights:
    """The weights of a 1x1 KPU layer over a multi-grid stack (kcc.ir.kpu_ops.KpuStack), on the grid
    of the buffer's one input offset, the `base` part's (zero point z_b, scale s_b)."""

    weights: LayerWeights
    base: QuantParam
    acc_offset: np.ndarray  # int64 per output channel: sum_i (w_i - z_w)(z_b - z_i), into the bias
    exact: np.ndarray  # bool per output channel: its one weight on a part other than the base is an integer


def stacked_weights(w: np.ndarray, b: np.ndarray, parts: list[tuple[QuantParam, int]]) -> StackedWeights:
    """Codes for W [OC, C, 1, 1] over a stack of `parts` (grid, channels), the base being the last.

    The KPU reads every input channel as (q - z_b), with one offset. A channel i of part j holds
    x_i = (q - z_j)/s_j (scales in levels per unit), and (q - z_j) = (q - z_b) + (z_b - z_j): the
    layer applies W' = W * s_b/s_j to the codes as if they were on the base grid, and each output
    channel's accumulator takes sum_i (w_i - z_w)(z_b - z_j) more, an integer, exact in the bias.

    A residual add's skip part holds one non-zero weight per output channel (d = s_b/s_j in base
    units); its code is kept an exact integer k_c by choosing the channel's scale e_c = k_c/d (the
    BN multiplier undoes e_c, kcc.quant.kpu_params.clamp_bn), k_c as large as the channel's other
    weights allow within +-127 (kcc.passes.residual_kpu). Then a skip value
    reaches the output through one exact rounding of (q - z_j) * s_z/s_j. A channel whose other
    weights are so large against d that k_c would be 0 is equalized as usual (not exact)."""
    oc = w.shape[0]
    base = parts[-1][0]
    flat = w.reshape(oc, -1).astype(np.float64)
    ratio = np.concatenate([np.full(c, float(base.scale) / float(q.scale)) for q, c in parts])
    zeros = np.concatenate([np.full(c, q.zero_point, np.int64) for q, c in parts])
    wb = flat * ratio[None, :]  # W' in base units
    n_base = parts[-1][1]
    skip = wb[:, :-n_base] if n_base < wb.shape[1] else np.zeros((oc, 0))
    general = np.abs(wb[:, -n_base:]).max(axis=1, initial=0.0)
    e = np.ones(oc)
    exact = np.zeros(oc, bool)
    for c in range(oc):
        nz = np.flatnonzero(skip[c])
        if len(nz) == 1:
            d = abs(float(skip[c, nz[0]]))
            k_max = STACK_LIMIT if general[c] == 0 else min(STACK_LIMIT, math.floor(STACK_LIMIT * d / general[c]))
            if k_max >= 1:
                k = _best_skip_code(wb[c, -n_base:], d, k_max)
                e[c], exact[c] = k / d, True
                continue
        peak = float(np.abs(wb[c]).max(initial=0.0))
        e[c] = STACK_LIMIT / peak if peak > 0 else 1.0
    grid = QuantParam(STACK_ZERO, 1.0)
    q = np.clip(round_half_away(wb * e[:, None]), -STACK_LIMIT - 1, STACK_LIMIT).astype(np.int64)
    acc_offset = (q * (base.zero_point - zeros)[None, :]).sum(axis=1)
    codes = (q + STACK_ZERO).astype(np.uint8).reshape(w.shape)
    return StackedWeights(LayerWeights(codes, grid, e, b), base, acc_offset, exact)


def _best_skip_code(general: np.ndarray, d: float, k_max: int) -> int:
    """The skip code k in [1, k_max] whose scale k/d rounds the other weights least (rms, in their own
    units), the largest among equals: an identity next to the skip ([I I], two KPU layers' outputs
    added) then gets the integer pair closest to the two grids' ratio."""
    k = np.arange(1, k_max + 1, dtype=np.float64)
    v = general[None, :] * (k / d)[:, None]
    err = np.sqrt(np.mean((np.round(v) - v) ** 2, axis=1)) * d / k if general.size else np.zeros(len(k))
    return int(k[len(k) - 1 - int(np.argmin(err[::-1] + 0.0))]) if err.size else 1


def kpu_layer(op: FloatKpuConv, w: np.ndarray, b: np.ndarray, r: LayerRanges,
              moments: PatchMoments | None = None, turn_channels: bool = True,
              stack: list[tuple[QuantParam, int]] | None = None) -> QuantKpuLayer:
    """Quantize one float KPU layer into its encoded parameters (`layer_weights`, with
    `turn_channels` for equalize_weights). With `stack`, the (grid, channels) of the parts of a
    multi-grid input (kcc.ir.kpu_ops.KpuStack; 1x1 and clamp only): `stacked_weights`, and the
    input offset is the last part's (r.x is not used)."""
    k = op.kernel
    yq = range_param(r.y)
    zq = range_param(r.z)
    acc_offset = np.zeros(w.shape[0], np.int64)
    if stack is None:
        xq = r.x
        lw = layer_weights(w, b, op.depthwise, moments, turn_channels)
    else:
        if k != 1 or op.depthwise or op.fn is not None:
            raise ValueError("a KPU layer over a multi-grid stack must be a 1x1 conv with a clamp only")
        sw = stacked_weights(w, b, stack)
        xq, lw, acc_offset = sw.base, sw.weights, sw.acc_offset
    w_u8, wq, e, b = lw.codes, lw.grid, lw.e, lw.bias
    # the input's floor bias, seen through each channel's weights: acc misses x_bias * sum(w - z_w)
    acc_bias = r.x_bias * (w_u8.reshape(w_u8.shape[0], -1).astype(np.int64) - wq.zero_point).sum(axis=1)
    acc_bias = acc_bias + acc_offset
    conv = dict(kernel=k, depthwise=op.depthwise, pool=op.pool, pad_value=xq.zero_point,
                arg_x=-wq.zero_point, arg_w=-xq.zero_point, arg_add=k * k * wq.zero_point * xq.zero_point,
                weights=w_u8)
    # arg_add is per input channel: the KPU multiplies it by the channels in the group (§3 step 2)

    if op.fn is None:  # clamp only: the exact path (module docstring)
        # in the channel's own orientation: a flipped channel (e < 0) accumulates -acc, which its
        # negated multiplier turns back (floor(acc * -m) = floor(-acc * m), so the exact steps hold)
        flip, e_abs = np.where(e < 0, -1, 1), np.abs(e.astype(np.float64))
        acc_per_unit = float(xq.scale) * float(wq.scale) * e_abs  # accumulator units per real unit
        so = zq.scale / (float(xq.scale) * float(wq.scale))
        b_acc = accumulator_bias(b, acc_per_unit) + flip * acc_bias + r.z_bias * e_abs / so
        lo, hi = clamp_bounds(op.act, zq)
        bn, up, _ = clamp_bn(so, e_abs, b_acc, _acc_bound(w_u8, wq.zero_point, xq.zero_point), zq.zero_point, lo, hi)
        bn[:, 0] *= flip
        return QuantKpuLayer(**conv, bn=bn, act_table=clamp_table(op.act, zq, up), out_q=(zq.zero_point, zq.scale))

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
        add = float(b[oc]) * s_act_in + float(acc_bias[oc]) * float(so) * post / float(e[oc])
        bn[oc] = (fm.rounded_mul, fm.shift, int(round_half_away(add)))
    return QuantKpuLayer(**conv, bn=bn, act_table=activation_table(op, yq, zq, s_act_in), out_q=(zq.zero_point, zq.scale))
