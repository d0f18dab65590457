"""Reductions: MEAN, SUM, REDUCE_MAX, REDUCE_MIN over constant axes (ReducerOptions.keep_dims).

Imported in tflite's layout; e.g. a global average pool written as MEAN over NHWC axes (1, 2)
becomes Reduce(axes=(1, 2)) and canonicalisation later rewrites it to NCHW axes (2, 3).
"""

from __future__ import annotations

from kcc.frontend.tflite.context import ImportContext, ImportResult, axis_index
from kcc.frontend.tflite.reader import TfliteOperator
from kcc.ir import ops as O


def _reduce(ctx: ImportContext, op: TfliteOperator, kind: str) -> ImportResult:
    x = ctx.input(op, 0)
    rank = len(x.shape)
    axes = sorted({axis_index(a, rank) for a in ctx.const_ints(op, 1, "axes")})
    if any(not 0 <= a < rank for a in axes):
        raise ctx.unsupported(op, f"axes {ctx.const_ints(op, 1)} out of range for rank {rank}")
    if not axes:  # reducing over nothing is the identity
        return x
    return ctx.add(op, O.Reduce(kind, tuple(axes), bool(op.opt("keep_dims", False))), [x])


def mean(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _reduce(ctx, op, "mean")


def sum_(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _reduce(ctx, op, "sum")


def reduce_max(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _reduce(ctx, op, "max")


def reduce_min(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _reduce(ctx, op, "min")
