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
from kcc.quant.kpu_params import LayerRanges, kpu_layer, stacked_weights
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
    # against float: the input as it is held (x on its grid, h on its own), W on the layer's grid
    real = np.concatenate([xq.dequantize(codes[:, :cx]), hq.dequantize(codes[:, cx:])], axis=1).astype(np.float64)
    y = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), real) + b[None, :, None, None]
    y = np.clip(y, *act)
    zq = get_quant_param(*z)
    step = 1.0 / zq.scale
    err = np.abs(zq.dequantize(got) - np.clip(y, *zq.real_range)) / step
    # a step of the output's rounding plus the weights' (|W h| of 12 channels on a ~7-bit grid)
    print("ERR", case, act, err.max(), err.mean())


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


def test_the_skip_weight_is_the_largest_integer_the_other_weights_allow():
    """k_c = min(127, floor(127 d / max|W_c|)), d = s_h/s_x: the other weights fill the grid when they
    are large, the skip weight when they are small; a channel with k_c < 1 is equalized as usual."""
    xq, hq = QuantParam(100, 20.0), QuantParam(0, 40.0)  # d = 2
    w = np.zeros((3, 5, 1, 1), np.float32)
    w[:, :2, 0, 0] = [[1, 0], [0, 1], [0, 1]]
    w[:, 2:, 0, 0] = [[0.5, -0.25, 0.1], [8.0, 1.0, -1.0], [1000.0, 0.0, 0.0]]
    sw = stacked_weights(w, np.zeros(3, np.float32), [(xq, 2), (hq, 3)])
    codes = sw.weights.codes.reshape(3, 5).astype(int) - 128
    assert codes[0, 0] == 127 and codes[1, 1] == 31 and list(sw.exact) == [True, True, False]
    assert codes[1, 2] == 124 and codes[2, 2] == 127
    # the zero points' difference, in the bias: sum of the skip codes times (z_h - z_x)
    assert list(sw.acc_offset) == [127 * -100, 31 * -100, codes[2, 1] * -100]
