"""Runtime-only CPU ops 0x1001, 0x1002, 0x1004, 0x1005 (kmodel_v4.md §8.21), as nncase v0.2.0-beta4's
`kernels/cpu/cpu_kernels.h`. ncc never emits them, but the runtime runs them.

Everything is **NHWC**: in_shape is (N, H, W, C) and the output is (N, OH, OW, OC). Weights are
[oc][kh][kw][ic] (conv) or [c][kh][kw] (depthwise). Taps outside the input are skipped.

* The float kernels accumulate, per output element, bias then the valid taps in (ky, kx, ic)
  order with one float32 rounding per step (no FMA), which is reproduced by updating whole
  output slices tap by tap in that order.
* The quantized kernels compute value = bias + sum (x - input_offset) * (w - filter_offset):
  the offsets are **subtracted** here, unlike quantized_conv2d. Then the usual requantization.
"""

from __future__ import annotations

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import (
    CpuConv2D,
    CpuDepthwiseConv2D,
    CpuQuantizedConv2D,
    CpuQuantizedDepthwiseConv2D,
    Padding,
)
from kpu_sim.kernels.elementwise import shape_count
from kpu_sim.kernels.fp32 import F32, apply_activation, window_taps
from kpu_sim.kernels.intconv import conv_sums, output_size
from kpu_sim.kernels.quantized import requantize
from kpu_sim.memory import Memory

I64 = np.int64


def _geometry(body) -> tuple[int, int, int, int, int, int, int, int]:
    """(fh, fw, sh, sw, dh, dw, oh, ow) of an NHWC body; raises for non-positive window values."""
    _, h, w, _ = body.in_shape
    fh, fw, sh, sw = body.filter_h, body.filter_w, body.stride_h, body.stride_w
    dh, dw = body.dilation_h, body.dilation_w
    oh = output_size(h, fh, sh, dh, body.padding_h)
    ow = output_size(w, fw, sw, dw, body.padding_w)
    return fh, fw, sh, sw, dh, dw, oh, ow


def _float_conv(mem: Memory, body, weights: np.ndarray, depthwise: bool) -> None:
    """Shared loop of cpu_conv2d / cpu_depthwise_conv2d; `weights` is (oc, fh, fw, C) or (C, fh, fw)."""
    n, h, w, c = body.in_shape
    fh, fw, sh, sw, dh, dw, oh, ow = _geometry(body)
    x = mem.read(body.input, F32, shape_count(body.in_shape, "in_shape")).reshape(n, h, w, c)
    oc = c if depthwise else body.out_channels
    mem.require(body.output, n * oh * ow * oc * 4)
    acc = np.empty((n, oh, ow, oc), dtype=F32)
    acc[:] = body.bias[:oc]
    for ky, kx, (ys, xs), (iys, ixs) in window_taps((oh, ow), (h, w), (fh, fw), (sh, sw),
                                                     (body.padding_h.before, body.padding_w.before), (dh, dw)):
        patch = x[:, iys, ixs]
        target = acc[:, ys, xs]
        if depthwise:
            target += patch * weights[:, ky, kx]
        else:
            for ic in range(c):
                target += patch[..., ic : ic + 1] * weights[:, ky, kx, ic]
    mem.write(body.output, apply_activation(acc, body.fused_activation))


def cpu_conv2d(mem: Memory, body: CpuConv2D) -> None:
    """§8.21: float32 NHWC conv, weights [oc][kh][kw][ic]."""
    c = body.in_shape[3]
    if body.out_channels < 0:
        raise SimulatorError(f"negative out_channels {body.out_channels}")
    w = body.weights.reshape(body.out_channels, body.filter_h, body.filter_w, c)
    _float_conv(mem, body, w, depthwise=False)


def cpu_depthwise_conv2d(mem: Memory, body: CpuDepthwiseConv2D) -> None:
    """§8.21: float32 NHWC depthwise conv, weights [c][kh][kw]."""
    c = body.in_shape[3]
    _float_conv(mem, body, body.weights.reshape(c, body.filter_h, body.filter_w), depthwise=True)


def _quantized_conv(mem: Memory, body, weights: np.ndarray, groups: int) -> None:
    """Shared part of the quantized CPU convs; `weights` (oc, g_ic, fh, fw) uint8 in NCHW order."""
    n, h, w, c = body.in_shape
    *_, oh, ow = _geometry(body)
    mem.require(body.output, n * oh * ow * weights.shape[0])
    x = mem.read(body.input, np.uint8, shape_count(body.in_shape, "in_shape")).reshape(n, h, w, c)
    xo = x.transpose(0, 3, 1, 2).astype(I64) - body.input_offset
    wo = weights.astype(I64) - body.filter_offset
    sums = conv_sums(xo, wo, groups, (body.stride_h, body.stride_w), (body.dilation_h, body.dilation_w),
                     Padding(*body.padding_h), Padding(*body.padding_w))
    value = sums + body.bias.astype(I64).reshape(1, -1, 1, 1)
    out = requantize(value, body.output_mul, body.output_shift, body.output_offset)
    mem.write(body.output, np.ascontiguousarray(out.transpose(0, 2, 3, 1)))


def cpu_quantized_conv2d(mem: Memory, body: CpuQuantizedConv2D) -> None:
    """§8.21: uint8 NHWC conv, weights [oc][kh][kw][ic] then bias i32[oc]."""
    c = body.in_shape[3]
    if body.out_channels < 0:
        raise SimulatorError(f"negative out_channels {body.out_channels}")
    w = body.weights.reshape(body.out_channels, body.filter_h, body.filter_w, c).transpose(0, 3, 1, 2)
    _quantized_conv(mem, body, w, groups=1)


def cpu_quantized_depthwise_conv2d(mem: Memory, body: CpuQuantizedDepthwiseConv2D) -> None:
    """§8.21: uint8 NHWC depthwise conv, weights [c][kh][kw] then bias i32[c]."""
    c = body.in_shape[3]
    if c <= 0:
        raise SimulatorError(f"in_shape {tuple(body.in_shape)} has no channels")
    w = body.weights.reshape(c, 1, body.filter_h, body.filter_w)
    _quantized_conv(mem, body, w, groups=c)
