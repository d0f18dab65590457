"""Spatial and matrix ops against the TFLite interpreter: conv, depthwise, transpose conv, fully
connected, pooling, resize, and DEQUANTIZE-fed weights."""

from __future__ import annotations

import numpy as np
import pytest
from tflite_builder import TfliteBuilder, check_against_tflite, from_ir_layout, run_tflite, to_ir_layout

from kcc.eval.interpreter import run
from kcc.frontend import import_tflite
from kcc.ir import ops as O

rng = np.random.default_rng(1)
ACTS = ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _conv_model(opcode, x_shape, w, bias, out_shape=None, **opts):
    b = TfliteBuilder()
    x = b.input(x_shape)
    wi = b.const(w)
    bi = b.const(bias) if bias is not None else -1
    b.output(b.op(opcode, [x, wi, bi], out_shape=out_shape, **opts))
    return b


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_conv_2d_stride_padding(stride, padding, k):
    b = _conv_model("CONV_2D", [1, 9, 8, 3], randn(5, k, k, 3), randn(5), padding=padding,
                    stride_w=stride, stride_h=stride, dilation_w_factor=1, dilation_h_factor=1)
    check_against_tflite(b, [randn(1, 9, 8, 3)])


@pytest.mark.parametrize("act", ACTS)
def test_conv_2d_fused_activation(act):
    b = _conv_model("CONV_2D", [1, 6, 6, 2], randn(4, 3, 3, 2), randn(4), padding="SAME", stride_w=1,
                    stride_h=1, fused_activation_function=act)
    check_against_tflite(b, [randn(1, 6, 6, 2, scale=2.0)])


@pytest.mark.parametrize("dilation,stride", [((2, 2), (1, 1)), ((2, 3), (1, 1)), ((1, 2), (2, 1))])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_2d_dilation(dilation, stride, padding):
    b = _conv_model("CONV_2D", [2, 11, 10, 3], randn(4, 3, 3, 3), randn(4), padding=padding,
                    stride_h=stride[0], stride_w=stride[1], dilation_h_factor=dilation[0],
                    dilation_w_factor=dilation[1])
    check_against_tflite(b, [randn(2, 11, 10, 3)])


def test_conv_2d_without_bias():
    """TFLite's own float kernel insists on a bias, but the schema lets it be omitted (-1): kcc
    imports that as a zero bias, checked against the TFLite result with explicit zeros."""
    w, x = randn(2, 3, 3, 3), randn(1, 5, 5, 3)
    opts = dict(padding="SAME", stride_w=1, stride_h=1)
    want = run_tflite(_conv_model("CONV_2D", [1, 5, 5, 3], w, np.zeros(2, np.float32), **opts).build(), [x])
    graph = import_tflite(_conv_model("CONV_2D", [1, 5, 5, 3], w, None, out_shape=[1, 5, 5, 2], **opts).build())
    got = from_ir_layout(run(graph, [to_ir_layout(x)])[0])
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mult", [1, 2, 3])
@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (2, "VALID")])
def test_depthwise_conv_2d(mult, stride, padding):
    c = 4
    b = _conv_model("DEPTHWISE_CONV_2D", [1, 9, 9, c], randn(1, 3, 3, c * mult), randn(c * mult),
                    padding=padding, stride_w=stride, stride_h=stride, depth_multiplier=mult,
                    fused_activation_function="RELU6")
    g = check_against_tflite(b, [randn(1, 9, 9, c, scale=3.0)])
    (conv,) = [n for n in g.nodes if isinstance(n.op, O.Conv2D)]
    assert conv.op.groups == c and conv.shape[1] == c * mult


@pytest.mark.parametrize("dilation", [2, 4])
def test_depthwise_conv_2d_dilated(dilation):
    """deeplab's atrous depthwise convs: SAME padding with dilation 2 and 4."""
    b = _conv_model("DEPTHWISE_CONV_2D", [1, 13, 13, 6], randn(1, 3, 3, 6), randn(6), padding="SAME",
                    stride_w=1, stride_h=1, depth_multiplier=1, dilation_w_factor=dilation,
                    dilation_h_factor=dilation)
    check_against_tflite(b, [randn(1, 13, 13, 6)])


