"""Pooling (MAX, AVE; global_pooling), with Caffe's output size and average divisor.

PoolingLayer::Reshape rounds the output size up by default (`round_mode: CEIL`):
    out = ceil((in + 2*pad - k) / stride) + 1,
then, when pad > 0, drops the last window if it would start in the bottom/right padding
((out-1)*stride >= in + pad). The extra windows reach past the padded map; the IR's Pool2D takes
that as extra bottom/right padding.

MAX ignores padding (taps outside the map are skipped), as the IR's max pool does (-inf padding).
AVE (PoolingLayer::Forward_cpu) sums the taps inside the map but divides by the window clipped to
the *padded* map, [-pad, in + pad): padding zeros count, the ceil overflow does not. So an AVE
pool with pad > 0 becomes an explicit zero Pad (pad on both sides) followed by the IR's mean pool,
which divides by the taps inside its (padded) input.
"""

from __future__ import annotations

import math

from kcc.frontend.caffe import schema as S
from kcc.frontend.caffe.context import ImportContext, ImportResult
from kcc.ir import ops as O


def _window(ctx: ImportContext, layer, p, h: int, w: int) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, pad) as (h, w) pairs (PoolingLayer::LayerSetUp)."""
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise ctx.bad(layer, "global_pooling and a kernel size are both given")
        kernel = (h, w)
    elif p.HasField("kernel_h") or p.HasField("kernel_w"):
        if not (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise ctx.bad(layer, "kernel_h and kernel_w must be given together")
        kernel = (p.kernel_h, p.kernel_w)
    elif p.HasField("kernel_size"):
        kernel = (p.kernel_size, p.kernel_size)
    else:
        raise ctx.bad(layer, "kernel_size is not given")
    pad = (p.pad_h, p.pad_w) if (p.HasField("pad_h") or p.HasField("pad_w")) else (p.pad, p.pad)
    stride = (p.stride_h, p.stride_w) if (p.HasField("stride_h") or p.HasField("stride_w")) else (p.stride, p.stride)
    kernel, pad, stride = tuple(map(int, kernel)), tuple(map(int, pad)), tuple(map(int, stride))
    if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise ctx.bad(layer, "global_pooling needs pad 0 and stride 1")
    if min(kernel) < 1 or min(stride) < 1:
        raise ctx.bad(layer, f"kernel {kernel} and stride {stride} must be positive")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ctx.bad(layer, f"pad {pad} must be smaller than the kernel {kernel}")
    return kernel, stride, pad


def output_size(size: int, k: int, stride: int, pad: int, ceil: bool) -> int:
    """PoolingLayer::Reshape's pooled extent along one axis."""
    span = size + 2 * pad - k
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pooling(ctx: ImportContext, layer) -> ImportResult:
    x = ctx.input_4d(layer)
    p = layer.pooling_param
    if p.pool == S.POOL_STOCHASTIC:
        raise ctx.unsupported(layer, "STOCHASTIC pooling is not supported")
    _, _, h, w = x.shape
    kernel, stride, pad = _window(ctx, layer, p, h, w)
    ceil = p.round_mode == S.ROUND_CEIL if p.HasField("round_mode") else p.ceil_mode
    if kernel[0] > h + 2 * pad[0] or kernel[1] > w + 2 * pad[1]:
        raise ctx.bad(layer, f"kernel {kernel} is larger than the padded {h}x{w} input")
    out = [output_size(n, k, s, q, ceil) for n, k, s, q in zip((h, w), kernel, stride, pad)]
    # bottom/right padding that makes the IR's floor formula give Caffe's size: the ceil overflow
    extra = [max(0, (o - 1) * s + k - (n + 2 * q)) for o, s, k, n, q in zip(out, stride, kernel, (h, w), pad)]
    if p.pool == S.POOL_MAX:
        padding = ((pad[0], pad[0] + extra[0]), (pad[1], pad[1] + extra[1]))
        y = ctx.add(layer, O.Pool2D("max", kernel, stride, padding), [x])
    else:
        if pad != (0, 0):
            pads = ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1]))
            x = ctx.add(layer, O.Pad(pads), [x], f"{layer.name}/pad")
        if kernel == (h, w) and x.shape[2:] == (h, w):  # global average: one mean per channel
            y = ctx.add(layer, O.Reduce("mean", (2, 3), keepdims=True), [x])
        else:
            y = ctx.add(layer, O.Pool2D("mean", kernel, stride, ((0, extra[0]), (0, extra[1]))), [x])
    if tuple(y.shape[2:]) != tuple(out):  # the windows above must give Caffe's size exactly
        raise ctx.bad(layer, f"pooled size {list(y.shape[2:])} differs from Caffe's {out}")
    return y
