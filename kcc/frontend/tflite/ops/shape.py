"""Data-movement ops that keep every element: RESHAPE, SQUEEZE, EXPAND_DIMS, TRANSPOSE,
CONCATENATION, PACK, PAD, PADV2.

All are imported in tflite's layout with constant shape operands; shapes must be static
(ecosystem.md P1: SHAPE-driven dynamic reshapes are the usual cause of unsupported Keras models).
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.tflite.context import ImportContext, ImportResult, axis_index
from kcc.frontend.tflite.reader import TfliteOperator
from kcc.ir import ops as O


def resolve_shape(ctx: ImportContext, op: TfliteOperator, size: int, shape: list[int]) -> tuple[int, ...]:
    """Replace the single -1 of a reshape target by the remaining extent."""
    known = [d for d in shape if d != -1]
    if shape.count(-1) > 1 or any(d < 0 for d in known):
        raise ctx.unsupported(op, f"bad target shape {shape}")
    if -1 in shape:
        rest = int(np.prod(known, dtype=np.int64))
        if rest == 0 or size % rest:
            raise ctx.unsupported(op, f"cannot reshape {size} elements to {shape}")
        shape = [size // rest if d == -1 else d for d in shape]
    if int(np.prod(shape, dtype=np.int64)) != size:
        raise ctx.unsupported(op, f"cannot reshape {size} elements to {shape}")
    return tuple(shape)


def reshape(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """Target from the constant shape input, else ReshapeOptions.new_shape, else the output tensor."""
    x = ctx.input(op, 0)
    if ctx.has_input(op, 1):
        target = ctx.const_ints(op, 1, "shape")
    elif op.opt("new_shape"):
        target = list(op.opt("new_shape"))
    else:
        target = list(ctx.out_shape(op))
    return ctx.add(op, O.Reshape(resolve_shape(ctx, op, x.type.size, target)), [x])


def squeeze(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    x = ctx.input(op, 0)
    rank = len(x.shape)
    dims = {axis_index(d, rank) for d in op.opt("squeeze_dims", ())} or {i for i, d in enumerate(x.shape) if d == 1}
    if any(not 0 <= d < rank or x.shape[d] != 1 for d in dims):
        raise ctx.unsupported(op, f"cannot squeeze axes {sorted(dims)} of shape {list(x.shape)}")
    return ctx.add(op, O.Reshape(tuple(d for i, d in enumerate(x.shape) if i not in dims)), [x])


def expand_dims(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    x = ctx.input(op, 0)
    (axis,) = ctx.const_ints(op, 1, "axis")
    rank = len(x.shape)
    axis = axis + rank + 1 if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise ctx.unsupported(op, f"axis {axis} out of range for rank {rank}")
    return ctx.add(op, O.Reshape((*x.shape[:axis], 1, *x.shape[axis:])), [x])


def transpose(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    x = ctx.input(op, 0)
    perm = [axis_index(p, len(x.shape)) for p in ctx.const_ints(op, 1, "perm")]
    if sorted(perm) != list(range(len(x.shape))):
        raise ctx.unsupported(op, f"perm {perm} for rank {len(x.shape)}")
    return ctx.add(op, O.Transpose(tuple(perm)), [x])


def concatenation(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    xs = [ctx.input(op, i) for i in range(len(op.inputs))]
    rank = len(xs[0].shape)
    axis = axis_index(op.opt("axis", 0), rank)
    if not 0 <= axis < rank:
        raise ctx.unsupported(op, f"axis {op.opt('axis')} out of range for rank {rank}")
    return ctx.add_with_act(op, O.Concat(axis), xs, ctx.fused_act(op))


def pack(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """Stack N equal tensors along a new axis: expand each, then concatenate."""
    xs = [ctx.input(op, i) for i in range(len(op.inputs))]
    rank = len(xs[0].shape)
    axis = op.opt("axis", 0)
    axis = axis + rank + 1 if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise ctx.unsupported(op, f"axis {op.opt('axis')} out of range for rank {rank}")
    name = ctx.out_name(op)
    parts = [ctx.add(op, O.Reshape((*x.shape[:axis], 1, *x.shape[axis:])), [x], f"{name}/item{i}")
             for i, x in enumerate(xs)]
    return ctx.add(op, O.Concat(axis), parts)


def _pad(ctx: ImportContext, op: TfliteOperator, value: float) -> ImportResult:
    x = ctx.input(op, 0)
    pads = ctx.const_ints(op, 1, "paddings")
    rank = len(x.shape)
    if len(pads) != 2 * rank or min(pads, default=0) < 0:
        raise ctx.unsupported(op, f"paddings {pads} for rank {rank} (must be non-negative pairs)")
    pairs = tuple((pads[2 * i], pads[2 * i + 1]) for i in range(rank))
    return ctx.add(op, O.Pad(pairs, value), [x])


def pad(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _pad(ctx, op, 0.0)


def padv2(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """PADV2's input 2 is the constant pad value (a scalar or one-element tensor)."""
    value = ctx.float_const(op, 2, "constant value") if ctx.has_input(op, 2) else np.zeros(1, np.float32)
    if value.size != 1:
        raise ctx.unsupported(op, f"pad value must be a scalar, has shape {list(value.shape)}")
    return _pad(ctx, op, float(value.ravel()[0]))
