"""conv2d, conv2d_transpose, matmul (kmodel_v4.md §8.3, 8.5, 8.19).

The references are scalar loops written from the runtime's loop order with np.float32
arithmetic, so the comparison is bit-exact: it checks the accumulation order, not just the maths.
"""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import F32, run_one

import kcc.kmodel as km

rng = np.random.default_rng(2)
f32 = np.float32


def _conv_reference(x, w, bias, groups, stride, dilation, pads, act):
    n, c, h, wd = x.shape
    oc, g_ic, fh, fw = w.shape
    g_oc = oc // groups
    (pt, pb), (pl, pr) = pads
    oh = (h + pt + pb - ((fh - 1) * dilation[0] + 1) + stride[0]) // stride[0]
    ow = (wd + pl + pr - ((fw - 1) * dilation[1] + 1) + stride[1]) // stride[1]
    out = np.zeros((n, oc, oh, ow), np.float32)
    for b in range(n):
        for o in range(oc):
            g = o // g_oc
            for oy in range(oh):
                for ox in range(ow):
                    v = f32(bias[o])
                    for ic in range(g_ic):
                        for ky in range(fh):
                            for kx in range(fw):
                                iy = oy * stride[0] - pt + ky * dilation[0]
                                ix = ox * stride[1] - pl + kx * dilation[1]
                                if 0 <= iy < h and 0 <= ix < wd:
                                    v = f32(v + f32(x[b, g * g_ic + ic, iy, ix] * w[o, ic, ky, kx]))
                    out[b, o, oy, ox] = min(max(v, f32(act[0])), f32(act[1]))
    return out


@pytest.mark.parametrize(
    "c, oc, groups, k, stride, dilation, pads",
    [
        (3, 4, 1, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),
        (4, 6, 2, (3, 2), (2, 1), (1, 2), ((0, 1), (2, 0))),
        (5, 5, 5, (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1))),  # depthwise
        (2, 3, 1, (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ],
)
def test_conv2d_is_bit_exact_to_the_runtime_loop_order(c, oc, groups, k, stride, dilation, pads) -> None:
    x = rng.standard_normal((2, c, 6, 7)).astype(np.float32)
    w = rng.standard_normal((oc, c // groups, *k)).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    act = (-1.5, 2.5)
    ref = _conv_reference(x, w, bias, groups, stride, dilation, pads, act)
    got = run_one(
        lambda ins, out: km.Conv2D(
            input=ins[0], output=out, in_shape=x.shape, groups=groups, out_channels=oc,
            padding_h=km.Padding(*pads[0]), padding_w=km.Padding(*pads[1]), filter_h=k[0], filter_w=k[1],
            stride_h=stride[0], stride_w=stride[1], dilation_h=dilation[0], dilation_w=dilation[1],
            fused_activation=km.ValueRange(*act), weights=w, bias=bias,
        ),
        [x], F32, ref.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref.reshape(-1))


def test_conv2d_transpose_scatters_in_input_order_and_ignores_bias() -> None:
    n, c, h, w, oc, groups, fh, fw, s, d = 1, 4, 3, 4, 2, 2, 3, 3, 2, 1
    pad = (1, 1)
    oh, ow = (h - 1) * s - 2 * pad[0] + (fh - 1) * d + 1, (w - 1) * s - 2 * pad[1] + (fw - 1) * d + 1
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((oc, c // groups, fh, fw)).astype(np.float32)
    bias = np.array([100.0, -100.0], np.float32)
    ref = np.zeros((n, oc, oh, ow), np.float32)
    g_ic, g_oc = c // groups, oc // groups
    for g in range(groups):
        for ic in range(g_ic):
            for iy in range(h):
                for ix in range(w):
                    for o in range(g * g_oc, (g + 1) * g_oc):
                        for ky in range(fh):
                            for kx in range(fw):
                                oy, ox = iy * s - pad[0] + ky * d, ix * s - pad[1] + kx * d
                                if 0 <= oy < oh and 0 <= ox < ow:
                                    prod = f32(x[0, g * g_ic + ic, iy, ix] * wt[o, ic, ky, kx])
                                    ref[0, o, oy, ox] = f32(ref[0, o, oy, ox] + prod)
    got = run_one(
        lambda ins, out: km.Conv2DTranspose(
            input=ins[0], output=out, in_shape=x.shape, out_shape=(n, oc, oh, ow), groups=groups,
            padding_h=km.Padding(*pad), padding_w=km.Padding(*pad), filter_h=fh, filter_w=fw,
            stride_h=s, stride_w=s, dilation_h=d, dilation_w=d, weights=wt, bias=bias,
        ),
        [x], F32, ref.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref.reshape(-1))


def test_matmul_accumulates_bias_first_then_in_k_order() -> None:
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    ref = np.empty((3, 4), np.float32)
    for r in range(3):
        for col in range(4):
            v = bias[col]
            for k in range(5):
                v = f32(v + f32(a[r, k] * b[k, col]))
            ref[r, col] = max(v, f32(0))
    got = run_one(
        lambda ins, out: km.MatMul(
            input_a=ins[0], input_b=ins[1], output=out, a_rows=3, a_cols=5, b_cols=4,
            fused_activation=km.ValueRange(0.0, km.FLT_MAX), bias=bias,
        ),
        [a, b], F32, 12,
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref.reshape(-1))
