"""Exact integer convolution and matmul for the quantized CPU kernels (kmodel_v4.md §8.15, §8.21).

The runtime accumulates `value += (x + x_off) * (w + w_off)` in int32 over the taps that fall
inside the input (out-of-range taps are skipped, so they contribute exactly 0) and lets the
sums wrap. The helpers here compute the exact sum and the callers wrap it to int32 at the end,
which gives the same bits: int32 wrap-around is arithmetic modulo 2^32 whatever the order.

The sums go through BLAS in float64 when that is provably exact (every partial sum is an integer
below 2^53, bounded by taps * max|x| * max|w|); otherwise through int64 (wrapping mod 2^64, which
still preserves the value mod 2^32).
"""

from __future__ import annotations

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import Padding
from kpu_sim.kernels.fp32 import windowed_output_size

I64 = np.int64


def _exact_dtype(terms: int, x: np.ndarray, w: np.ndarray) -> np.dtype:
    bound = terms * int(np.abs(x).max(initial=0)) * int(np.abs(w).max(initial=0))
    return np.dtype(np.float64 if bound < 1 << 53 else I64)


def output_size(size: int, filter_: int, stride: int, dilation: int, pad: Padding) -> int:
    if min(filter_, stride, dilation) <= 0:
        raise SimulatorError(f"filter {filter_}, stride {stride} and dilation {dilation} must be > 0")
    return max(0, windowed_output_size(size, filter_, stride, dilation, pad.before, pad.after))


_BLOCK = 1 << 22  # tap values gathered at once (bounds the temporaries of one conv)


def conv_sums(x: np.ndarray, w: np.ndarray, groups: int, strides: tuple[int, int], dilations: tuple[int, int],
              pad_h: Padding, pad_w: Padding) -> np.ndarray:
    """Exact sum_{ic, ky, kx} x * w for a grouped NCHW conv, as int64 (N, groups*g_oc, oh, ow).

    `x` (N, C, H, W) and `w` (groups*g_oc, g_ic, fh, fw) are int64 with the offsets already
    added. Output channel o of group g reads input channels g*g_ic .. g*g_ic + g_ic - 1. Tap
    (ky, kx) of output (oy, ox) reads input (oy*sh - pad_h.before + ky*dh, likewise for x); taps
    outside the input read 0 here (the runtime skips them, which adds nothing either).
    """
    n, _c, h, wd = x.shape
    oc, g_ic, fh, fw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    oh = output_size(h, fh, sh, dh, pad_h)
    ow = output_size(wd, fw, sw, dw, pad_w)
    g_oc = oc // groups
    out = np.empty((n, oc, oh, ow), dtype=I64)
    if out.size == 0:
        return out

    def extent(size: int, out_size: int, f: int, s: int, d: int, before: int) -> tuple[int, int]:
        last = (out_size - 1) * s - before + (f - 1) * d
        return max(0, before), max(0, last - (size - 1))

    top, bottom = extent(h, oh, fh, sh, dh, pad_h.before)
    left, right = extent(wd, ow, fw, sw, dw, pad_w.before)
    padded = np.zeros((n, groups * g_ic, h + top + bottom, wd + left + right), dtype=x.dtype)
    padded[:, :, top : top + h, left : left + wd] = x[:, : groups * g_ic]
    dtype = _exact_dtype(g_ic * fh * fw, x, w)
    wm = w.reshape(groups, g_oc, g_ic * fh * fw).astype(dtype)
    rows = max(1, _BLOCK // max(1, n * groups * g_ic * fh * fw * ow))
    for r0 in range(0, oh, rows):
        r1 = min(oh, r0 + rows)
        taps = np.empty((n, groups * g_ic, fh * fw, r1 - r0, ow), dtype=dtype)
        for ky in range(fh):
            y0 = top - pad_h.before + ky * dh + r0 * sh
            for kx in range(fw):
                x0 = left - pad_w.before + kx * dw
                taps[:, :, ky * fw + kx] = padded[:, :, y0 : y0 + (r1 - r0 - 1) * sh + 1 : sh,
                                                  x0 : x0 + (ow - 1) * sw + 1 : sw]
        cols = taps.reshape(n, groups, g_ic * fh * fw, (r1 - r0) * ow)
        sums = np.matmul(wm[None], cols)  # (n, groups, g_oc, rows*ow)
        out[:, :, r0:r1] = sums.astype(I64).reshape(n, oc, r1 - r0, ow)
    return out


def matmul_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact a @ b of int64 matrices, as int64."""
    dtype = _exact_dtype(a.shape[1], a, b)
    return (a.astype(dtype) @ b.astype(dtype)).astype(I64)
