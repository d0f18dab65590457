"""Which KPU layers move or average their input's codes on its grid: a quantized graph keeps such a
layer on its input's grid (kcc.quant.policy.copy_grids), where it computes the codes exactly
(shifted copies, fans, picks, max pools) or floors their means (identity mean layers)."""

from __future__ import annotations

import numpy as np

from kcc.ir.kpu_ops import MAX_POOLS, NO_CLAMP, PICK_POOLS, FloatKpuConv


def _plain(n) -> bool:
    """n is a FloatKpuConv with constant weights, no bias, clamp or function."""
    op = n.op
    if not (isinstance(op, FloatKpuConv) and op.fn is None and op.act == NO_CLAMP):
        return False
    w, b = n.inputs[1], n.inputs[2]
    return w.is_constant and b.is_constant and not np.any(b.data != 0)


def _identity_1x1(n) -> bool:
    """`_plain` n is a non-depthwise 1x1 layer whose weights are the identity."""
    w = n.inputs[1]
    eye = np.eye(w.shape[0], dtype=np.float32)[:, :, None, None]
    return n.op.kernel == 1 and not n.op.depthwise and w.shape == eye.shape and np.array_equal(w.data, eye)


def shift_copy(n) -> tuple[int, int] | None:
    """(cy, cx) if node n is a FloatKpuConv that copies its input shifted, out[i, j] = x[i + cy,
    j + cx] (0 outside x): depthwise 3x3, no bias, clamp, function or pool but a pick (which keeps
    values), and in every channel one tap of exactly 1 at (1 + cy, 1 + cx), the others 0
    (kcc.passes.kernel_forms' `stack_kpu` views; kcc.passes.row_pick's pick layers).
    Quantized on its input's grid (kcc.quant.policy.copy_grids) it moves the codes exactly.
    Also (0, 0) for a non-depthwise 1x1 layer with identity weights and a max pool or a pick
    (legalize_kpu's pools of a map in KPU RAM): the max of codes on one grid is a code."""
    op = n.op
    if not _plain(n):
        return None
    w = n.inputs[1]
    if op.kernel == 1 and not op.depthwise and op.pool in PICK_POOLS + MAX_POOLS:
        return (0, 0) if _identity_1x1(n) else None
    if not (op.kernel == 3 and op.depthwise and op.pool in PICK_POOLS):
        return None
    taps = np.argwhere(w.data[0, 0] != 0)
    if len(taps) != 1:
        return None
    (a, c), = taps
    one = np.zeros((3, 3), np.float32)
    one[a, c] = 1.0
    if not np.array_equal(w.data, np.broadcast_to(one, w.shape)):
        return None
    return int(a) - 1, int(c) - 1


def fan_copy(n) -> list[tuple[int, tuple[int, int]]] | None:
    """(input channel, (cy, cx)) of every output channel if node n is a FloatKpuConv whose every output
    channel copies one input channel shifted, out[o][i, j] = x[c_o][i + cy_o, j + cx_o] (0 outside x):
    a non-depthwise 3x3 layer, no bias, clamp or function, no pool, and in every output channel one
    weight of exactly 1, the others 0 (kcc.passes.kernel_forms' `fan_kpu`: one layer making a
    channel group's nine shifted copies). Like a `shift_copy`, quantized on its input's grid
    (kcc.quant.policy.copy_grids) it moves the codes exactly: each output's accumulator is one
    input's (x - z) times the one weight's code step."""
    if not (_plain(n) and n.op.kernel == 3 and not n.op.depthwise and n.op.pool == "bypass"):
        return None
    w = n.inputs[1]
    flat = w.data.reshape(w.shape[0], -1)
    if not (np.all((flat == 0) | (flat == 1)) and np.all(np.count_nonzero(flat, axis=1) == 1)):
        return None
    out = []
    for tap in np.argmax(flat, axis=1):
        c, a, d = np.unravel_index(int(tap), w.shape[1:])
        out.append((int(c), (int(a) - 1, int(d) - 1)))
    return out


def moves_codes(n) -> bool:
    """Node n copies codes exactly on its input's grid: a `shift_copy` or a `fan_copy`."""
    return shift_copy(n) is not None or fan_copy(n) is not None


def averages_codes(n) -> bool:
    """Node n is a non-depthwise 1x1 layer with identity weights, no bias, clamp or function, and a
    mean pool (kcc.passes.kpu_pools' upsampling): on its input's grid the floored mean of codes is a
    code, so that grid holds its output with no rounding but the pool's."""
    return _plain(n) and n.op.pool.startswith("mean") and _identity_1x1(n)


def keeps_grid(n) -> bool:
    """Node n is quantized on its input's grid (kcc.quant.policy.copy_grids): it `moves_codes` or
    `averages_codes`."""
    return moves_codes(n) or averages_codes(n)
