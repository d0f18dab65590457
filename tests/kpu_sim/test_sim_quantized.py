"""quantized_conv2d, quantized_matmul, quantized_binary, table_lookup1d (kmodel_v4.md §8.15-§8.18)
and the runtime-only CPU convs 0x1001, 0x1002, 0x1004, 0x1005 (§8.21).

Hand-computed cases pin the arithmetic (offset signs, half-up carry shift, int32 wrap, C division);
scalar loops written from the runtime's loop order check the shapes, strides and padding.
"""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import F32, U8, run_one

import kcc.kmodel as km
from kcc.errors import SimulatorError
from kpu_sim.kernels.intmath import mul_and_carry_shift

rng = np.random.default_rng(21)
P = km.Padding


def mcs(value: int, mul: int, shift: int) -> int:
    """mul_and_carry_shift with Python ints: (v*m + 2^(s-1)) >> s, truncated to int32."""
    p = value * mul
    if shift:
        p = (p + (1 << (shift - 1))) >> shift
    p &= 0xFFFFFFFF
    return p - (1 << 32) if p >> 31 else p


def clamp8(v: int) -> int:
    return min(max(v, 0), 255)


@pytest.mark.parametrize("value, mul, shift, expected", [
    (5, 3, 1, 8),  # 15/2 = 7.5 -> 8 (half up)
    (-5, 3, 1, -7),  # -15/2 = -7.5 -> -7 (half up, toward +inf)
    (7, 1, 0, 7),  # shift 0: no rounding term
    (2**30, 4, 0, 0),  # 2^32 truncated to int32
    (100, 2**31 - 1, 31, 100),  # (100 * (2^31 - 1) + 2^30) >> 31 = 100
])  # fmt: skip
def test_mul_and_carry_shift(value, mul, shift, expected) -> None:
    assert int(mul_and_carry_shift(np.int64(value), mul, shift)) == expected == mcs(value, mul, shift)


def _qconv_reference(x, w, bias, groups, stride, dilation, pads, in_off, w_off, mul, shift, out_off):
    n, _c, h, wd = x.shape
    oc, g_ic, fh, fw = w.shape
    g_oc = oc // groups
    (pt, pb), (pl, pr) = pads
    oh = (h + pt + pb - ((fh - 1) * dilation[0] + 1) + stride[0]) // stride[0]
    ow = (wd + pl + pr - ((fw - 1) * dilation[1] + 1) + stride[1]) // stride[1]
    out = np.zeros((n, oc, oh, ow), np.uint8)
    for b in range(n):
        for o in range(oc):
            g = o // g_oc
            for oy in range(oh):
                for ox in range(ow):
                    v = int(bias[o])
                    for ic in range(g_ic):
                        for ky in range(fh):
                            for kx in range(fw):
                                iy = oy * stride[0] - pt + ky * dilation[0]
                                ix = ox * stride[1] - pl + kx * dilation[1]
                                if 0 <= iy < h and 0 <= ix < wd:  # out-of-range taps are skipped
                                    v += (int(x[b, g * g_ic + ic, iy, ix]) + in_off) * (int(w[o, ic, ky, kx]) + w_off)
                    out[b, o, oy, ox] = clamp8(mcs(v, mul, shift) + out_off)
    return out


