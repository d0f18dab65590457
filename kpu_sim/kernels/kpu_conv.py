"""`kpu_conv2d` (0x2002): one KPU layer, bit-exact to nncase's simulator (kpu_semantics.md §3).

Per batch element: download the input map from KPU RAM (§2), convolve (1x1, or 3x3 padded by
exactly 1 with `pad_value`, stride 1, same size), add the register terms, batch-norm,
activation, pool; then upload the pooled maps of all batches to the output lines and, if the
layer has one, copy them as packed NCHW to `main_mem_output`.

Convolution arithmetic (§3 step 2, trap 4):

    acc = S + ((arg_x * sum_x) >> shift_x) + ((arg_w * sum_w) >> shift_w) + arg_add * g_ic

with S = sum x*w and sum_x = sum x over the window (padded taps read `pad_value` and count),
sum_w = sum of the channel's weights, g_ic = C_in (1 for depthwise). When shift_x = 0 (every
ncc layer), arg_x * sum_x folds into the weights: S + arg_x*sum_x = sum x*(w + arg_x).

S is computed with a BLAS matmul in float32 or float64, whichever is provably exact: every
partial sum is an integer bounded by K * 255 * max|w'| (K = taps per output), and a float type
holds every integer below 2^24 / 2^53 exactly, whatever order BLAS adds in. Beyond 2^53 the
matmul runs in int64.

For the pick pools (bypass, left_top, right_top) only the pixels the pool keeps are computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import DataType, KpuConv2D, MemoryRange, MemoryType, kpu_bytes
from kpu_sim.kernels.kpu_layer import KpuLayer, cached, decode
from kpu_sim.kernels.kpu_pool import pick_offset, pool, pool_output_size
from kpu_sim.kernels.kpu_post import batch_norm_activate, fused_bound_ok
from kpu_sim.memory import Memory

I64 = np.int64
# Both only bound temporaries; any value >= 1 gives the same outputs. tests/kpu_sim/test_sim_kpu_paths.py
# shrinks them to run small layers through several row blocks and channel chunks.
_CHUNK = 1 << 17  # elements per post-processing step: keeps the int64 temporaries in cache
_BLOCK = 1 << 21  # tap values gathered per block of output rows


@dataclass(frozen=True, eq=False)
class _Prepared:
    """Weight matrix and per-channel constants of one layer, computed once.

    The per-channel constant C = ((arg_w*sum_w) >> shift_w) + arg_add*g_ic rides along in the
    matmul (an extra column of `weights` against a row of ones), so the sums come out as acc
    directly (minus the sum_x term when shift_x != 0).
    """

    weights: np.ndarray  # (oc, taps + 1), taps = ic*k*k (k*k depthwise); arg_x folded in if shift_x == 0
    dtype: np.dtype  # float32 / float64 / int64: exact for every partial sum of this layer
    channel_const: np.ndarray  # (oc,) int64: C
    fused: bool  # batch-norm + activation may take the fused path (kpu_post.py): |acc| is small enough


def _prepare(layer: KpuLayer) -> _Prepared:
    k2 = layer.filter * layer.filter
    taps = k2 if layer.depthwise else k2 * layer.in_c
    w = layer.weights.astype(I64).reshape(layer.out_c, taps)
    sum_w = w.sum(axis=1)
    folded = w + layer.arg_x if layer.shift_x == 0 else w
    const = ((I64(layer.arg_w) * sum_w) >> I64(layer.shift_w)) + I64(layer.arg_add) * I64(layer.g_ic)
    bound = taps * 255 * int(np.abs(folded).max(initial=0)) + int(np.abs(const).max(initial=0))
    dtype = np.dtype(np.float32 if bound < 1 << 24 else np.float64 if bound < 1 << 53 else np.int64)
    matrix = np.concatenate([folded, const[:, None]], axis=1)
    acc_bound = bound + (abs(layer.arg_x) * 255 * taps if layer.shift_x else 0)
    fused = fused_bound_ok(acc_bound, layer.bn_mul, layer.bn_add, layer.bn_shift, layer.activation)
    return _Prepared(matrix.astype(dtype), dtype, const, fused)


def _padded(x: np.ndarray, layer: KpuLayer) -> np.ndarray:
    """The conv input: for 3x3 exactly 1 pixel of pad_value on every side (§3 step 2, trap 5)."""
    if layer.filter == 1:
        return x
    src = np.full((x.shape[0], x.shape[1] + 2, x.shape[2] + 2), layer.pad_value, dtype=np.uint8)
    src[:, 1:-1, 1:-1] = x
    return src


def _tap(src: np.ndarray, ky: int, kx: int, pick: tuple[int, int, int], rows: range, ow: int) -> np.ndarray:
    """The input under tap (ky, kx) of output pixels (dy + stride*i, dx + stride*j), i in `rows`."""
    stride, dy, dx = pick
    y0, x0 = dy + ky + stride * rows.start, dx + kx
    return src[:, y0 : y0 + stride * (len(rows) - 1) + 1 : stride, x0 : x0 + stride * (ow - 1) + 1 : stride]


def _conv_sums(src: np.ndarray, layer: KpuLayer, prep: _Prepared, pick: tuple[int, int, int], rows: range, ow: int):
    """acc without the sum_x term for output rows `rows`, (oc, len(rows)*ow) in prep.dtype, and
    that term (None if shift_x = 0). `src` is the padded input (`_padded`)."""
    k = layer.filter
    pixels = len(rows) * ow
    channels = layer.out_c if layer.depthwise else layer.in_c
    src = src[:channels]  # depthwise: channel o reads input channel o (oc <= ic is validated)
    term_x = None
    if layer.depthwise:  # per channel o: [w'_o | C_o] @ [taps of channel o; 1], one batched matmul
        cols = np.empty((channels, k * k + 1, len(rows), ow), dtype=prep.dtype)
        for ky in range(k):
            for kx in range(k):
                cols[:, ky * k + kx] = _tap(src, ky, kx, pick, rows, ow)
        cols[:, -1] = 1
        cols = cols.reshape(channels, k * k + 1, pixels)
        if layer.shift_x:
            term_x = (I64(layer.arg_x) * cols[:, :-1].astype(I64).sum(axis=1)) >> I64(layer.shift_x)
        return np.matmul(prep.weights[:, None, :], cols)[:, 0], term_x
    # rows (ic, ky, kx) in weight order, then one row of ones for the constant column
    cols = np.empty((channels * k * k + 1, len(rows), ow), dtype=prep.dtype)
    taps = cols[:-1].reshape(channels, k * k, len(rows), ow)
    for ky in range(k):
        for kx in range(k):
            taps[:, ky * k + kx] = _tap(src, ky, kx, pick, rows, ow)
    cols[-1] = 1
    cols = cols.reshape(channels * k * k + 1, pixels)
    if layer.shift_x:
        term_x = ((I64(layer.arg_x) * cols[:-1].astype(I64).sum(axis=0)) >> I64(layer.shift_x))[None, :]
    return prep.weights @ cols, term_x


def _post(s: np.ndarray, term_x: np.ndarray | None, layer: KpuLayer, prep: _Prepared) -> np.ndarray:
    """acc -> batch-norm -> activation (kpu_post.py), in chunks of channels that stay in cache."""
    oc, pixels = s.shape
    out = np.empty((oc, pixels), dtype=np.uint8)
    rows = max(1, _CHUNK // max(pixels, 1))
    for c0 in range(0, oc, rows):
        c1 = min(oc, c0 + rows)
        acc = s[c0:c1].astype(I64)
        if term_x is not None:
            acc += term_x if term_x.shape[0] == 1 else term_x[c0:c1]
        out[c0:c1] = batch_norm_activate(acc, layer.bn_mul[c0:c1], layer.bn_shift[c0:c1], layer.bn_add[c0:c1],
                                         layer.activation, prep.fused)
    return out


def run_layer(x: np.ndarray, layer: KpuLayer) -> np.ndarray:
    """One batch element: (C_in, H, W) uint8 -> pooled (C_out, H', W') uint8.

    Output rows are processed in blocks so that the tap matrix stays around `_BLOCK` values.
    """
    prep = cached(layer, lambda: _prepare(layer))
    pick = pick_offset(layer.pool)
    if pick is not None:  # the pool keeps one pixel per window: compute only those
        oh, ow = pool_output_size(layer.in_h, layer.pool), pool_output_size(layer.in_w, layer.pool)
    else:
        pick, oh, ow = (1, 0, 0), layer.in_h, layer.in_w
    src = _padded(x, layer)
    k2 = layer.filter * layer.filter
    per_row = (layer.out_c if layer.depthwise else layer.in_c) * (k2 + 1) * ow
    step = max(1, _BLOCK // max(per_row, 1))
    out = np.empty((layer.out_c, oh, ow), dtype=np.uint8)
    for r0 in range(0, oh, step):
        rows = range(r0, min(oh, r0 + step))
        s, term_x = _conv_sums(src, layer, prep, pick, rows, ow)
        out[:, rows.start : rows.stop] = _post(s, term_x, layer, prep).reshape(layer.out_c, len(rows), ow)
    return out if pick_offset(layer.pool) is not None else pool(out, layer.pool)


def kpu_conv2d(mem: Memory, body: KpuConv2D) -> None:
    """§9.2 / §9.7: run the layer for each batch, write KPU RAM and the optional main output."""
    layer = decode(body)
    n = layer.batches
    oh, ow = pool_output_size(layer.in_h, layer.pool), pool_output_size(layer.in_w, layer.pool)
    if (oh, ow) != (layer.out_h, layer.out_w):
        raise SimulatorError(f"output size {layer.out_h}x{layer.out_w} is not the pooled input size {oh}x{ow}")
    src = MemoryRange(MemoryType.K210_KPU, DataType.UINT8, layer.src, kpu_bytes(layer.in_shape))
    dst = MemoryRange(MemoryType.K210_KPU, DataType.UINT8, layer.dst, kpu_bytes(layer.out_shape))
    x = mem.download(src, layer.in_shape)
    out = np.empty(layer.out_shape, dtype=np.uint8)
    for b in range(n):  # the hardware runtime re-sends the layer, src/dst advanced by one batch
        out[b] = run_layer(x[b], layer)
    mem.upload(dst, out)
    if body.main_mem_output.size:
        mem.write(body.main_mem_output, out)
