"""Convolution-like ops: CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED.

TFLite stores conv weights OHWI ([OC, KH, KW, IC]) and depthwise weights [1, KH, KW, C*M]; the IR
wants OIHW with `groups` (kcc.ir.ops.Conv2D). Spatial ops are imported NCHW between two transposes
(ImportContext.spatial); FULLY_CONNECTED is a MatMul on a [-1, in] view and needs none.
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.tflite.context import ImportContext, ImportResult, tf_padding
from kcc.frontend.tflite.reader import TfliteOperator
from kcc.ir import ops as O
from kcc.ir.graph import Node


def _bias(ctx: ImportContext, op: TfliteOperator, i: int, oc: int) -> Node:
    """Optional bias input `i`, or zeros (TFLite lets it be omitted with index -1)."""
    if ctx.has_input(op, i):
        b = ctx.float_const(op, i, "bias")
        if b.shape != (oc,):
            raise ctx.unsupported(op, f"bias shape {list(b.shape)} does not match {oc} output channels")
        return ctx.weight(op, i, b)
    return ctx.graph.constant(np.zeros(oc, np.float32), f"{ctx.out_name(op)}/bias")


def _conv(ctx: ImportContext, op: TfliteOperator, w_oihw: np.ndarray, groups: int) -> ImportResult:
    x = ctx.input_4d(op, 0)
    _, h, wd, _ = x.shape
    kh, kw = w_oihw.shape[2:]
    stride = (ctx.int_opt(op, "stride_h"), ctx.int_opt(op, "stride_w"))
    dilation = (ctx.int_opt(op, "dilation_h_factor"), ctx.int_opt(op, "dilation_w_factor"))
    pad_mode = op.opt("padding", "SAME")
    padding = (tf_padding(pad_mode, h, kh, stride[0], dilation[0]),
               tf_padding(pad_mode, wd, kw, stride[1], dilation[1]))
    conv = O.Conv2D(stride, padding, dilation, groups, ctx.fused_act(op))
    w = ctx.weight(op, 1, w_oihw, "/oihw")
    b = _bias(ctx, op, 2, w_oihw.shape[0])
    return ctx.spatial(op, x, lambda xc: ctx.add(op, conv, [xc, w, b]))


def conv_2d(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """OHWI weights -> OIHW. Input channels C = groups * IC (TFLite grouped conv when C != IC)."""
    w = ctx.float_const(op, 1, "weights")
    c = ctx.input_4d(op, 0).shape[-1]
    if w.ndim != 4 or w.shape[3] == 0 or c % w.shape[3]:
        raise ctx.unsupported(op, f"weights {list(w.shape)} do not fit {c} input channels")
    return _conv(ctx, op, w.transpose(0, 3, 1, 2), c // w.shape[3])


def depthwise_conv_2d(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """[1, KH, KW, C*M] -> [C*M, 1, KH, KW] with groups = C.

    Output channel c*M + m reads input channel c (TFLite depthwise layout), which is exactly a
    grouped conv whose group c owns output channels [c*M, (c+1)*M). The multiplier M is derived
    from the shapes; the `depth_multiplier` option is unreliable in old converters.
    """
    w = ctx.float_const(op, 1, "weights")
    c = ctx.input_4d(op, 0).shape[-1]
    if w.ndim != 4 or w.shape[0] != 1 or w.shape[3] % c:
        raise ctx.unsupported(op, f"depthwise weights {list(w.shape)} do not fit {c} input channels")
    return _conv(ctx, op, w.transpose(3, 0, 1, 2), c)


def transpose_conv(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """Inputs (output_shape NHWC, weights [OC,KH,KW,IC], x, optional bias).

    TFLite pads as the forward conv that maps the *output* back to the input would
    (kernels/transpose_conv.cc: ComputePaddingHeightWidth(stride, 1, out, k, in)): with SAME,
    total = max(0, (in-1)*stride + k - out), before = total // 2; with VALID, 0 before.
    """
    out_nhwc = ctx.const_ints(op, 0, "output_shape")
    w = ctx.float_const(op, 1, "weights")
    x = ctx.input_4d(op, 2)
    if len(out_nhwc) != 4 or w.ndim != 4 or w.shape[0] != out_nhwc[3] or min(out_nhwc) < 1:
        raise ctx.unsupported(op, f"output shape {out_nhwc}, weights {list(w.shape)}, input {list(x.shape)}")
    ic = x.shape[3]
    if w.shape[3] == 0 or ic % w.shape[3]:
        raise ctx.unsupported(op, f"weights {list(w.shape)} do not fit {ic} input channels")
    stride = (ctx.int_opt(op, "stride_h"), ctx.int_opt(op, "stride_w"))
    padding = []
    for axis in (1, 2):
        size_in, size_out, k, s = x.shape[axis], out_nhwc[axis], w.shape[axis], stride[axis - 1]
        if op.opt("padding", "SAME") == "SAME":
            total = max(0, (size_in - 1) * s + k - size_out)
            before = total // 2
        else:
            before = 0
        padding.append((before, max(0, (size_in - 1) * s + k - size_out - before)))
    out_nchw = (out_nhwc[0], out_nhwc[3], out_nhwc[1], out_nhwc[2])
    ir_op = O.Conv2DTranspose(out_nchw, stride, (padding[0], padding[1]), (1, 1), ic // w.shape[3],
                              ctx.fused_act(op))
    wt = ctx.weight(op, 1, w.transpose(0, 3, 1, 2), "/oihw")
    b = _bias(ctx, op, 3, w.shape[0])
    return ctx.spatial(op, x, lambda xc: ctx.add(op, ir_op, [xc, wt, b]))


def fully_connected(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """y = x.reshape(-1, in) @ W.T + b; keep_num_dims restores x's leading axes.

    Only the DEFAULT weights format exists for float models (SHUFFLED4x16INT8 is int8-only).
    """
    if op.opt("weights_format", "DEFAULT") != "DEFAULT":
        raise ctx.unsupported(op, f"weights format {op.opt('weights_format')}")
    x = ctx.input(op, 0)
    w = ctx.float_const(op, 1, "weights")
    if w.ndim != 2 or w.shape[1] == 0 or x.type.size % w.shape[1]:
        raise ctx.unsupported(op, f"weights {list(w.shape)} do not fit input {list(x.shape)}")
    n_out, n_in = w.shape
    if x.shape != (x.type.size // n_in, n_in):
        x = ctx.add(op, O.Reshape((x.type.size // n_in, n_in)), [x], f"{x.name}/flat")
    wt = ctx.weight(op, 1, w.T, "/t")
    b = _bias(ctx, op, 2, n_out)
    want = ctx.out_shape(op)
    if op.opt("keep_num_dims", False):
        want = (*ctx.shape(op, 0)[:-1], n_out)
    mm_name = None if tuple(want) == (x.shape[0], n_out) else f"{ctx.out_name(op)}/matmul"
    y = ctx.add(op, O.MatMul(ctx.fused_act(op)), [x, wt, b], mm_name)
    if y.shape != tuple(want) and int(np.prod(want)) == y.type.size:
        y = ctx.add(op, O.Reshape(tuple(want)), [y])
    return y
