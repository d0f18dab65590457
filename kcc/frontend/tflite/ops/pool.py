"""Spatial window and resampling ops: AVERAGE_POOL_2D, MAX_POOL_2D, RESIZE_BILINEAR, RESIZE_NEAREST_NEIGHBOR.

All are NCHW in the IR, so each is wrapped in NHWC<->NCHW transposes (ImportContext.spatial).
TFLite's average pool divides by the number of in-bounds taps (kernels/internal/reference/pooling.h),
which is what `Pool2D(op="mean")` computes.
"""

from __future__ import annotations

from kcc.frontend.tflite.context import ImportContext, ImportResult, tf_padding
from kcc.frontend.tflite.reader import TfliteOperator
from kcc.ir import ops as O


def _pool(ctx: ImportContext, op: TfliteOperator, kind: str) -> ImportResult:
    x = ctx.input_4d(op, 0)
    _, h, w, _ = x.shape
    k = (ctx.int_opt(op, "filter_height"), ctx.int_opt(op, "filter_width"))
    s = (ctx.int_opt(op, "stride_h"), ctx.int_opt(op, "stride_w"))
    mode = op.opt("padding", "VALID")
    padding = (tf_padding(mode, h, k[0], s[0], 1), tf_padding(mode, w, k[1], s[1], 1))
    pool = O.Pool2D(kind, k, s, padding, ctx.fused_act(op))
    return ctx.spatial(op, x, lambda xc: ctx.add(op, pool, [xc]))


def average_pool_2d(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _pool(ctx, op, "mean")


def max_pool_2d(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _pool(ctx, op, "max")


def _resize(ctx: ImportContext, op: TfliteOperator, mode: str) -> ImportResult:
    """Input 1 is the constant new size [H, W]; both coordinate flags are kept as attributes."""
    x = ctx.input_4d(op, 0)
    size = ctx.const_ints(op, 1, "size")
    if len(size) != 2 or min(size) <= 0:
        raise ctx.unsupported(op, f"size {size} must be two positive integers")
    align, half = bool(op.opt("align_corners", False)), bool(op.opt("half_pixel_centers", False))
    if align and half:
        raise ctx.unsupported(op, "align_corners and half_pixel_centers together")
    resize = O.Resize(mode, (size[0], size[1]), align, half)
    return ctx.spatial(op, x, lambda xc: ctx.add(op, resize, [xc]))


def resize_bilinear(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _resize(ctx, op, "bilinear")


def resize_nearest_neighbor(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    return _resize(ctx, op, "nearest")
