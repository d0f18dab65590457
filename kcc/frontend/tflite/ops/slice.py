"""Ops that select part of a tensor: STRIDED_SLICE, SLICE, SPLIT, SPLIT_V, UNPACK.

Every one becomes IR `StridedSlice` nodes with normalised in-range indices (kcc.ir.ops), plus a
Reshape where TFLite adds (new_axis_mask) or drops (shrink_axis_mask, UNPACK) axes. Multi-output ops
give one node per output tensor.
"""

from __future__ import annotations

from kcc.frontend.tflite.context import ImportContext, ImportResult, axis_index
from kcc.frontend.tflite.reader import TfliteOperator
from kcc.ir import ops as O
from kcc.ir.graph import Node

Range = tuple[int, int, int]  # (begin, end, stride) normalised as kcc.ir.ops.StridedSlice wants


def _normalise(s: slice, dim: int) -> Range:
    """Python slice semantics (clamping, negative indices), which TF's strided slice shares."""
    b, e, st = s.indices(dim)
    return (b, max(e, b), st) if st > 0 else (b, min(e, b), st)


def _slice_node(ctx: ImportContext, op: TfliteOperator, x: Node, ranges: list[Range],
                out_shape: tuple[int, ...], name: str) -> Node:
    """StridedSlice of `ranges` (the identity slice is skipped), then a Reshape to `out_shape`."""
    sliced = tuple(len(range(b, e, s)) for b, e, s in ranges)
    if 0 in sliced:
        raise ctx.unsupported(op, f"slice {ranges} of shape {list(x.shape)} is empty")
    y = x
    if any((b, e, s) != (0, d, 1) for (b, e, s), d in zip(ranges, x.shape)):
        ir_op = O.StridedSlice(*(tuple(r[k] for r in ranges) for k in range(3)))
        y = ctx.add(op, ir_op, [x], name if sliced == tuple(out_shape) else f"{name}/slice")
    if y.shape != tuple(out_shape):
        y = ctx.add(op, O.Reshape(tuple(out_shape)), [y], name)
    return y