@pytest.mark.parametrize(
    "c, oc, groups, k, stride, dilation, pads",
    [
        (3, 4, 1, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),
        (4, 6, 2, (3, 2), (2, 1), (1, 2), ((0, 1), (2, 0))),
        (5, 5, 5, (3, 3), (2, 2), (2, 2), ((2, 2), (2, 2))),  # depthwise, dilated (ncc's RFB heads)
        (2, 3, 1, (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ],
)
def test_quantized_conv2d_matches_the_runtime_loops(c, oc, groups, k, stride, dilation, pads) -> None:
    x = rng.integers(0, 256, (2, c, 6, 7)).astype(np.uint8)
    w = rng.integers(0, 256, (oc, c // groups, *k)).astype(np.uint8)
    bias = rng.integers(-5000, 5000, oc).astype(np.int32)
    q = {"in_off": -120, "w_off": -130, "mul": 1_500_000_000, "shift": 38, "out_off": 128}
    ref = _qconv_reference(x, w, bias, groups, stride, dilation, pads, **q)
    got = run_one(
        lambda ins, out: km.QuantizedConv2D(
            input=ins[0], output=out, in_shape=x.shape, groups=groups, out_channels=oc,
            padding_h=P(*pads[0]), padding_w=P(*pads[1]), filter_h=k[0], filter_w=k[1], stride_h=stride[0],
            stride_w=stride[1], dilation_h=dilation[0], dilation_w=dilation[1], input_offset=q["in_off"],
            filter_offset=q["w_off"], output_mul=q["mul"], output_shift=q["shift"], output_offset=q["out_off"],
            bias=bias, weights=w,
        ),
        [x], U8, ref.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref.reshape(-1))


def test_quantized_conv2d_by_hand() -> None:
    # 1x1, one channel: (x + in_off) * (w + w_off) + bias = (10 - 3) * (6 - 2) + 2 = 30;
    # (30 * 3 + 2) >> 2 = 23 (22.5 rounds half up); + out_off 100 = 123
    x = np.array([[[[10]]]], np.uint8)
    got = run_one(
        lambda ins, out: km.QuantizedConv2D(
            input=ins[0], output=out, in_shape=x.shape, out_channels=1, filter_h=1, filter_w=1, input_offset=-3,
            filter_offset=-2, output_mul=3, output_shift=2, output_offset=100, bias=[2], weights=[6],
        ),
        [x], U8, 1,
    )  # fmt: skip
    assert got.tolist() == [123]


def test_quantized_matmul_by_hand_and_against_loops() -> None:
    # a = [1, 2], b = [[3], [4]], offsets -1 and +1: (0 * 4) + (1 * 5) + bias 10 = 15; 15*1 >> 0 + 7 = 22
    a, b = np.array([[1, 2]], np.uint8), np.array([[3], [4]], np.uint8)

    def body(ins, out):
        return km.QuantizedMatMul(
            input_a=ins[0], input_b=ins[1], output=out, a_rows=1, a_cols=2, b_cols=1, input_a_offset=-1,
            input_b_offset=1, output_mul=1, output_shift=0, output_offset=7, bias=[10])

    assert run_one(body, [a, b], U8, 1).tolist() == [22]
    a = rng.integers(0, 256, (3, 5)).astype(np.uint8)
    b = rng.integers(0, 256, (5, 4)).astype(np.uint8)
    bias = rng.integers(-1000, 1000, 4)
    ref = [[clamp8(mcs(int(bias[c]) + sum((int(a[r, k]) - 100) * (int(b[k, c]) - 90) for k in range(5)),
                       1_800_000_000, 40) + 120) for c in range(4)] for r in range(3)]  # fmt: skip
    got = run_one(
        lambda ins, out: km.QuantizedMatMul(
            input_a=ins[0], input_b=ins[1], output=out, a_rows=3, a_cols=5, b_cols=4, input_a_offset=-100,
            input_b_offset=-90, output_mul=1_800_000_000, output_shift=40, output_offset=120, bias=bias),
        [a, b], U8, 12,
    )  # fmt: skip
    np.testing.assert_array_equal(got.reshape(3, 4), ref)


def _qbinary(op, a, b, a_q=(0, 1, 0), b_q=(0, 1, 0), out_q=(0, 1, 0), out_shape=None):
    out_shape = out_shape or a.shape
    return run_one(
        lambda ins, out: km.QuantizedBinary(
            input_a=ins[0], input_b=ins[1], output=out, binary_op=op, in_a_shape=a.shape, in_b_shape=b.shape,
            out_shape=out_shape, input_a_offset=a_q[0], input_a_mul=a_q[1], input_a_shift=a_q[2],
            input_b_offset=b_q[0], input_b_mul=b_q[1], input_b_shift=b_q[2],
            output_offset=out_q[0], output_mul=out_q[1], output_shift=out_q[2]),
        [a, b], U8, int(np.prod(out_shape)),
    )  # fmt: skip


def test_quantized_binary_by_hand() -> None:
    a = np.array([[[[10, 20, 3, 200]]]], np.uint8)
    b = np.array([[[[4, 6, 2, 100]]]], np.uint8)
    B = km.BinaryOp
    # a' = (a - 2) * 3 >> 1 (half up): 12, 27, 2 (1.5 -> 2), 297; b' = b - 0 = b
    aq = (-2, 3, 1)
    assert _qbinary(B.ADD, a, b, aq).tolist() == [16, 33, 4, 255]  # 12+4, 27+6, 2+2, 397 clamped
    assert _qbinary(B.SUB, a, b, aq).tolist() == [8, 21, 0, 197]  # 2-2 = 0
    assert _qbinary(B.MIN, a, b, aq).tolist() == [4, 6, 2, 100]
    assert _qbinary(B.MAX, a, b, aq).tolist() == [12, 27, 2, 255]
    # mul then output (x * 1 + 8) >> 4 + 5: 12*4 = 48 -> (48 + 8) >> 4 = 3 -> 8; 27*6 = 162 -> 10 -> 15
    assert _qbinary(B.MUL, a, b, aq, out_q=(5, 1, 4)).tolist()[:2] == [8, 15]
    # div: (a' + b'/2) / b' in C: (12 + 2)/4 = 3, (27 + 3)/6 = 5, (2 + 1)/2 = 1, (297 + 50)/100 = 3
    assert _qbinary(B.DIV, a, b, aq).tolist() == [3, 5, 1, 3]
    # negative numerator truncates toward zero: a' = 3 - 10 = -7, b' = 2: (-7 + 1) / 2 = -3 -> + 5 = 2
    one = (1, 1, 1, 1)
    three, two = np.full(one, 3, np.uint8), np.full(one, 2, np.uint8)
    assert _qbinary(B.DIV, three, two, (-10, 1, 0), out_q=(5, 1, 0)).tolist() == [2]


def test_quantized_binary_broadcasts_over_out_shape_and_div_by_zero_is_an_error() -> None:
    a = rng.integers(0, 256, (1, 2, 3, 4)).astype(np.uint8)
    b = np.array([7], np.uint8).reshape(1, 1, 1, 1)
    got = _qbinary(km.BinaryOp.MAX, a, b, out_shape=(1, 2, 3, 4))
    np.testing.assert_array_equal(got, np.maximum(a, 7).reshape(-1))  # ncc's uint8 relu (ulffd)
    with pytest.raises(SimulatorError, match="division by zero"):
        _qbinary(km.BinaryOp.DIV, a, np.zeros((1, 1, 1, 1), np.uint8), out_shape=(1, 2, 3, 4))


def test_table_lookup1d() -> None:
    table = (255 - np.arange(256)).astype(np.uint8)
    x = np.array([0, 1, 200, 255], np.uint8)
    got = run_one(lambda ins, out: km.TableLookup1D(input=ins[0], table=ins[1], output=out), [x, table], U8, 4)
    assert got.tolist() == [255, 254, 55, 0]
    with pytest.raises(SimulatorError, match="indexes past the 16-byte table"):
        run_one(lambda ins, out: km.TableLookup1D(input=ins[0], table=ins[1], output=out), [x, table[:16]], U8, 4)


# -- CPU ops (NHWC) --------------------------------------------------------------------------


def _nhwc_conv_reference(x, w, bias, stride, dilation, pads, depthwise, quant=None, act=(-np.inf, np.inf)):
    """Loop order of cpu_kernels.h: (batch, oy, ox, oc, ky, kx, ic); float32 steps or int32."""
    n, h, wd, c = x.shape
    fh, fw = w.shape[1:3]
    (pt, pb), (pl, pr) = pads
    oh = (h + pt + pb - ((fh - 1) * dilation[0] + 1) + stride[0]) // stride[0]
    ow = (wd + pl + pr - ((fw - 1) * dilation[1] + 1) + stride[1]) // stride[1]
    oc = c if depthwise else w.shape[0]
    out = np.zeros((n, oh, ow, oc), np.uint8 if quant else np.float32)
    for b in range(n):
        for oy in range(oh):
            for ox in range(ow):
                for o in range(oc):
                    v = int(bias[o]) if quant else np.float32(bias[o])
                    for ky in range(fh):
                        for kx in range(fw):
                            iy, ix = oy * stride[0] - pt + ky * dilation[0], ox * stride[1] - pl + kx * dilation[1]
                            if not (0 <= iy < h and 0 <= ix < wd):
                                continue
                            for ic in [o] if depthwise else range(c):
                                wv = w[o, ky, kx] if depthwise else w[o, ky, kx, ic]
                                if quant:
                                    v += (int(x[b, iy, ix, ic]) - quant[0]) * (int(wv) - quant[1])
                                else:
                                    v = np.float32(v + np.float32(x[b, iy, ix, ic] * wv))
                    if quant:
                        out[b, oy, ox, o] = clamp8(mcs(v, quant[2], quant[3]) + quant[4])
                    else:
                        out[b, oy, ox, o] = min(max(v, np.float32(act[0])), np.float32(act[1]))
    return out


GEOMETRY = {"stride": (2, 1), "dilation": (1, 2), "pads": ((1, 0), (2, 1))}


def _cpu_fields(k):
    (pt, pb), (pl, pr) = GEOMETRY["pads"]
    return {"padding_h": P(pt, pb), "padding_w": P(pl, pr), "filter_h": k[0], "filter_w": k[1],
                "stride_h": GEOMETRY["stride"][0], "stride_w": GEOMETRY["stride"][1],
                "dilation_h": GEOMETRY["dilation"][0], "dilation_w": GEOMETRY["dilation"][1]}  # fmt: skip


@pytest.mark.parametrize("depthwise", [False, True])
def test_cpu_float_convs_are_nhwc_and_bit_exact(depthwise) -> None:
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    k = (3, 2)
    w = rng.standard_normal((3, *k) if depthwise else (4, *k, 3)).astype(np.float32)
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    act = (-1.0, 1.5)
    ref = _nhwc_conv_reference(x, w, bias, **GEOMETRY, depthwise=depthwise, act=act)
    cls = km.CpuDepthwiseConv2D if depthwise else km.CpuConv2D
    extra = {} if depthwise else {"out_channels": 4}
    got = run_one(
        lambda ins, out: cls(input=ins[0], output=out, in_shape=x.shape, **_cpu_fields(k), **extra,
                             fused_activation=km.ValueRange(*act), weights=w, bias=bias),
        [x], F32, ref.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref.reshape(-1))


@pytest.mark.parametrize("depthwise", [False, True])
def test_cpu_quantized_convs_subtract_the_offsets(depthwise) -> None:
    x = rng.integers(0, 256, (1, 5, 6, 3)).astype(np.uint8)
    k = (2, 3)
    w = rng.integers(0, 256, (3, *k) if depthwise else (4, *k, 3)).astype(np.uint8)
    bias = rng.integers(-3000, 3000, w.shape[0]).astype(np.int32)
    quant = (120, 130, 1_700_000_000, 38, 128)  # input_offset, filter_offset, mul, shift, output_offset
    ref = _nhwc_conv_reference(x, w, bias, **GEOMETRY, depthwise=depthwise, quant=quant)
    cls = km.CpuQuantizedDepthwiseConv2D if depthwise else km.CpuQuantizedConv2D
    extra = {} if depthwise else {"out_channels": 4}
    got = run_one(
        lambda ins, out: cls(input=ins[0], output=out, in_shape=x.shape, **_cpu_fields(k), **extra,
                             input_offset=quant[0], filter_offset=quant[1], output_mul=quant[2],
                             output_shift=quant[3], output_offset=quant[4], weights=w, bias=bias),
        [x], U8, ref.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref.reshape(-1))


def test_cpu_quantized_conv_by_hand() -> None:
    # 1x1 NHWC, 2 input channels: (x - in_off)*(w - w_off): (5 - 1)*(3 - 1) + (7 - 1)*(2 - 1) + bias 1 = 15
    # (15 * 1 + 1) >> 1 = 8 (7.5 half up) + 2 = 10
    x = np.array([5, 7], np.uint8).reshape(1, 1, 1, 2)
    got = run_one(
        lambda ins, out: km.CpuQuantizedConv2D(
            input=ins[0], output=out, in_shape=x.shape, out_channels=1, filter_h=1, filter_w=1, input_offset=1,
            filter_offset=1, output_mul=1, output_shift=1, output_offset=2, weights=[3, 2], bias=[1]),
        [x], U8, 1,
    )  # fmt: skip
    assert got.tolist() == [10]
