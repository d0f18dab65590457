"""Ops that select part of a tensor: Slice and Split, both onto IR StridedSlice nodes.

Slice: `starts`/`ends`/`axes` are attributes before opset 10, inputs since (with `steps`); indices clamp
as numpy's do (onnx/defs/tensor/defs.cc Slice), which Python's `slice.indices` computes. Split: sizes
from the `split` attribute (before 13) or input (13+), else equal parts (`num_outputs` from 18, the last
part smaller when the axis does not divide).
"""

from __future__ import annotations

from kcc.frontend.onnx.context import ImportContext, ImportResult, axis_index
from kcc.frontend.onnx.reader import OnnxNode
from kcc.ir import ops as O
from kcc.ir.graph import Node


def _strided(ctx: ImportContext, node: OnnxNode, x: Node, ranges: list[tuple[int, int, int]], name: str) -> Node:
    if all(r == (0, d, 1) for r, d in zip(ranges, x.shape)):
        return x
    if any(len(range(*r)) == 0 for r in ranges):
        raise ctx.unsupported(node, f"slice {ranges} of shape {list(x.shape)} is empty")
    ir_op = O.StridedSlice(*(tuple(r[k] for r in ranges) for k in range(3)))
    return ctx.add(node, ir_op, [x], name)


def slice_(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """x[starts:ends:steps] on `axes` (default: the first len(starts) axes)."""
    x = ctx.input(node, 0)
    rank = len(x.shape)
    starts = ctx.attr_or_input(node, "starts", 1, None)
    ends = ctx.attr_or_input(node, "ends", 2, None)
    if starts is None or ends is None or len(starts) != len(ends):
        raise ctx.unsupported(node, f"starts {starts} / ends {ends}")
    axes = ctx.attr_or_input(node, "axes", 3, None) or list(range(len(starts)))
    steps = ctx.const_ints(node, 4, "steps") if ctx.has_input(node, 4) else [1] * len(starts)
    if not len(axes) == len(starts) == len(steps) or 0 in steps:
        raise ctx.unsupported(node, f"axes {axes}, steps {steps} for {len(starts)} starts")
    ranges = [(0, d, 1) for d in x.shape]
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = axis_index(ctx, node, int(a), rank)
        b, en, stp = slice(int(s), int(e), int(st)).indices(x.shape[a])
        ranges[a] = (b, max(en, b), stp) if stp > 0 else (b, min(en, b), stp)
    return _strided(ctx, node, x, ranges, ctx.out_name(node))


def split(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """One StridedSlice per output along `axis` (default 0)."""
    x = ctx.input(node, 0)
    rank = len(x.shape)
    axis = axis_index(ctx, node, int(node.attr("axis", 0)), rank)
    dim = x.shape[axis]
    n_out = len(node.outputs)
    sizes = ctx.attr_or_input(node, "split", 1, None)
    if not sizes:
        n = int(node.attr("num_outputs", n_out))
        part = -(-dim // n)
        sizes = [part] * (n - 1) + [dim - part * (n - 1)]
        if node.attr("num_outputs") is None and dim % n:
            raise ctx.unsupported(node, f"axis of size {dim} does not split into {n} equal parts")
    if len(sizes) != n_out or sum(sizes) != dim or min(sizes) < 0:
        raise ctx.unsupported(node, f"split {list(sizes)} of an axis of size {dim} into {n_out} outputs")
    outs, start = [], 0
    for k, size in enumerate(sizes):
        if size == 0:
            raise ctx.unsupported(node, f"split {list(sizes)} has an empty part")
        ranges = [(0, d, 1) for d in x.shape]
        ranges[axis] = (start, start + size, 1)
        outs.append(_strided(ctx, node, x, ranges, ctx.out_name(node, k)))
        start += size
    return outs