def strided_slice(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """x[spec] with TF's mask semantics (tensorflow/lite/kernels/strided_slice.cc, `strided_ranges`)."""
    x = ctx.input(op, 0)
    ranges, out_shape = strided_ranges(ctx, op, x.shape)
    return _slice_node(ctx, op, x, ranges, out_shape, ctx.out_name(op))


def strided_ranges(ctx: ImportContext, op: TfliteOperator, shape: tuple[int, ...]
                   ) -> tuple[list[Range], tuple[int, ...]]:
    """The per-axis ranges a STRIDED_SLICE reads from a tensor of `shape`, and its output shape.

    TF's mask semantics (tensorflow/lite/kernels/strided_slice.cc, TF's ValidateStridedSliceOp): bit i
    of ellipsis_mask makes spec i an `...`, of new_axis_mask a new size-1 axis, of shrink_axis_mask the
    single index begin[i] (axis dropped), of begin/end_mask an open start/stop; `offset` means end is
    relative to begin. Missing trailing specs take whole axes. Shared with the constant folder
    (kcc.frontend.tflite.fold), which applies the same ranges to integer shape tensors.
    """
    begin = ctx.const_ints(op, 1, "begin")
    end = ctx.const_ints(op, 2, "end")
    strides = ctx.const_ints(op, 3, "strides") if ctx.has_input(op, 3) else [1] * len(begin)
    if not len(begin) == len(end) == len(strides) or 0 in strides:
        raise ctx.unsupported(op, f"begin {begin}, end {end}, strides {strides}")
    masks = {k: int(op.opt(f"{k}_mask", 0)) for k in ("begin", "end", "ellipsis", "new_axis", "shrink_axis")}
    if op.opt("offset", False):
        end = [b + e for b, e in zip(begin, end)]
    bit = lambda k, i: bool(masks[k] >> i & 1)  # noqa: E731
    n_spec = len(begin)
    # Axes of x consumed by the specs other than the ellipsis and new axes.
    consumed = sum(1 for i in range(n_spec) if not bit("ellipsis", i) and not bit("new_axis", i))
    ranges: list[Range] = []
    out_shape: list[int] = []
    axis, seen_ellipsis = 0, False
    for i in range(n_spec):
        if bit("ellipsis", i) and not seen_ellipsis:
            seen_ellipsis = True
            for _ in range(len(shape) - consumed):
                ranges.append((0, shape[axis], 1))
                out_shape.append(shape[axis])
                axis += 1
            continue
        if bit("new_axis", i):
            out_shape.append(1)
            continue
        if axis >= len(shape):
            raise ctx.unsupported(op, f"slice spec of {n_spec} entries for rank {len(shape)}")
        dim = shape[axis]
        if bit("shrink_axis", i):
            idx = axis_index(begin[i], dim)
            if not 0 <= idx < dim:
                raise ctx.unsupported(op, f"index {begin[i]} out of range for axis {axis} of size {dim}")
            ranges.append((idx, idx + 1, 1))
        else:
            s = slice(None if bit("begin", i) else begin[i], None if bit("end", i) else end[i], strides[i])
            ranges.append(_normalise(s, dim))
            out_shape.append(len(range(*ranges[-1])))
        axis += 1
    for d in shape[axis:]:
        ranges.append((0, d, 1))
        out_shape.append(d)
    return ranges, tuple(out_shape)


def slice_(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """x[begin : begin + size] per axis; size -1 means up to the end."""
    x = ctx.input(op, 0)
    ranges = slice_ranges(ctx, op, x.shape)
    return _slice_node(ctx, op, x, ranges, tuple(e - b for b, e, _ in ranges), ctx.out_name(op))


def slice_ranges(ctx: ImportContext, op: TfliteOperator, shape: tuple[int, ...]) -> list[Range]:
    """The per-axis ranges a SLICE reads from a tensor of `shape` (shared with the constant folder)."""
    begin, size = ctx.const_ints(op, 1, "begin"), ctx.const_ints(op, 2, "size")
    if len(begin) != len(shape) or len(size) != len(shape):
        raise ctx.unsupported(op, f"begin {begin} / size {size} for rank {len(shape)}")
    ranges = []
    for b, n, d in zip(begin, size, shape):
        e = d if n == -1 else b + n
        if not 0 <= b <= e <= d:
            raise ctx.unsupported(op, f"begin {begin} size {size} out of range for shape {list(shape)}")
        ranges.append((b, e, 1))
    return ranges


def _split(ctx: ImportContext, op: TfliteOperator, x: Node, axis: int, sizes: list[int],
           keep_axis: bool = True) -> list[Node]:
    outs, start = [], 0
    for k, n in enumerate(sizes):
        ranges = [(0, d, 1) for d in x.shape]
        ranges[axis] = (start, start + n, 1)
        shape = list(x.shape)
        shape[axis] = n
        if not keep_axis:
            del shape[axis]
        outs.append(_slice_node(ctx, op, x, ranges, tuple(shape), ctx.out_name(op, k)))
        start += n
    return outs


def _axis(ctx: ImportContext, op: TfliteOperator, axis: int, rank: int) -> int:
    a = axis_index(axis, rank)
    if not 0 <= a < rank:
        raise ctx.unsupported(op, f"axis {axis} out of range for rank {rank}")
    return a


def split(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """Inputs (axis, x): num_splits equal parts."""
    x = ctx.input(op, 1)
    (axis,) = ctx.const_ints(op, 0, "axis")
    axis = _axis(ctx, op, axis, len(x.shape))
    n = int(op.opt("num_splits", len(op.outputs)))
    if n <= 0 or x.shape[axis] % n or n != len(op.outputs):
        raise ctx.unsupported(op, f"cannot split axis of size {x.shape[axis]} into {n} parts")
    return _split(ctx, op, x, axis, [x.shape[axis] // n] * n)


def split_v(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """Inputs (x, size_splits, axis); one size may be -1 (the rest)."""
    x = ctx.input(op, 0)
    sizes = ctx.const_ints(op, 1, "size_splits")
    (axis,) = ctx.const_ints(op, 2, "axis")
    axis = _axis(ctx, op, axis, len(x.shape))
    dim = x.shape[axis]
    if sizes.count(-1) == 1:
        sizes[sizes.index(-1)] = dim - sum(s for s in sizes if s != -1)
    if sum(sizes) != dim or min(sizes) <= 0 or len(sizes) != len(op.outputs):
        raise ctx.unsupported(op, f"size_splits {sizes} for an axis of size {dim}")
    return _split(ctx, op, x, axis, sizes)


def unpack(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """Split into size-1 pieces along `axis` and drop that axis."""
    x = ctx.input(op, 0)
    axis = _axis(ctx, op, op.opt("axis", 0), len(x.shape))
    if x.shape[axis] != len(op.outputs):
        raise ctx.unsupported(op, f"{len(op.outputs)} outputs for an axis of size {x.shape[axis]}")
    return _split(ctx, op, x, axis, [1] * x.shape[axis], keep_axis=False)
