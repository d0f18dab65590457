"""A residual add on the KPU (kcc.passes.residual_kpu): one 1x1 layer over [x; h], the two parts of
its input on different grids (kcc.quant.kpu_params.stacked_weights), run in kpu_sim against the
scalar KPU reference (kpu_reference.py), and against exact integer arithmetic:

* random weights: kpu_sim == the scalar reference, bit for bit, and the result within about a step
  of the float y = W h + x + b;
* W = 0, b = 0: the skip path alone, every code of x requantized exactly, z_z + round_half_up((q -
  z_x) * s_z/s_x), clamped; whatever h holds.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from kpu_reference import Layer, reference_layer, run_layer

from kcc.ir import kpu_ops as KO
from kcc.quant.kpu_params import LayerRanges, clamp_bounds, kpu_layer, stacked_weights
from kcc.quant.params import QuantParam, get_quant_param

rng = np.random.default_rng(316)


def _layer(q: KO.QuantKpuLayer, shape: tuple[int, int, int, int]) -> Layer:
    return Layer(in_shape=shape, out_c=q.weights.shape[0], weights=q.weights, k=1, pad_value=q.pad_value,
                 arg_x=q.arg_x, arg_w=q.arg_w, arg_add=q.arg_add,
                 bn=[tuple(int(v) for v in row) for row in q.bn],
                 act=[tuple(int(v) for v in row) for row in q.act_table])


def _requantized(codes: np.ndarray, xq: QuantParam, zq: QuantParam, lo: int = 0, hi: int = 255) -> np.ndarray:
    """z_z + round_half_up((q - z_x) * s_z/s_x) in exact rationals (the scales as the float32s they are)."""
    r = Fraction(float(np.float32(zq.scale))) / Fraction(float(np.float32(xq.scale)))
    out = np.vectorize(lambda q: zq.zero_point + int(np.floor((q - xq.zero_point) * r + Fraction(1, 2))))(codes)
    return np.clip(out, lo, hi).astype(np.uint8)


# (skip grid, h grid, output range): a finer, a coarser and an equal skip grid; a relu6 h
GRIDS = [
    (get_quant_param(-3.0, 5.0), get_quant_param(0.0, 6.0), (-9.0, 11.0)),
    (get_quant_param(-40.0, 25.0), get_quant_param(0.0, 6.0), (-45.0, 30.0)),
    (get_quant_param(-1.0, 1.5), get_quant_param(-1.0, 1.5), (-2.0, 2.5)),
    (get_quant_param(-0.5, 0.6), get_quant_param(0.0, 6.0), (-3.0, 3.0)),
]


# mean error against float, output steps (measured + ~10 %): ~0.35 where W keeps most of its grid;
# 0.93 with the skip grid 11x coarser than h's, where W gets ~10 codes (residual_kpu rejects that)
BARS = [0.42, 1.03, 0.39, 0.38]


@pytest.mark.parametrize("case", range(len(GRIDS)))
@pytest.mark.parametrize("act", [(-np.inf, np.inf), (0.0, 6.0)])
def test_random_weights_match_the_scalar_reference_and_float(case, act):
    xq, hq, z = GRIDS[case]
    cx, ch, size = 4, 12, 8
    w = rng.normal(0, 0.3, (cx, cx + ch, 1, 1)).astype(np.float32)
    w[:, :cx] = np.eye(cx, dtype=np.float32)[:, :, None, None]  # [I | W]
    b = rng.uniform(-0.5, 0.5, cx).astype(np.float32)
    op = KO.FloatKpuConv(1, act=act)
    q = kpu_layer(op, w, b, LayerRanges(hq, z, z), stack=[(xq, cx), (hq, ch)])
    codes = rng.integers(0, 256, (1, cx + ch, size, size), dtype=np.uint8)
    layer = _layer(q, codes.shape)
    got = run_layer(layer, codes)
    np.testing.assert_array_equal(got, reference_layer(layer, codes))
    # the integer pipeline: y = sum_i (q_i - z_i)(w_i - 128) / (s_h e_c) + b_c, each part on its own
    # grid, rounded half up once onto the output grid: the layer's only rounding
    sw = stacked_weights(w, b, [(xq, cx), (hq, ch)])
    zeros = np.array([xq.zero_point] * cx + [hq.zero_point] * ch)[None, :, None, None]
    taps = sw.weights.codes[:, :, 0, 0].astype(np.int64) - 128
    acc = np.einsum("oc,nchw->nohw", taps, codes.astype(np.int64) - zeros).astype(np.float64)
    zq = get_quant_param(*z)
    y = acc / (float(hq.scale) * sw.weights.e[None, :, None, None]) + b[None, :, None, None].astype(np.float64)
    v = y * float(zq.scale) + zq.zero_point
    lo, hi = clamp_bounds(act, zq)
    want = np.clip(np.floor(v + 0.5), lo, hi)
    tie = np.abs(v - np.floor(v) - 0.5) < 1e-6
    assert np.array_equal(got[~tie], want[~tie]), np.abs(got.astype(int) - want).max()
    # and against float with W itself: the output's rounding plus W's on its (coarser) grid
    real = np.concatenate([xq.dequantize(codes[:, :cx]), hq.dequantize(codes[:, cx:])], axis=1).astype(np.float64)
    exact = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), real) + b[None, :, None, None]
    err = np.abs(zq.dequantize(got) - np.clip(np.clip(exact, *act), *zq.real_range)) * zq.scale
    assert err.mean() <= BARS[case], err.mean()


@pytest.mark.parametrize("case", range(len(GRIDS)))
def test_the_skip_path_alone_is_x_requantized_exactly(case):
    """W = 0, b = 0: y = x, every code of x, next to any h."""
    xq, hq, z = GRIDS[case]
    cx, ch = 4, 8
    w = np.zeros((cx, cx + ch, 1, 1), np.float32)
    w[:, :cx] = np.eye(cx, dtype=np.float32)[:, :, None, None]
    q = kpu_layer(KO.FloatKpuConv(1), w, np.zeros(cx, np.float32), LayerRanges(hq, z, z), stack=[(xq, cx), (hq, ch)])
    sw = stacked_weights(w, np.zeros(cx, np.float32), [(xq, cx), (hq, ch)])
    assert sw.exact.all() and np.all(sw.weights.codes[:, cx:] == 128)
    skip = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16).repeat(cx, axis=1)
    codes = np.concatenate([skip, rng.integers(0, 256, (1, ch, 16, 16), dtype=np.uint8)], axis=1)
    layer = _layer(q, codes.shape)
    got = run_layer(layer, codes)
    np.testing.assert_array_equal(got, reference_layer(layer, codes))
    np.testing.assert_array_equal(got, _requantized(skip, xq, get_quant_param(*z)))


def test_the_skip_code_is_an_integer_within_what_the_other_weights_allow():
    """k_c <= min(127, floor(127 d / max|W_c|)), d = s_h/s_x, chosen there for the least rounding of
    W_c (no worse than the largest k); a channel with k_c < 1 possible is equalized as usual."""
    xq, hq = QuantParam(100, 20.0), QuantParam(0, 40.0)  # d = 2
    w = np.zeros((3, 5, 1, 1), np.float32)
    w[:, :2, 0, 0] = [[1, 0], [0, 1], [0, 1]]
    w[:, 2:, 0, 0] = [[0.5, -0.25, 0.1], [8.0, 1.0, -1.0], [1000.0, 0.0, 0.0]]
    sw = stacked_weights(w, np.zeros(3, np.float32), [(xq, 2), (hq, 3)])
    codes = sw.weights.codes.reshape(3, 5).astype(int) - 128
    assert list(sw.exact) == [True, True, False] and codes[2, 2] == 127
    k = [codes[0, 0], codes[1, 1]]
    assert 1 <= k[0] <= 127 and 1 <= k[1] <= 31 and np.abs(codes).max() <= 127
    for c, k_max in ((0, 127), (1, 31)):  # W's rounding (in W units) at k against at the largest k
        def err(kk):
            v = w[c, 2:, 0, 0].astype(np.float64) * kk / 2.0
            return np.sqrt(np.mean((np.round(v) - v) ** 2)) * 2.0 / kk
        assert err(k[c]) <= err(k_max)
        np.testing.assert_allclose(codes[c, 2:], w[c, 2:, 0, 0] * k[c] / 2.0, atol=0.5)
    # the zero points' difference, in the bias: sum of the skip codes times (z_h - z_x)
    assert list(sw.acc_offset) == [k[0] * -100, k[1] * -100, codes[2, 1] * -100]


@pytest.mark.parametrize("ratio", [0.37, 1.0, 2.9, 11.3])
def test_two_identities_get_the_integer_pair_closest_to_the_grids_ratio(ratio):
    """[I I] over [x; p] (an add of two KPU layers' outputs): the skip code k exact, the other k/d
    rounded, d = s_p/s_x; the pair found by search is within 0.1 % of the ratio."""
    xq, pq = QuantParam(128, 40.0 / ratio), QuantParam(0, 40.0)
    w = np.concatenate([np.eye(4), np.eye(4)], axis=1).astype(np.float32)[:, :, None, None]
    sw = stacked_weights(w, np.zeros(4, np.float32), [(xq, 4), (pq, 4)])
    codes = sw.weights.codes[:, :, 0, 0].astype(int) - 128
    d = pq.scale / xq.scale
    got = codes[np.arange(4), 4 + np.arange(4)] / codes[np.arange(4), np.arange(4)]
    assert sw.exact.all() and np.all(np.abs(got * d - 1) < 1e-3), got * d


def test_a_sum_over_many_skip_grids_in_sorted_rows_matches_the_reference():
    """kcc.passes.table_stream's layers: [I I] over [y's channel groups; p], each group of the skip on
    a grid of its own (a PReLU's tables' codes, one grid a group), one layer per run of output
    channels taken out of order. kpu_sim == the scalar reference bit for bit; every skip weight an
    exact integer; each output within the output's own rounding of the float sum of the two
    dequantized codes (measured at most 0.4985 steps: the pair's other weight rounds to within 0.1 %
    of the grids' ratio)."""
    groups = [get_quant_param(-0.2, 0.3), get_quant_param(-4.0, 1.0), get_quant_param(-30.0, 45.0),
              get_quant_param(0.0, 2.0)]
    g, c, size = 2, 8, 8
    pq = get_quant_param(-6.0, 9.0)
    parts = [(q, g) for q in groups] + [(pq, c)]
    codes = rng.integers(0, 256, (1, 2 * c, size, size), dtype=np.uint8)
    real = np.concatenate([q.dequantize(codes[:, g * k:g * (k + 1)]) for k, q in enumerate(groups)]
                          + [pq.dequantize(codes[:, c:])], axis=1).astype(np.float64)
    for rows in (np.array([5, 4, 0]), np.array([7, 1, 3, 6, 2])):  # channels of the sum, as table_stream orders them
        w = np.zeros((len(rows), 2 * c, 1, 1), np.float32)
        w[np.arange(len(rows)), rows, 0, 0] = 1.0
        w[np.arange(len(rows)), c + rows, 0, 0] = 1.0
        exact = real[:, rows] + real[:, c + rows]
        z = (float(exact.min()), float(exact.max()))
        q = kpu_layer(KO.FloatKpuConv(1), w, np.zeros(len(rows), np.float32), LayerRanges(pq, z, z), stack=parts)
        assert stacked_weights(w, np.zeros(len(rows), np.float32), parts).exact.all()
        layer = _layer(q, codes.shape)
        got = run_layer(layer, codes)
        np.testing.assert_array_equal(got, reference_layer(layer, codes))
        zq = get_quant_param(*z)
        err = np.abs(zq.dequantize(got) - exact) * zq.scale
        assert err.max() <= 0.51, err.max()
