"""Arithmetic corners of the quantizer that random data rarely reaches (kpu_semantics.md §4.2, §4.3).

The l2 loss snaps each bin to the candidate grid with C roundf (halves away from zero). On [-1, 1]
with 2048 bins and the candidate (0, 2046), bin 341 sits exactly half-way between two grid levels in
float32 (341 * 255 / 2046 = 42.5), and the two neighbours are not at the same float32 distance: the
rounding rule shows in the loss.
"""

from types import SimpleNamespace

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.quant.histogram import bin_edges, bin_interval
from kcc.quant.kpu_params import (
    LayerRanges,
    activation_table,
    balanced_up,
    kpu_layer,
    layer_weights,
    range_param,
)
from kcc.quant.l2_search import l2_losses
from kcc.quant.params import QuantParam, get_fixed_mul, round_half_away

F32 = np.float32


def ncc_candidate_loss(counts, lo, hi, lower, upper, levels=256):
    """ncc compute_l2 for one candidate, scalar float32 steps with roundf (kpu_semantics.md §4.2)."""
    bins = len(counts)
    lo, hi = F32(lo), F32(hi)
    interval = F32(F32(hi - lo) / F32(bins))
    p = [F32(lo + F32(interval * F32(i))) for i in range(bins)]
    qmin = F32(F32(F32(lower) * interval) + lo)
    qstep = F32(F32(F32(F32(F32(upper) * interval) + lo) - qmin) / F32(levels - 1))
    d = F32(0)
    for i in range(bins):
        if not counts[i]:
            continue
        r = float(F32(F32(p[i] - qmin) / qstep))
        idx = min(max(int(np.sign(r) * np.floor(abs(r) + 0.5)), 0), levels - 1)  # roundf
        e = float(F32(p[i] - F32(qmin + F32(qstep * F32(idx)))))
        d = F32(float(d) + e * e * float(counts[i]))
    return d


def test_l2_loss_rounds_grid_ties_away_from_zero():
    lo, hi, lower, upper = -1.0, 1.0, 0, 2046
    edges = bin_edges(lo, bin_interval(lo, hi))
    qstep = (edges[upper] - edges[lower]) / F32(255)
    tie = 341
    assert float((edges[tie] - edges[lower]) / qstep) == 42.5  # the precondition: an exact float32 tie
    counts = np.zeros(2048, np.int64)
    counts[tie] = 3
    counts[[0, 700, 2047]] = 1  # ordinary bins too
    got = l2_losses(edges, counts.astype(np.float64), np.array([lower]), np.array([upper]))
    assert F32(got[0]) == ncc_candidate_loss(counts, lo, hi, lower, upper)


def test_activation_segment_start_is_rounded_not_truncated():
    """§4.3 step 5: x_start = roundf(start * act_in) in float32. The first knot is the first sample,
    xf_min = -z_y/s_y = -100/3; times act_in = 2 that is -66.67, which rounds to -67 (-66 truncated)."""
    op = SimpleNamespace(act=(-np.inf, np.inf), fn=("leaky_relu", 0.1))
    table = activation_table(op, QuantParam(100, 3.0), QuantParam(10, 4.0), 2.0)
    assert table[1, 0] == -67


def test_bn_add_carries_the_rounding_of_the_first_fixed_point_multiplier():
    """kpu_semantics.md §4.3 step 4: post = float32(round(m0) / m0) * 2^up in double, where
    (m0, n0) = get_fixed_mul(so, 22, 255) and so = s_y / (s_x * s_w); bn_add = round(b * s_y * post).
    The correction is ~2^-22 relative, so it shows only in a large add: this layer (found by a search
    over random layers) is one where leaving it out moves bn_add by one."""
    w = np.array([[[[0.10036100447177887]]]], np.float32)
    b = np.array([15.786573550187514], np.float32)
    ranges = LayerRanges(x=QuantParam(0, 77.90166214497727), y=(-17.006155622421236, 17.006155622421236),
                         z=(-17.006155622421236, 17.006155622421236))
    layer = kpu_layer(KO.FloatKpuConv(1, fn=("leaky_relu", 0.1)), w, b, ranges)
    grid, yq = layer_weights(w, b, False).grid, range_param(ranges.y)
    so = F32(F32(yq.scale) / F32(F32(ranges.x.scale) * F32(grid.scale)))
    m0 = get_fixed_mul(float(so), 22, 255, True)
    up = balanced_up(m0.shift)
    assert m0.rounded_mul != m0.mul  # the multiplier really was rounded
    corrected = float(F32(F32(m0.rounded_mul) / F32(m0.mul))) * 2.0**up
    want = int(round_half_away(float(b[0]) * float(yq.scale) * corrected))
    without = int(round_half_away(float(b[0]) * float(yq.scale) * 2.0**up))
    assert want != without  # the case discriminates
    assert int(layer.bn[0][2]) == want
