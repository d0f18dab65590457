"""A conv the KPU does not take, as uint8 convs on the CPU (issue #16: never a float round trip).

A conv left on the CPU (a 5x5 depthwise no KPU form was taken for, a depthwise channel whose weights
no KPU layer's grid holds, a conv over more channels than the KPU reads) used to run in float:
dequantize its input, nncase's float conv2d (~64 cycles a multiply-add, kcc.target.k210), quantize
its output for the KPU layer after it. nncase's quantized_conv2d (kmodel_v4.md §8.15,
kpu_semantics.md §4.4) computes it on the codes, in int32, exactly:

    value = bias_q[o] + sum (x - z_x)(w - z_w),   bias_q = round(b * s_x * s_w)
    out   = clamp(carry_half_up(value * mul, shift) + z_y, 0, 255),   mul * 2^-shift ~ s_y / (s_x * s_w)

(s: levels per unit), ~33 cycles a multiply-add, a quarter of the bytes for its weights, its input
and output, and no dequantize / quantize around it. Only where its input already is codes (a KPU
layer's output, the camera's pixels): a float input (a PReLU or an add on the CPU) would be rounded
to 8 bits first, which the float conv reads unrounded. And only where 8-bit weights add little to the
output's own rounding: with the calibration's moments of the input (WEIGHT_NOISE_SHARE), else by a
coarse bound on the input's range (WEIGHT_NOISE_STEPS); the weights are rounded as a KPU layer's
are (kcc.quant.weight_rounding: each error moved onto the taps not yet rounded, each channel's mean
error off its bias). One node has one weight grid; the channels of a
depthwise conv have weights of very different sizes (kcc.passes.channel_split), so the output
channels are cut into runs whose weights share a grid (`channel_runs`), one node a run: each run
reads its channels of x in place (NCHW channels are contiguous) and writes its block of one
concatenation in place (kcc.emit.storage). The fused clamp is the output grid's, as in ncc's
quantized matmul (kcc.quant.cpu_matmul).
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Node
from kcc.passes.kernel_cost import channel_runs
from kcc.quant.cpu_matmul import int_requantize
from kcc.quant.params import QuantParam, get_quant_param, get_range
from kcc.quant.weight_rounding import PatchMoments, round_weights

#: without moments (a stride-2 or dense conv, no calibration patches), a backstop: a run whose weight
#: rounding would add more than this many output steps of noise (rms, for an input spread evenly over
#: its grid's whole range: an overestimate, BlazeHand's 672-channel 5x5s come to 12-45 "steps" by it
#: while their moments say 0.3-0.4 of the output's rounding) stays a float conv; it only catches
#: weights two orders of magnitude beyond what the output grid was made for
WEIGHT_NOISE_STEPS = 64.0
#: with the calibration's moments of its input (a stride-1 "same" depthwise), the conv stays float
#: when its 8-bit weights add more output error power, on average over its channels, than this many
#: times the output's own rounding (step^2 / 12), i.e. twice its rms. Measured: BlazeHand's stem
#: channels that channel_split keeps on the CPU for their weights (up to 76) 16-51 times it, its
#: 672-channel 5x5s 0.3-0.4 (median), random N(0, 0.3) 5x5 weights 0.6-0.8 (the e2e tests)
WEIGHT_NOISE_SHARE = 4.0


def clamp_holds(n: Node, y_q: QuantParam) -> bool:
    """The output grid clamps at least as much as conv n's fused activation: its real range lies within
    the activation's, to half a step (a wider grid, e.g. a concatenation's, would let values through)."""
    lo, hi = n.op.act
    g_lo, g_hi = y_q.real_range
    half = 0.5 / y_q.scale
    return g_lo >= lo - half and g_hi <= hi + half


def _box_grid(w: np.ndarray) -> QuantParam | None:
    """The grid of weights that are all one positive value (a box filter: kcc.passes.global_mean's
    window of 1/(H*W)): that value is code 255, exactly. nncase's range rule would widen the degenerate
    range to 0.1 (kcc.target.quant_rules.fixup_range) and round 1/49 to code 43, 0.5 % off; these
    weights are kcc's own (a uint8 CPU conv), not a KPU layer's."""
    v = float(w.flat[0])
    return QuantParam(0, 255.0 / v) if v > 0 and np.all(w == w.flat[0]) else None


def quant_convs(n: Node, x_q: QuantParam, y_q: QuantParam,
                moments: PatchMoments | None = None) -> list[tuple[KO.QuantConv, np.ndarray]]:
    """The QuantConv nodes (with their weight codes) computing conv n from its input on grid x_q to
    its output on grid y_q, one a channel run (module docstring); none when a run's weights round
    too coarsely for the output grid (WEIGHT_NOISE_STEPS). With the `moments` of its input
    (calibration), the weights are rounded as a KPU layer's are, each channel's mean error off its
    bias (kcc.quant.weight_rounding)."""
    op: O.Conv2D = n.op
    w, b = n.inputs[1].data, n.inputs[2].data
    depthwise = op.groups != 1
    out, errors = [], []
    # a run reads its channels in place: one block of x in batch 1 only
    runs = channel_runs(w) if n.shape[0] == 1 or not depthwise else [(0, w.shape[0])]
    taps = int(np.prod(w.shape[1:]))
    x_rms = max(abs(v) for v in x_q.real_range) / np.sqrt(3.0)
    for o0, o1 in runs:
        w_q = _box_grid(w[o0:o1]) or get_quant_param(*get_range(w[o0:o1]))
        if (1.0 / w_q.scale) / np.sqrt(12.0) * np.sqrt(taps) * x_rms > WEIGHT_NOISE_STEPS / y_q.scale:
            return []  # weights too large for one 8-bit grid against the output's: the float conv
        codes, mean_err = round_weights(w[o0:o1], w_q, moments, depthwise, o0)
        bias, fixed = int_requantize(b[o0:o1].astype(np.float64) - mean_err, x_q, w_q, y_q)
        out.append((KO.QuantConv(o0, o1, depthwise, op.stride, op.padding, op.dilation, -x_q.zero_point,
                                 -w_q.zero_point, bias, fixed.rounded_mul, fixed.shift,
                                 (y_q.zero_point, y_q.scale)), codes))
        errors.append(w_q.dequantize(codes).astype(np.float64) - w[o0:o1])
    if depthwise and moments is not None and moments.outer is not None:
        noise = _channel_noise(np.concatenate(errors), moments) * (12.0 * float(y_q.scale) ** 2)
        if noise.mean() > WEIGHT_NOISE_SHARE:
            return []
    return out


def _channel_noise(err: np.ndarray, moments: PatchMoments) -> np.ndarray:
    """Each depthwise channel's output error power from its weights' rounding errors err [C, 1, k, k]:
    e^T (S + mu mu^T) e over its input patches (the calibration's moments), before bias correction."""
    c = err.shape[0]
    e = err.reshape(c, -1)
    mu = moments.mean().reshape(c, -1)
    power = np.empty(c)
    for ch in range(c):
        s = moments.covariance(ch)
        power[ch] = e[ch] @ s @ e[ch] + (e[ch] @ mu[ch]) ** 2
    return power
