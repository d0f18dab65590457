"""Element-wise ops: arithmetic, activations, Softmax, and the identities (Identity, Dropout, Cast).

ONNX broadcasts binary ops multidirectionally from opset 7 on, which is numpy's rule and the IR's
`Binary`. Activations without an IR op of their own are compositions: HardSigmoid is a multiply-add
with a (0, 1) clamp, SiLU needs nothing (Mul(x, Sigmoid(x)) is two IR ops already), Reciprocal is 1 / x.
"""

from __future__ import annotations

import numpy as np
import onnx

from kcc.frontend.onnx.context import ImportContext, ImportResult, axis_index
from kcc.frontend.onnx.reader import OnnxNode
from kcc.ir import ops as O

_FLT_MAX = float(np.finfo(np.float32).max)


def _binary(kind: str):
    def importer(ctx: ImportContext, node: OnnxNode) -> ImportResult:
        return ctx.add(node, O.Binary(kind), [ctx.input(node, 0), ctx.input(node, 1)])

    importer.__name__ = kind
    importer.__doc__ = f"Binary {kind!r} with numpy broadcasting."
    return importer


add = _binary("add")
sub = _binary("sub")
mul = _binary("mul")
div = _binary("div")


def _variadic(kind: str, title: str):
    def importer(ctx: ImportContext, node: OnnxNode) -> ImportResult:
        xs = [ctx.input(node, i) for i in range(len(node.inputs)) if ctx.has_input(node, i)]
        if not xs:
            raise ctx.unsupported(node, "no inputs")
        y = xs[0]
        for k, x in enumerate(xs[1:], 1):
            last = k == len(xs) - 1 and kind != "mean"
            y = ctx.add(node, O.Binary("add" if kind == "mean" else kind), [y, x],
                        None if last else f"{ctx.out_name(node)}/{k}")
        if kind == "mean":
            y = ctx.add(node, O.Binary("mul"), [y, ctx.const_node(np.array(1 / len(xs)), f"{ctx.out_name(node)}/n")])
        return y

    importer.__name__ = title.lower()
    importer.__doc__ = f"{title} of any number of inputs, as a chain of Binary ops."
    return importer


max_ = _variadic("max", "Max")
min_ = _variadic("min", "Min")
sum_ = _variadic("add", "Sum")
mean = _variadic("mean", "Mean")


def _unary(kind: str):
    def importer(ctx: ImportContext, node: OnnxNode) -> ImportResult:
        return ctx.add(node, O.Unary(kind), [ctx.input(node, 0)])

    importer.__name__ = kind
    importer.__doc__ = f"Unary {kind!r} (kcc.ir.ops.UNARY_OPS)."
    return importer


abs_ = _unary("abs")
ceil = _unary("ceil")
cos = _unary("cos")
exp = _unary("exp")
floor = _unary("floor")
log = _unary("log")
neg = _unary("neg")
sin = _unary("sin")
sqrt = _unary("sqrt")
tanh = _unary("tanh")
sigmoid = _unary("logistic")
hard_swish = _unary("hard_swish")
round_ = _unary("round")  # both round half to even


