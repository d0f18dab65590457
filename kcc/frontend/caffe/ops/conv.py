"""Convolution, Deconvolution and InnerProduct.

Window geometry follows Caffe's BaseConvolutionLayer::LayerSetUp: `kernel_h`/`kernel_w` (both) or
`kernel_size` (one value for both axes, or one per axis), and likewise `stride` (default 1), `pad`
(default 0) and `dilation` (default 1). Caffe pads symmetrically and floors the output size:
out = (in + 2*pad - dilation*(k-1) - 1) / stride + 1.

Weights: a Convolution's blob 0 is [OC, IC/group, KH, KW] (the IR's own layout); a Deconvolution's
is [IC, OC/group, KH, KW] (the conv it is the gradient of), re-laid per group; InnerProduct's is
[N, K], or [K, N] with `transpose: true`. Blob 1 is the bias when `bias_term` (default true).
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.caffe.context import ImportContext, ImportResult, axis_index
from kcc.ir import ops as O


def _pair(ctx: ImportContext, layer, values, h: int | None, w: int | None, default: int | None,
          what: str) -> tuple[int, int]:
    """One window parameter as (h, w) from its _h/_w form or its repeated form."""
    if h is not None or w is not None:
        if h is None or w is None:
            raise ctx.bad(layer, f"{what}_h and {what}_w must be given together")
        if len(values):
            raise ctx.bad(layer, f"{what} and {what}_h/{what}_w are both given")
        return int(h), int(w)
    vals = [int(v) for v in values]
    if not vals:
        if default is None:
            raise ctx.bad(layer, f"{what} is not given")
        return default, default
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise ctx.unsupported(layer, f"{len(vals)} {what} values: kcc compiles 2-D convolutions only")


def _has(p, name: str) -> int | None:
    return getattr(p, name) if p.HasField(name) else None


def geometry(ctx: ImportContext, layer, p) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, pad, dilation) of a ConvolutionParameter, each as (h, w)."""
    if p.axis != 1:
        raise ctx.unsupported(layer, f"axis {p.axis}: kcc compiles convolutions over NCHW maps (axis 1)")
    kernel = _pair(ctx, layer, p.kernel_size, _has(p, "kernel_h"), _has(p, "kernel_w"), None, "kernel")
    stride = _pair(ctx, layer, p.stride, _has(p, "stride_h"), _has(p, "stride_w"), 1, "stride")
    pad = _pair(ctx, layer, p.pad, _has(p, "pad_h"), _has(p, "pad_w"), 0, "pad")
    dilation = _pair(ctx, layer, p.dilation, None, None, 1, "dilation")
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise ctx.bad(layer, f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    return kernel, stride, pad, dilation


def _channels(ctx: ImportContext, layer, p, c: int) -> tuple[int, int]:
    """(num_output, group), checked against the input's `c` channels."""
    if not p.HasField("num_output") or p.num_output < 1:
        raise ctx.bad(layer, "num_output is not given")
    oc, g = int(p.num_output), int(p.group)
    if g < 1 or c % g or oc % g:
        raise ctx.bad(layer, f"group {g} does not divide {c} input channels and {oc} outputs")
    return oc, g


def _bias(ctx: ImportContext, layer, present: bool, index: int, n: int) -> np.ndarray:
    return ctx.blob(layer, index, (n,), "bias") if present else np.zeros(n, np.float32)


def convolution(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input_4d(layer)
    p = layer.convolution_param
    (kh, kw), stride, (ph, pw), dilation = geometry(ctx, layer, p)
    oc, g = _channels(ctx, layer, p, x.shape[1])
    w = ctx.blob(layer, 0, (oc, x.shape[1] // g, kh, kw), "weights")
    b = _bias(ctx, layer, p.bias_term, 1, oc)
    op = O.Conv2D(stride, ((ph, ph), (pw, pw)), dilation, g)
    return ctx.add(layer, op, [x, ctx.constant(layer, w, "weights"), ctx.constant(layer, b, "bias")])


def deconvolution(ctx: ImportContext, layer) -> ImportResult:
    """DeconvolutionLayer::compute_output_shape: out = stride*(in-1) + dilation*(k-1) + 1 - 2*pad."""
    x = ctx.input_4d(layer)
    p = layer.convolution_param
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry(ctx, layer, p)
    oc, g = _channels(ctx, layer, p, x.shape[1])
    n, ic, h, wd = x.shape
    oh, ow = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph, sw * (wd - 1) + dw * (kw - 1) + 1 - 2 * pw
    if oh < 1 or ow < 1:
        raise ctx.bad(layer, f"output {oh}x{ow} is empty")
    w = ctx.blob(layer, 0, (ic, oc // g, kh, kw), "weights")
    icg = ic // g
    # per group: [IC/g, OC/g, k, k] -> [OC/g, IC/g, k, k]; groups stacked along the output channels
    w_ir = np.concatenate([w[i * icg:(i + 1) * icg].transpose(1, 0, 2, 3) for i in range(g)], axis=0)
    b = _bias(ctx, layer, p.bias_term, 1, oc)
    op = O.Conv2DTranspose((n, oc, oh, ow), (sh, sw), ((ph, ph), (pw, pw)), (dh, dw), g)
    return ctx.add(layer, op, [x, ctx.constant(layer, w_ir, "weights"), ctx.constant(layer, b, "bias")])


def inner_product(ctx: ImportContext, layer) -> ImportResult:
    """y = x W^T + b over the axes from `axis` (default 1) on, flattened (InnerProductLayer)."""
    x = ctx.input(layer)
    p = layer.inner_product_param
    axis = axis_index(p.axis, len(x.shape))
    if axis is None:
        raise ctx.bad(layer, f"axis {p.axis} out of range for input shape {list(x.shape)}")
    if not p.HasField("num_output") or p.num_output < 1:
        raise ctx.bad(layer, "num_output is not given")
    m, k, n = int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)), \
        int(p.num_output)
    if p.transpose:
        w = ctx.blob(layer, 0, (k, n), "weights")
    else:
        w = ctx.blob(layer, 0, (n, k), "weights").T
    b = _bias(ctx, layer, p.bias_term, 1, n)
    rows = x if x.shape == (m, k) else ctx.add(layer, O.Reshape((m, k)), [x], f"{layer.name}/flatten")
    out_shape = (*x.shape[:axis], n)
    name = None if out_shape == (m, n) else f"{layer.name}/matmul"
    y = ctx.add(layer, O.MatMul(), [rows, ctx.constant(layer, w, "weights"), ctx.constant(layer, b, "bias")], name)
    return y if out_shape == (m, n) else ctx.add(layer, O.Reshape(out_shape), [y])
