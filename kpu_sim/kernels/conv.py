"""Float convolution and matrix kernels: conv2d, conv2d_transpose, matmul (kmodel_v4.md §8.3, 8.5, 8.19).

The runtime accumulates each output in a float32 in a fixed loop order; float addition is not
associative, so the kernels here loop over the same reduction index (input channel, filter
row, filter column) in the same order and update whole output slices per step. Taps that fall
outside the input are skipped (not added as zeros), as in the C loops.
"""

from __future__ import annotations

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import Conv2D, Conv2DTranspose, MatMul
from kpu_sim.kernels.elementwise import shape_count
from kpu_sim.kernels.fp32 import F32, apply_activation, window_taps, windowed_output_size
from kpu_sim.kernels.fp32 import window_params as _window_params
from kpu_sim.memory import Memory


def _group_sizes(in_channels: int, out_channels: int, groups: int) -> tuple[int, int]:
    if groups <= 0 or in_channels < 0 or out_channels < 0:
        raise SimulatorError(f"invalid channels/groups ({in_channels}, {out_channels}, {groups})")
    return in_channels // groups, out_channels // groups


def _check_window(stride_h: int, stride_w: int, dilation_h: int, dilation_w: int) -> None:
    if min(stride_h, stride_w, dilation_h, dilation_w) <= 0:
        raise SimulatorError(f"stride ({stride_h}, {stride_w}) and dilation ({dilation_h}, {dilation_w}) must be > 0")


def conv2d(mem: Memory, body: Conv2D) -> None:
    """§8.3: value = bias; for ic, ky, kx: value += x * w; out = clamp(value)."""
    n, c, h, w = body.in_shape
    fh, fw, sh, sw, dh, dw = _window_params(body)
    _check_window(sh, sw, dh, dw)
    g_ic, g_oc = _group_sizes(c, body.out_channels, body.groups)
    oc = g_oc * body.groups  # channels the runtime actually writes
    oh = max(0, windowed_output_size(h, fh, sh, dh, *body.padding_h))
    ow = max(0, windowed_output_size(w, fw, sw, dw, *body.padding_w))
    mem.require(body.output, n * oc * oh * ow * 4)
    x = mem.read(body.input, F32, shape_count(body.in_shape, "in_shape")).reshape(n, c, h, w)
    weights = body.weights[: oc * g_ic * fh * fw].reshape(oc, g_ic, fh, fw)
    acc = np.empty((n, oc, oh, ow), dtype=F32)
    acc[:] = body.bias[:oc].reshape(1, oc, 1, 1)
    first_in_channel = (np.arange(oc) // max(g_oc, 1)) * g_ic  # input channel 0 of each output's group
    taps = list(window_taps((oh, ow), (h, w), (fh, fw), (sh, sw), (body.padding_h.before, body.padding_w.before),
                            (dh, dw)))
    for ic in range(g_ic):
        xs = x[:, ic : ic + 1] if body.groups == 1 else x[:, first_in_channel + ic]
        for ky, kx, (ys, xs_), (iys, ixs) in taps:
            acc[:, :, ys, xs_] += xs[:, :, iys, ixs] * weights[:, ic, ky, kx].reshape(1, oc, 1, 1)
    mem.write(body.output, apply_activation(acc, body.fused_activation))


def conv2d_transpose(mem: Memory, body: Conv2DTranspose) -> None:
    """§8.19, as the beta4 runtime computes it.

    The output starts at 0 and every input pixel scatters `x * w` into it, looping over
    (ic, iy, ix) and then the filter taps. For one output element that order is (ic, ky
    descending, kx descending), which is the order used here. The runtime **never adds the
    bias** (it reads it into a variable it does not use); that is reproduced. The clamp is
    applied afterwards (skipped by the runtime when it is the full range, where it is a no-op).
    """
    n, c, h, w = body.in_shape
    on, oc_all, oh, ow = body.out_shape
    fh, fw, sh, sw, dh, dw = _window_params(body)
    _check_window(sh, sw, dh, dw)
    if on < n:
        raise SimulatorError(f"out_shape batch {on} is smaller than in_shape batch {n}")
    g_ic, g_oc = _group_sizes(c, oc_all, body.groups)
    oc = g_oc * body.groups
    shape_count(body.out_shape, "out_shape")
    mem.require(body.output, on * oc_all * oh * ow * 4)
    x = mem.read(body.input, F32, shape_count(body.in_shape, "in_shape")).reshape(n, c, h, w)
    weights = body.weights[: oc * g_ic * fh * fw].reshape(oc, g_ic, fh, fw)
    out = np.zeros((on, oc_all, oh, ow), dtype=F32)
    first_in_channel = (np.arange(oc) // max(g_oc, 1)) * g_ic
    # the roles swap: each input pixel scatters into the output, so the "output" of the taps is the input
    taps = list(window_taps((h, w), (oh, ow), (fh, fw), (sh, sw), (body.padding_h.before, body.padding_w.before),
                            (dh, dw), reverse=True))
    for ic in range(g_ic):
        xs = x[:, first_in_channel + ic]
        for ky, kx, (ys, xs_), (oys, oxs) in taps:
            out[:n, :oc, oys, oxs] += xs[:, :, ys, xs_] * weights[:, ic, ky, kx].reshape(1, oc, 1, 1)
    mem.write(body.output, apply_activation(out, body.fused_activation))


def matmul(mem: Memory, body: MatMul) -> None:
    """§8.5: value = bias[c]; for k: value += a[r][k] * b[k][c]; out = clamp(value)."""
    rows, cols, b_cols = body.a_rows, body.a_cols, body.b_cols
    if min(rows, cols, b_cols) < 0:
        raise SimulatorError(f"negative matmul size ({rows}, {cols}, {b_cols})")
    mem.require(body.output, rows * b_cols * 4)
    a = mem.read(body.input_a, F32, rows * cols).reshape(rows, cols)
    b = mem.read(body.input_b, F32, cols * b_cols).reshape(cols, b_cols)
    acc = np.empty((rows, b_cols), dtype=F32)
    acc[:] = body.bias.reshape(1, b_cols)
    for k in range(cols):
        acc += a[:, k : k + 1] * b[k : k + 1, :]
    mem.write(body.output, apply_activation(acc, body.fused_activation))
