"""Reductions: ReduceMean, ReduceMax, ReduceMin, ReduceSum over constant axes.

`axes` is an attribute before opset 18 (13 for ReduceSum) and an optional input since; no axes means
every axis, unless `noop_with_empty_axes` (then the op is the identity). `keepdims` defaults to 1.
"""

from __future__ import annotations

from kcc.frontend.onnx.context import ImportContext, ImportResult, axis_index
from kcc.frontend.onnx.reader import OnnxNode
from kcc.ir import ops as O


def _reduce(kind: str, title: str):
    def importer(ctx: ImportContext, node: OnnxNode) -> ImportResult:
        x = ctx.input(node, 0)
        rank = len(x.shape)
        axes = ctx.attr_or_input(node, "axes", 1, None)
        if not axes:
            if node.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(rank))
        axes = sorted({axis_index(ctx, node, int(a), rank) for a in axes})
        return ctx.add(node, O.Reduce(kind, tuple(axes), bool(node.attr("keepdims", 1))), [x])

    importer.__name__ = title
    importer.__doc__ = f"Reduce {kind} over constant axes (attribute or input), keepdims."
    return importer


reduce_mean = _reduce("mean", "reduce_mean")
reduce_max = _reduce("max", "reduce_max")
reduce_min = _reduce("min", "reduce_min")
reduce_sum = _reduce("sum", "reduce_sum")
