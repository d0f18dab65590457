"""Convolution-like ops: Conv, ConvTranspose, Gemm, MatMul, BatchNormalization.

ONNX conv weights are OIHW with `group`, exactly the IR's Conv2D (kcc.ir.ops); a 1-D conv ([N, C, W])
is imported as a 2-D one over an [N, C, 1, W] view. BatchNormalization is folded into the conv, transposed
conv or matrix product that feeds it when it is that op's only reader (PyTorch exports keep BN apart
from the conv: the case that must reach the KPU as one layer); otherwise it is a per-channel
multiply-add.
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.onnx.context import ImportContext, ImportResult, conv_pads
from kcc.frontend.onnx.reader import OnnxNode
from kcc.ir import ops as O
from kcc.ir.graph import Node


def _ints(ctx: ImportContext, node: OnnxNode, key: str, n: int, default: int) -> list[int]:
    value = list(node.attr(key, [default] * n))
    if len(value) != n or min(value) < 1:
        raise ctx.unsupported(node, f"{key} {value} for {n} spatial axes (must be {n} positive integers)")
    return value


def _bias(ctx: ImportContext, node: OnnxNode, i: int, oc: int) -> Node:
    if ctx.has_input(node, i):
        b = ctx.float_const(node, i, "bias")
        if b.size != oc:
            raise ctx.unsupported(node, f"bias of shape {list(b.shape)} for {oc} output channels")
        return ctx.const_node(b.reshape(oc), node.inputs[i])
    return ctx.const_node(np.zeros(oc, np.float32), f"{ctx.out_name(node)}/bias")


def _spatial_input(ctx: ImportContext, node: OnnxNode) -> tuple[Node, bool]:
    """Input 0 as a 4-D map; a 3-D [N, C, W] one (1-D conv) gets a unit H axis (True)."""
    x = ctx.input(node, 0)
    if len(x.shape) == 3:
        n, c, w = x.shape
        return ctx.add(node, O.Reshape((n, c, 1, w)), [x], f"{x.name}/2d"), True
    if len(x.shape) != 4:
        raise ctx.unsupported(node, f"only 1-D and 2-D convolutions are supported, input has shape {list(x.shape)}")
    return x, False


def _params(ctx: ImportContext, node: OnnxNode, w: np.ndarray, one_d: bool):
    """(kernel, strides, dilations) over the file's spatial axes (one for a 1-D conv)."""
    n = 1 if one_d else 2
    kernel = tuple(int(k) for k in w.shape[2:])
    ks = node.attr("kernel_shape")
    if ks is not None and tuple(ks) != kernel:
        raise ctx.unsupported(node, f"kernel_shape {list(ks)} does not match weights {list(w.shape)}")
    strides = _ints(ctx, node, "strides", n, 1)
    dilations = _ints(ctx, node, "dilations", n, 1)
    return kernel, strides, dilations


