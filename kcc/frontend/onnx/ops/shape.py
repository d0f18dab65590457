"""Data movement that keeps every element: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Pad.

Shape operands must be constant at import (kcc compiles static shapes): a Shape -> Gather -> Concat
chain feeding a Reshape has been folded into a constant by then (kcc.frontend.onnx.fold).
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.onnx.context import ImportContext, ImportResult, axis_index
from kcc.frontend.onnx.reader import OnnxNode
from kcc.ir import ops as O


def reshape(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Target from the constant `shape` input: 0 copies the input's extent (unless allowzero), one -1
    takes the rest."""
    x = ctx.input(node, 0)
    target = ctx.const_ints(node, 1, "shape")
    allowzero = bool(node.attr("allowzero", 0))
    shape = [x.shape[i] if d == 0 and not allowzero and i < len(x.shape) else d for i, d in enumerate(target)]
    known = [d for d in shape if d != -1]
    if shape.count(-1) > 1 or min(known, default=1) < 0:
        raise ctx.unsupported(node, f"bad target shape {target}")
    size = x.type.size
    if -1 in shape:
        rest = int(np.prod(known, dtype=np.int64))
        if rest == 0 or size % rest:
            raise ctx.unsupported(node, f"cannot reshape {list(x.shape)} to {target}")
        shape = [size // rest if d == -1 else d for d in shape]
    if int(np.prod(shape, dtype=np.int64)) != size:
        raise ctx.unsupported(node, f"cannot reshape {list(x.shape)} to {target}")
    return ctx.add(node, O.Reshape(tuple(shape)), [x])


def flatten(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """[prod(d[:axis]), prod(d[axis:])], axis in [-r, r] (default 1)."""
    x = ctx.input(node, 0)
    rank = len(x.shape)
    axis = int(node.attr("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise ctx.unsupported(node, f"axis {node.attr('axis')} out of range for rank {rank}")
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return ctx.add(node, O.Reshape((rows, x.type.size // rows if rows else 0)), [x])


def squeeze(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Drop the given unit axes (attribute before opset 13, input since), or every unit axis."""
    x = ctx.input(node, 0)
    rank = len(x.shape)
    axes = ctx.attr_or_input(node, "axes", 1, None)
    dims = ({axis_index(ctx, node, int(a), rank) for a in axes} if axes
            else {i for i, d in enumerate(x.shape) if d == 1})
    if any(x.shape[d] != 1 for d in dims):
        raise ctx.unsupported(node, f"cannot squeeze axes {sorted(dims)} of shape {list(x.shape)}")
    return ctx.add(node, O.Reshape(tuple(d for i, d in enumerate(x.shape) if i not in dims)), [x])


def unsqueeze(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Insert unit axes at `axes` of the output (attribute before opset 13, input since)."""
    x = ctx.input(node, 0)
    axes = ctx.attr_or_input(node, "axes", 1, None)
    if not axes:
        raise ctx.unsupported(node, "no axes")
    out_rank = len(x.shape) + len(axes)
    where = {axis_index(ctx, node, int(a), out_rank) for a in axes}
    if len(where) != len(axes):
        raise ctx.unsupported(node, f"repeated axes {axes}")
    dims = iter(x.shape)
    return ctx.add(node, O.Reshape(tuple(1 if i in where else next(dims) for i in range(out_rank))), [x])


def transpose(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """perm (default: reversed axes)."""
    x = ctx.input(node, 0)
    rank = len(x.shape)
    perm = [axis_index(ctx, node, int(p), rank) for p in node.attr("perm", list(range(rank))[::-1])]
    if sorted(perm) != list(range(rank)):
        raise ctx.unsupported(node, f"perm {perm} for rank {rank}")
    if perm == list(range(rank)):
        return x
    return ctx.add(node, O.Transpose(tuple(perm)), [x])


def concat(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Concat along `axis`; constant inputs become Constant nodes."""
    xs = [ctx.input(node, i) for i in range(len(node.inputs)) if ctx.has_input(node, i)]
    rank = len(xs[0].shape)
    axis = axis_index(ctx, node, int(node.attr("axis", 0 if ctx.model.opset < 4 else 1)), rank)
    xs = [x for x in xs if x.shape[axis] != 0 or len(xs) == 1]  # empty pieces contribute nothing
    if len(xs) == 1:
        return xs[0]
    return ctx.add(node, O.Concat(axis), xs)


def pad(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Constant-mode Pad: `pads` [x1_begin, ..., x1_end, ...] and `value` as attributes before opset 11,
    inputs since (plus `axes` from 18). Negative pads crop (a StridedSlice first)."""
    x = ctx.input(node, 0)
    rank = len(x.shape)
    mode = node.attr("mode", "constant")
    if mode != "constant":
        raise ctx.unsupported(node, f"mode {mode!r} (the IR pads with a constant only)")
    pads = ctx.attr_or_input(node, "pads", 1, None)
    if pads is None:
        raise ctx.unsupported(node, "no pads")
    if ctx.has_input(node, 2):
        v = ctx.float_const(node, 2, "constant_value")
        value = float(v.ravel()[0]) if v.size else 0.0
    else:
        value = float(node.attr("value", 0.0))
    axes = ctx.const_ints(node, 3, "axes") if ctx.has_input(node, 3) else list(range(rank))
    axes = [axis_index(ctx, node, a, rank) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ctx.unsupported(node, f"pads {pads} for {len(axes)} axes")
    pairs = [(0, 0)] * rank
    for k, a in enumerate(axes):
        pairs[a] = (pads[k], pads[k + len(axes)])
    if any(b < 0 or e < 0 for b, e in pairs):
        begin = tuple(-min(b, 0) for b, _ in pairs)
        end = tuple(d + min(e, 0) for d, (_, e) in zip(x.shape, pairs))
        if any(b >= e for b, e in zip(begin, end)):
            raise ctx.unsupported(node, f"pads {pads} crop shape {list(x.shape)} to nothing")
        x = ctx.add(node, O.StridedSlice(begin, end, (1,) * rank), [x], f"{ctx.out_name(node)}/crop")
        pairs = [(max(b, 0), max(e, 0)) for b, e in pairs]
    if all(b == 0 and e == 0 for b, e in pairs):
        return x
    return ctx.add(node, O.Pad(tuple(pairs), value), [x])
