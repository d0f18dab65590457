"""Element-wise layers: ReLU, PReLU, Sigmoid, TanH, Clip, Eltwise, BatchNorm, Scale, Softmax, Dropout.

Semantics from the Caffe layers' Forward_cpu:
* ReLU: max(x, 0) + negative_slope * min(x, 0); a non-zero slope is a leaky ReLU (ncc's importer
  drops the slope; kcc keeps it).
* PReLU: one slope per channel (blob 0, [C]) or one for all (`channel_shared`).
* Eltwise: SUM (with one `coeff` per bottom, default 1), PROD or MAX of equal-shaped bottoms.
* BatchNorm (inference, use_global_stats): (x - mean/s) / sqrt(var/s + eps) with blobs mean, var
  and the moving-average factor s (blob 2; s = 0 means mean = var = 0). Written as x*a + b per
  channel; canonicalize folds it, and Scale, into the convolution before it (kcc.passes.affine).
* Scale: x * scale (+ bias) with the scale broadcast from `axis` (blob 0, or the second bottom).
* Dropout is the identity at inference (Caffe scales at training time).
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.caffe import schema as S
from kcc.frontend.caffe.context import ImportContext, ImportResult, axis_index
from kcc.ir import ops as O


def relu(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input(layer)
    slope = float(np.float32(layer.relu_param.negative_slope))
    if slope == 0.0:
        return ctx.add(layer, O.Clamp(0.0, O.INF), [x])
    return ctx.add(layer, O.LeakyRelu(slope), [x])


def prelu(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input(layer)
    if len(x.shape) < 2:
        raise ctx.unsupported(layer, f"expects a channel axis, got shape {list(x.shape)}")
    shared = layer.prelu_param.channel_shared
    slopes = ctx.blob(layer, 0, (1,) if shared else (x.shape[1],), "slopes")
    alpha = slopes.reshape(()) if shared else ctx.per_channel(slopes, len(x.shape))
    return ctx.add(layer, O.PRelu(), [x, ctx.constant(layer, alpha, "slopes")])


def sigmoid(ctx: ImportContext, layer) -> ImportResult:
    return ctx.add(layer, O.Unary("logistic"), [ctx.input(layer)])


def tanh(ctx: ImportContext, layer) -> ImportResult:
    return ctx.add(layer, O.Unary("tanh"), [ctx.input(layer)])


def clip(ctx: ImportContext, layer) -> ImportResult:
    p = layer.clip_param
    if not (p.HasField("min") and p.HasField("max")):
        raise ctx.bad(layer, "clip_param needs min and max")
    return ctx.add(layer, O.Clamp(float(p.min), float(p.max)), [ctx.input(layer)])


def dropout(ctx: ImportContext, layer) -> ImportResult:
    return ctx.input(layer)


def softmax(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input(layer)
    axis = axis_index(layer.softmax_param.axis, len(x.shape))
    if axis is None:
        raise ctx.bad(layer, f"axis {layer.softmax_param.axis} out of range for shape {list(x.shape)}")
    return ctx.add(layer, O.Softmax(axis), [x])


def eltwise(ctx: ImportContext, layer) -> ImportResult:
    xs = ctx.inputs(layer)
    p = layer.eltwise_param
    if len(xs) < 2:
        raise ctx.bad(layer, f"needs at least 2 bottoms, has {len(xs)}")
    if any(x.shape != xs[0].shape for x in xs):
        raise ctx.bad(layer, f"bottom shapes differ: {[list(x.shape) for x in xs]}")
    coeff = [float(c) for c in p.coeff]
    if coeff and (p.operation != S.ELTWISE_SUM or len(coeff) != len(xs)):
        raise ctx.bad(layer, f"{len(coeff)} coeff values: Caffe takes one per bottom, for SUM only")
    last = len(xs) - 1
    if p.operation in (S.ELTWISE_PROD, S.ELTWISE_MAX):
        kind = "mul" if p.operation == S.ELTWISE_PROD else "max"
        acc = xs[0]
        for i, x in enumerate(xs[1:], 1):
            acc = ctx.add(layer, O.Binary(kind), [acc, x], None if i == last else f"{layer.name}/{i}")
        return acc
    if p.operation != S.ELTWISE_SUM:
        raise ctx.unsupported(layer, f"operation {p.operation} is not PROD, SUM or MAX")
    coeff = coeff or [1.0] * len(xs)

    def scaled(i: int, c: float):
        return ctx.add(layer, O.Binary("mul"), [xs[i], ctx.constant(layer, np.float32(c), f"coeff{i}")],
                       f"{layer.name}/scaled{i}")

    acc = xs[0] if coeff[0] == 1.0 else scaled(0, coeff[0])
    for i in range(1, len(xs)):
        name = None if i == last else f"{layer.name}/{i}"
        if coeff[i] in (1.0, -1.0):
            acc = ctx.add(layer, O.Binary("add" if coeff[i] == 1.0 else "sub"), [acc, xs[i]], name)
        else:
            acc = ctx.add(layer, O.Binary("add"), [acc, scaled(i, coeff[i])], name)
    return acc


def _affine(ctx: ImportContext, layer, x, scale: np.ndarray | None, shift: np.ndarray | None):
    """x * scale + shift with constants already shaped to broadcast against x."""
    y = x
    if scale is not None:
        name = f"{layer.name}/mul" if shift is not None else None
        y = ctx.add(layer, O.Binary("mul"), [y, ctx.constant(layer, scale, "scale")], name)
    if shift is not None:
        y = ctx.add(layer, O.Binary("add"), [y, ctx.constant(layer, shift, "shift")])
    return y


def batch_norm(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input(layer)
    p = layer.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise ctx.unsupported(layer, "use_global_stats: false normalises with the batch's own statistics; "
                                     "kcc compiles inference with the stored mean and variance")
    if len(x.shape) < 2:
        raise ctx.unsupported(layer, f"expects a channel axis, got shape {list(x.shape)}")
    c = x.shape[1]
    mean = ctx.blob(layer, 0, (c,), "mean").astype(np.float64)
    var = ctx.blob(layer, 1, (c,), "variance").astype(np.float64)
    s = float(ctx.blob(layer, 2, (1,), "moving-average factor")[0]) if ctx.blob_count(layer) > 2 else 1.0
    factor = 0.0 if s == 0 else 1.0 / s
    inv = 1.0 / np.sqrt(var * factor + float(np.float32(p.eps)))
    scale = ctx.per_channel(inv.astype(np.float32), len(x.shape))
    shift = ctx.per_channel((-mean * factor * inv).astype(np.float32), len(x.shape))
    return _affine(ctx, layer, x, scale, shift)


def scale(ctx: ImportContext, layer) -> ImportResult:
    xs = ctx.inputs(layer)
    if not xs:
        raise ctx.bad(layer, "needs a bottom blob")
    x, rank = xs[0], len(xs[0].shape)
    p = layer.scale_param
    axis = axis_index(p.axis, rank) if rank else 0
    if axis is None:
        raise ctx.bad(layer, f"axis {p.axis} out of range for shape {list(x.shape)}")
    if len(xs) == 2:  # the scale is the second bottom, aligned at `axis`
        factor = xs[1]
        shape = factor.shape
        if tuple(x.shape[axis:axis + len(shape)]) != tuple(shape):
            raise ctx.bad(layer, f"scale bottom {list(shape)} does not match {list(x.shape)} at axis {axis}")
        full = (*shape, *(1,) * (rank - axis - len(shape)))
        if full != shape:
            factor = ctx.add(layer, O.Reshape(full), [factor], f"{layer.name}/scale_shape")
        shift = ctx.blob(layer, 0, shape, "bias").reshape(full) if p.bias_term else None
        y = ctx.add(layer, O.Binary("mul"), [x, factor], f"{layer.name}/mul" if shift is not None else None)
        return y if shift is None else ctx.add(layer, O.Binary("add"), [y, ctx.constant(layer, shift, "shift")])
    if len(xs) != 1:
        raise ctx.bad(layer, f"takes 1 or 2 bottoms, has {len(xs)}")
    end = rank if p.num_axes == -1 else axis + p.num_axes
    if p.num_axes < -1 or end > rank:
        raise ctx.bad(layer, f"num_axes {p.num_axes} out of range for shape {list(x.shape)} at axis {axis}")
    shape = tuple(x.shape[axis:end])
    full = (*shape, *(1,) * (rank - end))
    factor = ctx.blob(layer, 0, shape, "scale").reshape(full)
    shift = ctx.blob(layer, 1, shape, "bias").reshape(full) if p.bias_term else None
    return _affine(ctx, layer, x, factor, shift)