def test_depthwise_single_input_channel():
    b = _conv_model("DEPTHWISE_CONV_2D", [1, 7, 7, 1], randn(1, 3, 3, 5), randn(5), padding="SAME",
                    stride_w=1, stride_h=1, depth_multiplier=5)
    check_against_tflite(b, [randn(1, 7, 7, 1)])


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_transpose_conv(stride, padding, with_bias):
    h, w, ic, oc, k = 5, 4, 3, 4, 3
    if padding == "SAME":
        out_hw = (h * stride, w * stride)
    else:
        out_hw = ((h - 1) * stride + k, (w - 1) * stride + k)
    b = TfliteBuilder()
    x = b.input([1, h, w, ic])
    shape = b.const(np.array([1, *out_hw, oc], np.int32))
    wt = b.const(randn(oc, k, k, ic))
    ins = [shape, wt, x] + ([b.const(randn(oc))] if with_bias else [])
    b.output(b.op("TRANSPOSE_CONV", ins, padding=padding, stride_w=stride, stride_h=stride))
    check_against_tflite(b, [randn(1, h, w, ic)])


@pytest.mark.parametrize("x_shape,keep", [((1, 12), False), ((3, 12), False), ((1, 2, 2, 3), False),
                                          ((2, 3, 12), True), ((2, 3, 12), False)])
@pytest.mark.parametrize("act", ["NONE", "RELU"])
def test_fully_connected(x_shape, keep, act):
    b = TfliteBuilder()
    x = b.input(list(x_shape))
    y = b.op("FULLY_CONNECTED", [x, b.const(randn(7, 12)), b.const(randn(7))], keep_num_dims=keep,
             fused_activation_function=act)
    b.output(y)
    check_against_tflite(b, [randn(*x_shape)])


def test_fully_connected_without_bias():
    b = TfliteBuilder()
    x = b.input([2, 5])
    b.output(b.op("FULLY_CONNECTED", [x, b.const(randn(3, 5)), -1]))
    check_against_tflite(b, [randn(2, 5)])


@pytest.mark.parametrize("opcode", ["AVERAGE_POOL_2D", "MAX_POOL_2D"])
@pytest.mark.parametrize("filt,stride,padding", [((2, 2), 2, "VALID"), ((3, 3), 2, "SAME"), ((3, 2), 1, "SAME"),
                                                 ((5, 5), 3, "SAME"), ((7, 7), 1, "VALID")])
def test_pool(opcode, filt, stride, padding):
    b = TfliteBuilder()
    x = b.input([1, 10, 9, 3])
    b.output(b.op(opcode, [x], filter_height=filt[0], filter_width=filt[1], stride_h=stride, stride_w=stride,
                  padding=padding, fused_activation_function="RELU6"))
    check_against_tflite(b, [randn(1, 10, 9, 3, scale=4.0)])


@pytest.mark.parametrize("opcode", ["RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"])
@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("size", [(8, 10), (3, 2), (7, 5), (1, 1)])
def test_resize(opcode, flags, size):
    b = TfliteBuilder()
    x = b.input([1, 4, 5, 3])
    y = b.op(opcode, [x, b.const(np.array(size, np.int32))], align_corners=flags[0], half_pixel_centers=flags[1])
    b.output(y)
    check_against_tflite(b, [randn(1, 4, 5, 3)])


@pytest.mark.parametrize("wtype", ["FLOAT16", "INT8"])
def test_dequantized_weights(wtype):
    """MediaPipe-style fp16 weights (and per-channel int8) behind DEQUANTIZE fold to constants."""
    w = randn(4, 3, 3, 2)
    b = TfliteBuilder()
    x = b.input([1, 6, 6, 2])
    if wtype == "FLOAT16":
        wq = b.const(w.astype(np.float16))
    else:
        scale = np.abs(w).reshape(4, -1).max(axis=1) / 127
        q = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
        wq = b.const(q, quant=(scale, np.zeros(4, np.int64), 0))
    wf = b.op("DEQUANTIZE", [wq])
    bias = b.op("DEQUANTIZE", [b.const(randn(4).astype(np.float16))])
    b.output(b.op("CONV_2D", [x, wf, bias], padding="SAME", stride_w=1, stride_h=1))
    g = check_against_tflite(b, [randn(1, 6, 6, 2)])
    assert all(n.dtype.value == "f32" for n in g.nodes)
