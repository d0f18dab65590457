"""Data movement: Input, Split, Concat, Slice, Flatten, Reshape, Permute (all shapes static).

Semantics from the Caffe layers (ReshapeLayer::Reshape, FlattenLayer::Reshape, SliceLayer::Reshape,
ConcatLayer::Reshape) and the SSD fork's PermuteLayer (`order` lists the new axes; axes it leaves
out follow in their original order).
"""

from __future__ import annotations

import numpy as np

from kcc.errors import UnsupportedModelError
from kcc.frontend.caffe.context import ImportContext, ImportResult, axis_index
from kcc.ir import ops as O


def input_(ctx: ImportContext, layer) -> ImportResult:
    """One graph input per top; `input_param` has one shape for all tops or one per top."""
    shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
    if len(shapes) not in (1, len(layer.top)):
        raise ctx.bad(layer, f"{len(shapes)} shapes for {len(layer.top)} tops")
    nodes = []
    for k, top in enumerate(layer.top):
        shape = shapes[0] if len(shapes) == 1 else shapes[k]
        nodes.append(graph_input(ctx, top, shape, ctx.where(layer)))
    return nodes


def graph_input(ctx: ImportContext, name: str, shape: tuple[int, ...], where: str):
    """A graph input (NCHW, as Caffe's); `where` names the layer or file declaring it in errors."""
    if not shape or any(d < 1 for d in shape):
        raise UnsupportedModelError(f"{where}: input '{name}' has shape {list(shape)}; kcc needs a static "
                                    f"shape with positive dimensions")
    return ctx.graph.input(len(ctx.graph.inputs), shape, name=name)


def split(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input(layer)
    return [x] * len(layer.top)


def concat(ctx: ImportContext, layer) -> ImportResult:
    xs = ctx.inputs(layer)
    if not xs:
        raise ctx.bad(layer, "needs at least one bottom")
    p = layer.concat_param
    raw = int(p.concat_dim) if p.HasField("concat_dim") else p.axis
    axis = axis_index(raw, len(xs[0].shape))
    if axis is None:
        raise ctx.bad(layer, f"axis {raw} out of range for shape {list(xs[0].shape)}")
    if len(xs) == 1:
        return xs[0]
    for x in xs:
        if len(x.shape) != len(xs[0].shape) or any(a != b for i, (a, b) in enumerate(zip(x.shape, xs[0].shape))
                                                   if i != axis):
            raise ctx.bad(layer, f"bottom shapes {[list(x.shape) for x in xs]} differ off axis {axis}")
    return ctx.add(layer, O.Concat(axis), xs)


def slice_(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input(layer)
    p = layer.slice_param
    if p.HasField("axis") and p.HasField("slice_dim"):
        raise ctx.bad(layer, "axis and slice_dim are both given")
    raw = int(p.slice_dim) if p.HasField("slice_dim") else p.axis
    axis = axis_index(raw, len(x.shape))
    if axis is None:
        raise ctx.bad(layer, f"axis {raw} out of range for shape {list(x.shape)}")
    n, dim = len(layer.top), x.shape[axis]
    points = [int(v) for v in p.slice_point]
    if points:
        if len(points) != n - 1 or points != sorted(set(points)) or points[0] <= 0 or points[-1] >= dim:
            raise ctx.bad(layer, f"slice_point {points} does not cut axis {axis} ({dim}) into {n} parts")
        bounds = [0, *points, dim]
    else:
        if dim % n:
            raise ctx.bad(layer, f"axis {axis} ({dim}) does not split evenly into {n} tops")
        bounds = [i * dim // n for i in range(n + 1)]
    rank = len(x.shape)
    outs = []
    for k in range(n):
        begin = tuple(bounds[k] if i == axis else 0 for i in range(rank))
        end = tuple(bounds[k + 1] if i == axis else d for i, d in enumerate(x.shape))
        outs.append(ctx.add(layer, O.StridedSlice(begin, end, (1,) * rank), [x], ctx.out_name(layer, k)))
    return outs


def flatten(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input(layer)
    rank = len(x.shape)
    p = layer.flatten_param
    start, end = axis_index(p.axis, rank), axis_index(p.end_axis, rank)
    if start is None or end is None or end < start:
        raise ctx.bad(layer, f"axes {p.axis}..{p.end_axis} out of range for shape {list(x.shape)}")
    shape = (*x.shape[:start], int(np.prod(x.shape[start:end + 1], dtype=np.int64)), *x.shape[end + 1:])
    return ctx.add(layer, O.Reshape(shape), [x])


def reshape(ctx: ImportContext, layer) -> ImportResult:
    """ReshapeLayer: `shape` replaces axes [axis, axis + num_axes) of the input; 0 copies the input's
    dimension at that position, one -1 takes what is left."""
    x = ctx.input(layer)
    p = layer.reshape_param
    rank = len(x.shape)
    start = p.axis if p.axis >= 0 else rank + 1 + p.axis
    if not 0 <= start <= rank:
        raise ctx.bad(layer, f"axis {p.axis} out of range for shape {list(x.shape)}")
    end = rank if p.num_axes == -1 else start + p.num_axes
    if p.num_axes < -1 or end > rank:
        raise ctx.bad(layer, f"num_axes {p.num_axes} out of range for shape {list(x.shape)}")
    spec = [int(d) for d in p.shape.dim]
    dims = []
    for i, d in enumerate(spec):
        if d == 0:
            if start + i >= rank:
                raise ctx.bad(layer, f"dim {i} is 0 (copy) but the input has no axis {start + i}")
            dims.append(x.shape[start + i])
        elif d >= -1:
            dims.append(d)
        else:
            raise ctx.bad(layer, f"bad dim {d} in shape {spec}")
    if dims.count(-1) > 1:
        raise ctx.bad(layer, f"more than one -1 in shape {spec}")
    shape = [*x.shape[:start], *dims, *x.shape[end:]]
    known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
    size = int(np.prod(x.shape, dtype=np.int64))
    if -1 in shape:
        if known == 0 or size % known:
            raise ctx.bad(layer, f"cannot reshape {list(x.shape)} to {spec}")
        shape = [size // known if d == -1 else d for d in shape]
    if int(np.prod(shape, dtype=np.int64)) != size:
        raise ctx.bad(layer, f"cannot reshape {list(x.shape)} ({size} values) to {shape}")
    return ctx.add(layer, O.Reshape(tuple(shape)), [x])


def permute(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input(layer)
    rank = len(x.shape)
    order = [int(v) for v in layer.permute_param.order]
    if len(set(order)) != len(order) or any(not 0 <= a < rank for a in order):
        raise ctx.bad(layer, f"order {order} is not a permutation of the axes of {list(x.shape)}")
    perm = (*order, *(a for a in range(rank) if a not in order))
    return ctx.add(layer, O.Transpose(tuple(perm)), [x])