def conv(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Conv (opset 1, 11): weights [OC, C/group, kH, kW], optional bias, pads / auto_pad, strides,
    dilations, group."""
    x, one_d = _spatial_input(ctx, node)
    w = ctx.float_const(node, 1, "weights")
    if w.ndim != (3 if one_d else 4):
        raise ctx.unsupported(node, f"weights of shape {list(w.shape)} for input {list(ctx.shape(node, 0))}")
    group = int(node.attr("group", 1))
    c = x.shape[1]
    if group < 1 or c % group or w.shape[1] * group != c or w.shape[0] % group:
        raise ctx.unsupported(node, f"weights {list(w.shape)} with group {group} do not fit {c} input channels")
    spatial = x.shape[3:] if one_d else x.shape[2:]
    kernel, strides, dilations = _params(ctx, node, w, one_d)
    pads = conv_pads(ctx, node, spatial, kernel, strides, dilations)
    if one_d:
        w = w[:, :, None, :]
        strides, dilations, pads = [1, *strides], [1, *dilations], [(0, 0), *pads]
    ir_op = O.Conv2D(tuple(strides), (pads[0], pads[1]), tuple(dilations), group)
    wn = ctx.const_node(w, node.inputs[1])
    b = _bias(ctx, node, 2, w.shape[0])
    return _back_to_1d(ctx, node, ctx.add(node, ir_op, [x, wn, b], f"{ctx.out_name(node)}/2d" if one_d else None),
                       one_d)


def _back_to_1d(ctx: ImportContext, node: OnnxNode, y: Node, one_d: bool) -> Node:
    if not one_d:
        return y
    n, c, _, w = y.shape
    return ctx.add(node, O.Reshape((n, c, w)), [y])


def conv_transpose(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """ConvTranspose: weights [C, OC/group, kH, kW] (the IR wants [OC, C/group, ...]); the output size
    is stride*(in-1) + output_padding + (k-1)*dilation + 1 - pads, or `output_shape`, whose total padding
    is split SAME_UPPER-style (onnx/defs/nn/defs.cc ConvTranspose)."""
    x, one_d = _spatial_input(ctx, node)
    w = ctx.float_const(node, 1, "weights")
    if w.ndim != (3 if one_d else 4):
        raise ctx.unsupported(node, f"weights of shape {list(w.shape)} for input {list(ctx.shape(node, 0))}")
    if one_d:
        w = w[:, :, None, :]
    group = int(node.attr("group", 1))
    c = x.shape[1]
    if group < 1 or w.shape[0] != c or c % group:
        raise ctx.unsupported(node, f"weights {list(w.shape)} with group {group} do not fit {c} input channels")
    n_sp = 1 if one_d else 2
    strides = _ints(ctx, node, "strides", n_sp, 1)
    dilations = _ints(ctx, node, "dilations", n_sp, 1)
    out_pad = list(node.attr("output_padding", [0] * n_sp))
    if one_d:
        strides, dilations, out_pad = [1, *strides], [1, *dilations], [0, *out_pad]
    icg, ocg = c // group, w.shape[1]
    w_ir = w.reshape(group, icg, ocg, *w.shape[2:]).transpose(0, 2, 1, 3, 4).reshape(group * ocg, icg, *w.shape[2:])
    sizes_in = x.shape[2:]
    kernel = w.shape[2:]
    full = [s * (i - 1) + op + (k - 1) * d + 1 for i, s, op, k, d in zip(sizes_in, strides, out_pad, kernel, dilations)]
    auto = node.attr("auto_pad", "NOTSET")
    output_shape = node.attr("output_shape")
    if output_shape is not None:
        out = list(output_shape)[-n_sp:]
        if one_d:
            out = [1, *out]
        # a negative total (output_shape beyond the full result) pads the end: the IR kernel fills what
        # no input reaches with the bias
        totals = [max(0, f - o) for f, o in zip(full, out)]
        pads = [(t // 2, t - t // 2) if auto != "SAME_LOWER" else (t - t // 2, t // 2) for t in totals]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        out = [i * s for i, s in zip(sizes_in, strides)]
        totals = [max(0, f - o) for f, o in zip(full, out)]
        pads = [(t - t // 2, t // 2) if auto == "SAME_LOWER" else (t // 2, t - t // 2) for t in totals]
    else:
        p = [0] * (2 * n_sp) if auto == "VALID" else list(node.attr("pads", [0] * (2 * n_sp)))
        if len(p) != 2 * n_sp or min(p) < 0:
            raise ctx.unsupported(node, f"pads {p}")
        pads = [(p[k], p[k + n_sp]) for k in range(n_sp)]
        if one_d:
            pads = [(0, 0), *pads]
        out = [f - b - a for f, (b, a) in zip(full, pads)]
    if min(out) < 1:
        raise ctx.unsupported(node, f"output size {out} is empty")
    # the IR pads as the equivalent forward conv: `after` is what the full result loses past the output
    padding = tuple((b, max(0, f - b - o)) for (b, _), f, o in zip(pads, full, out))
    oc = group * ocg
    ir_op = O.Conv2DTranspose((x.shape[0], oc, out[0], out[1]), tuple(strides), padding, tuple(dilations), group)
    wn = ctx.const_node(w_ir, node.inputs[1])
    b = _bias(ctx, node, 2, oc)
    y = ctx.add(node, ir_op, [x, wn, b], f"{ctx.out_name(node)}/2d" if one_d else None)
    return _back_to_1d(ctx, node, y, one_d)


def _flat_matmul(ctx: ImportContext, node: OnnxNode, a: Node, w: np.ndarray, bias: np.ndarray,
                 want: tuple[int, ...]) -> Node:
    """a [..., K] @ w [K, N] + bias as an IR MatMul on the [-1, K] view, reshaped to `want`."""
    k, n = w.shape
    rows = int(np.prod(a.shape[:-1], dtype=np.int64))
    x = a if a.shape == (rows, k) else ctx.add(node, O.Reshape((rows, k)), [a], f"{a.name}/flat")
    name = ctx.out_name(node)
    ins = [x, ctx.const_node(w, node.inputs[1]), ctx.const_node(bias, f"{name}/bias")]
    if want == (rows, n):
        return ctx.add(node, O.MatMul(), ins)
    y = ctx.add(node, O.MatMul(), ins, f"{name}/matmul")
    return ctx.add(node, O.Reshape(want), [y])


def gemm(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Y = alpha * A' @ B' + beta * C (A' = A^T with transA, B' likewise); B must be constant. C folds
    into the bias when it is constant per column, else it is added."""
    a = ctx.input(node, 0)
    if len(a.shape) != 2:
        raise ctx.unsupported(node, f"A must be 2-D, has shape {list(a.shape)}")
    if node.attr("transA", 0):
        a = ctx.add(node, O.Transpose((1, 0)), [a], f"{a.name}/t")
    w = ctx.float_const(node, 1, "B")
    if w.ndim != 2:
        raise ctx.unsupported(node, f"B must be 2-D, has shape {list(w.shape)}")
    if node.attr("transB", 0):
        w = w.T
    if w.shape[0] != a.shape[1]:
        raise ctx.unsupported(node, f"A {list(a.shape)} and B {list(w.shape)} do not multiply")
    w = np.ascontiguousarray(w * np.float32(node.attr("alpha", 1.0)), np.float32)
    m, n = a.shape[0], w.shape[1]
    beta = np.float32(node.attr("beta", 1.0))
    bias = np.zeros(n, np.float32)
    extra = None
    name = ctx.out_name(node)
    if ctx.has_input(node, 2):
        if ctx.is_const(node, 2):
            c = ctx.float_const(node, 2, "C") * beta
            try:
                full = np.broadcast_to(c, (m, n))
            except ValueError:
                raise ctx.unsupported(node, f"C of shape {list(c.shape)} does not broadcast to {[m, n]}") from None
            if (full == full[:1]).all():
                bias = np.ascontiguousarray(full[0], np.float32)
            else:
                extra = ctx.const_node(c, node.inputs[2])
        else:
            extra = ctx.input(node, 2)
            if beta != 1:
                extra = ctx.add(node, O.Binary("mul"), [extra, ctx.const_node(np.array(beta), f"{name}/beta")],
                                f"{name}/beta_c")
    ins = [a, ctx.const_node(w, node.inputs[1]), ctx.const_node(bias, f"{name}/bias")]
    if extra is None:
        return ctx.add(node, O.MatMul(), ins)
    y = ctx.add(node, O.MatMul(), ins, f"{name}/matmul")
    return ctx.add(node, O.Binary("add"), [y, extra])


def matmul(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """A [..., K] @ B [K, N] with B constant (numpy matmul semantics: a 1-D A or B gains and loses a
    unit axis). Two run-time operands (attention) are not a K210 layer."""
    if not ctx.is_const(node, 1):
        raise ctx.unsupported(node, "both operands are computed at run time; kcc needs B constant (weights)")
    a = ctx.input(node, 0)
    w = ctx.float_const(node, 1, "B")
    w2 = w[:, None] if w.ndim == 1 else w
    if w2.ndim != 2:
        raise ctx.unsupported(node, f"batched constant B of shape {list(w.shape)}")
    if len(a.shape) == 0 or a.shape[-1] != w2.shape[0]:
        raise ctx.unsupported(node, f"A {list(a.shape)} and B {list(w.shape)} do not multiply")
    want = (*a.shape[:-1], *w.shape[1:])
    if len(a.shape) == 1:
        a = ctx.add(node, O.Reshape((1, a.shape[0])), [a], f"{a.name}/row")
    return _flat_matmul(ctx, node, a, w2, np.zeros(w2.shape[1], np.float32), want)


def batch_normalization(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """y = (x - mean) / sqrt(var + epsilon) * scale + B per channel (axis 1), inference mode only."""
    if node.attr("training_mode", 0) or any(ctx.readers.get(t, 0) for t in node.outputs[1:] if t):
        raise ctx.unsupported(node, "training mode (running mean / variance outputs are read)")
    if not node.attr("spatial", 1):
        raise ctx.unsupported(node, "spatial = 0 (per-element statistics, opset < 9)")
    x = ctx.input(node, 0)
    if len(x.shape) < 2:
        raise ctx.unsupported(node, f"input of shape {list(x.shape)} has no channel axis")
    c = x.shape[1]
    gamma, beta, mean, var = (ctx.float_const(node, i, what).astype(np.float64).ravel()
                              for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
    if not all(v.size == c for v in (gamma, beta, mean, var)):
        raise ctx.unsupported(node, f"statistics do not have {c} channels")
    s = gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
    t = beta - mean * s
    # a multiply-add: canonicalize folds it into a conv / gemm it follows (kcc.passes.affine)
    shape = (c,) + (1,) * (len(x.shape) - 2)
    name = ctx.out_name(node)
    y = ctx.add(node, O.Binary("mul"), [x, ctx.const_node(s.reshape(shape), f"{name}/scale")], f"{name}/mul")
    return ctx.add(node, O.Binary("add"), [y, ctx.const_node(t.reshape(shape), f"{name}/shift")])