def reciprocal(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """1 / x."""
    one = ctx.const_node(np.array(1.0), f"{ctx.out_name(node)}/one")
    return ctx.add(node, O.Binary("div"), [one, ctx.input(node, 0)])


def pow_(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """x^2 (square), x^0.5 (sqrt), x^1 and x^-1 with a constant scalar exponent."""
    e = ctx.float_const(node, 1, "exponent")
    if e.size != 1 or float(e.ravel()[0]) not in (2.0, 0.5, 1.0, -1.0):
        raise ctx.unsupported(node, "only the constant exponents 2, 0.5, 1 and -1 are supported")
    x = ctx.input(node, 0)
    k = float(e.ravel()[0])
    if k == 1.0:
        return x
    if k == -1.0:
        return ctx.add(node, O.Binary("div"), [ctx.const_node(np.array(1.0), f"{ctx.out_name(node)}/one"), x])
    return ctx.add(node, O.Unary("square" if k == 2.0 else "sqrt"), [x])


def relu(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """max(x, 0)."""
    return ctx.add(node, O.Clamp(0.0, O.INF), [ctx.input(node, 0)])


def clip(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """clamp(x, min, max): attributes before opset 11, optional constant inputs 1 and 2 since."""
    lo = ctx.attr_or_input(node, "min", 1, -_FLT_MAX, ints=False)
    hi = ctx.attr_or_input(node, "max", 2, _FLT_MAX, ints=False)
    lo, hi = (float(np.asarray(v).ravel()[0]) for v in (lo, hi))
    lo = -O.INF if lo <= -_FLT_MAX else lo
    hi = O.INF if hi >= _FLT_MAX else hi
    if lo > hi:  # numpy.clip and onnxruntime give max for every element then
        lo = hi
    return ctx.add(node, O.Clamp(lo, hi), [ctx.input(node, 0)])


def leaky_relu(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """x if x >= 0 else alpha * x (alpha defaults to 0.01)."""
    return ctx.add(node, O.LeakyRelu(float(node.attr("alpha", 0.01))), [ctx.input(node, 0)])


def prelu(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """x if x >= 0 else slope * x; the slope broadcasts to x (usually [C, 1, 1])."""
    x, slope = ctx.input(node, 0), ctx.input(node, 1)
    try:
        ok = tuple(np.broadcast_shapes(x.shape, slope.shape)) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ctx.unsupported(node, f"slope of shape {list(slope.shape)} does not broadcast to {list(x.shape)}")
    return ctx.add(node, O.PRelu(), [x, slope])


def hard_sigmoid(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """max(0, min(1, alpha * x + beta)) (alpha 0.2, beta 0.5 by default): a multiply, then an add
    carrying the (0, 1) clamp."""
    name = ctx.out_name(node)
    alpha = ctx.const_node(np.array(node.attr("alpha", 0.2)), f"{name}/alpha")
    beta = ctx.const_node(np.array(node.attr("beta", 0.5)), f"{name}/beta")
    y = ctx.add(node, O.Binary("mul"), [ctx.input(node, 0), alpha], f"{name}/scaled")
    return ctx.add(node, O.Binary("add", (0.0, 1.0)), [y, beta])


def softmax(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Opset >= 13: softmax along `axis` (default -1). Before: the input is coerced to 2-D at `axis`
    (default 1), [prod(d[:axis]), prod(d[axis:])], normalised along the second axis and reshaped back."""
    x = ctx.input(node, 0)
    rank = len(x.shape)
    if rank == 0:
        raise ctx.unsupported(node, "softmax of a scalar")
    if ctx.model.opset >= 13:
        return ctx.add(node, O.Softmax(axis_index(ctx, node, int(node.attr("axis", -1)), rank)), [x])
    axis = axis_index(ctx, node, int(node.attr("axis", 1)), rank)
    if all(d == 1 for d in x.shape[axis + 1:]):
        return ctx.add(node, O.Softmax(axis), [x])  # the trailing axes are units: one axis is the same
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    flat = ctx.add(node, O.Reshape((rows, x.type.size // max(rows, 1))), [x], f"{ctx.out_name(node)}/2d")
    y = ctx.add(node, O.Softmax(1), [flat], f"{ctx.out_name(node)}/softmax")
    return ctx.add(node, O.Reshape(x.shape), [y])


def identity(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """The input itself (no node): Identity, and Dropout at inference (its mask output must be unread)."""
    if any(ctx.readers.get(t, 0) for t in node.outputs[1:] if t):
        raise ctx.unsupported(node, "the dropout mask output is read")
    if node.op_type == "Dropout" and ctx.has_input(node, 2) and bool(np.asarray(ctx.const(node, 2, "training_mode")).any()):
        raise ctx.unsupported(node, "training mode (random dropout)")
    return ctx.input(node, 0)


def cast(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """A cast of a run-time float tensor to a float type is the identity (kcc computes in float32);
    casts to integer types of run-time tensors are not layers the K210 runs."""
    to = int(node.attr("to", 0))
    if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                  onnx.TensorProto.BFLOAT16):
        raise ctx.unsupported(node, f"cast of a run-time tensor to {onnx.TensorProto.DataType.Name(to)}")
    return ctx.input(node, 0)


def cast_like(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """CastLike to a float tensor's type (opset 15): a constant becomes a float constant, a run-time
    float tensor stays itself (function expansions of HardSigmoid, Relu... cast their constants so)."""
    if ctx.has_input(node, 1) and node.inputs[1] in ctx.consts and ctx.consts[node.inputs[1]].dtype.kind != "f":
        raise ctx.unsupported(node, "cast to a non-float type")
    if ctx.is_const(node, 0):
        return ctx.float_const(node, 0)
    return ctx.input(node, 0)
