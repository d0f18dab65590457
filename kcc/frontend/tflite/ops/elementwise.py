"""Element-wise ops: binary arithmetic, unary math, activations, softmax and L2 normalisation.

None of these has a layout, so they are imported in tflite's own (NHWC) layout; the transposes
around neighbouring spatial ops move through them during canonicalisation. Binary ops broadcast
like numpy (TFLite's BroadcastBinaryFunction uses the same right-aligned rule).
"""

from __future__ import annotations

from kcc.frontend.tflite.context import ImportContext, ImportResult
from kcc.frontend.tflite.reader import TfliteOperator
from kcc.ir import ops as O


def _binary(ctx: ImportContext, op: TfliteOperator, kind: str) -> ImportResult:
    a, b = ctx.input(op, 0), ctx.input(op, 1)
    return ctx.add(op, O.Binary(kind, ctx.fused_act(op)), [a, b])


def add(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _binary(ctx, op, "add")


def sub(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _binary(ctx, op, "sub")


def mul(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _binary(ctx, op, "mul")


def div(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _binary(ctx, op, "div")


def maximum(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _binary(ctx, op, "max")


def minimum(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _binary(ctx, op, "min")


def squared_difference(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """(a - b)^2 as a Binary sub followed by a Unary square."""
    d = ctx.add(op, O.Binary("sub"), [ctx.input(op, 0), ctx.input(op, 1)], f"{ctx.out_name(op)}/diff")
    return ctx.add(op, O.Unary("square"), [d])


def _unary(kind: str):
    def importer(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
        return ctx.add(op, O.Unary(kind), [ctx.input(op, 0)])

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
rsqrt = _unary("rsqrt")
sin = _unary("sin")
sqrt = _unary("sqrt")
square = _unary("square")
tanh = _unary("tanh")
logistic = _unary("logistic")
hard_swish = _unary("hard_swish")
round_ = _unary("round")


def _clamp(lo: float, hi: float, opcode: str):
    def importer(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
        return ctx.add(op, O.Clamp(lo, hi), [ctx.input(op, 0)])

    importer.__name__ = opcode.lower()
    importer.__doc__ = f"{opcode} = clamp(x, {lo}, {hi})."
    return importer


relu = _clamp(0.0, O.INF, "RELU")
relu6 = _clamp(0.0, 6.0, "RELU6")
relu_n1_to_1 = _clamp(-1.0, 1.0, "RELU_N1_TO_1")
relu_0_to_1 = _clamp(0.0, 1.0, "RELU_0_TO_1")


def leaky_relu(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return ctx.add(op, O.LeakyRelu(float(op.opt("alpha", 0.2))), [ctx.input(op, 0)])


def prelu(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """alpha (input 1, usually a constant [1, 1, C]) broadcasts against x."""
    return ctx.add(op, O.PRelu(), [ctx.input(op, 0), ctx.input(op, 1)])


def softmax(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """TFLite SOFTMAX normalises over the last axis: exp(beta*(x - max)) / sum."""
    x = ctx.input(op, 0)
    if len(x.shape) == 0:
        raise ctx.unsupported(op, "softmax of a scalar")
    return ctx.add(op, O.Softmax(len(x.shape) - 1, float(op.opt("beta", 1.0))), [x])


def l2_normalization(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """x / max(||x||, 1e-6) over the last axis (reference_ops L2Normalization, epsilon 1e-6), which
    is the kernel's reading of `L2Normalize.eps` (kcc.eval.kernels.l2_normalize); then the fused
    activation as a Clamp node."""
    x = ctx.input(op, 0)
    return ctx.add_with_act(op, O.L2Normalize(len(x.shape) - 1, 1e-6), [x], ctx.fused_act(op))
