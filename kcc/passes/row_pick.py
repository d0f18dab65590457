"""row_pick: a stride-2 3x3 conv whose windows are centred on odd input rows, as two KPU layers and no CPU
work (issue #16 item 1, kpu_speed.md §2).

TFLite SAME padding with stride 2 on an even size pads 0 rows on top and 1 below: output i is centred on
input row 2i+1. The pool unit keeps even rows only (`left_top_2_s2`, `right_top_2_s2`: row 2i, column
2j or 2j+1, kmodel_v4.md §9.7), so legalize_kpu would pre-pad the input on the CPU and crop, or slice
the full-resolution output. Exactly, on the KPU alone:

    conv2d(x, pad=((0, 1), (p, *)), stride 2)  ==  pick(shift_up(conv3x3_same(x)))

1. the conv at stride 1 with the KPU's own padding of 1 (pool bypass): its full-resolution output Y is
   the SAME conv's value at every centre, the odd rows and columns in particular (its bottom/right pad
   row is SAME's, its top one is never read by an odd centre's window);
2. a pick layer: a 3x3 depthwise copy whose one tap of 1 sits at the bottom centre (kernel_forms'
   shifted copy by (+1, 0): out[r, c] = Y[r + 1, c], the last row its pad value), with the pool
   `left_top_2_s2` (p = 1: columns 2j) or `right_top_2_s2` (p = 0: columns 2j+1). Picked row i is
   Y[2i + 1]; the padded last row is odd, never picked. On Y's own grid the copy moves the codes
   exactly (kcc.quant.policy.copy_grids, kcc.ir.kpu_ops.shift_copy).
Y never leaves KPU RAM, and every layer's registers describe its own maps (no address tricks): the
pick layer is an ordinary layer of the real K210.

Taken for even H and W only, with H/2 and W/2 outputs (no crop), when Y fits KPU RAM next to the conv's
input and to the picked output, and when kcc.target.k210's cost model prices the pick layer below
the CPU work it removes (`cheaper`). rotate180 asks `serves` before counting a layer it would free.
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir.graph import Graph, Node
from kcc.passes.kernel_forms import shift_weights
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    KPU_RAM_SIZE,
    MAX_H,
    MAX_MAP_PIXELS,
    MAX_W,
    MIN_HW,
    cpu_cycles,
    kpu_bytes,
    kpu_layer_cost,
    kpu_map_cycles,
)

#: the pick layer's copy: out[r, c] = Y[r + 1, c] (kcc.passes.kernel_forms.shift_weights)
SHIFT = (1, 0)


def pick_pool(x_shape: tuple, out_shape: tuple, padding: tuple, k: int, stride: tuple) -> str | None:
    """The pick layer's pool when a conv (input NCHW `x_shape`, output `out_shape`, 3x3 kernel `k`,
    `stride`, `padding` ((top, bottom), (left, right))) is centred on odd rows and the pair computes it
    with no crop (module docstring); None otherwise. Shapes only: fit and cost are `fits`/`cheaper`."""
    (top, _), (left, _) = padding
    h, w = x_shape[2:]
    oh, ow = out_shape[2:]
    if k != 3 or tuple(stride) != (2, 2) or top != 0 or left not in (0, 1):
        return None
    if h % 2 or w % 2 or (oh, ow) != (h // 2, w // 2):
        return None
    if not (MIN_HW <= h <= MAX_H and MIN_HW <= w <= MAX_W) or h * w > MAX_MAP_PIXELS:
        return None
    return "right_top_2_s2" if left == 0 else "left_top_2_s2"


def fits(x_shape: tuple, oc: int) -> bool:
    """The conv's input and its full-resolution output, then that output and the picked one, each pair
    in KPU RAM at once."""
    n, _, h, w = x_shape
    full = kpu_bytes((n, oc, h, w))
    return (kpu_bytes(x_shape) + full <= KPU_RAM_SIZE
            and full + kpu_bytes((n, oc, h // 2, w // 2)) <= KPU_RAM_SIZE)


def pick_cycles(x_shape: tuple, oc: int) -> float:
    """The pick layer's time in CPU cycles (kcc.target.k210's KPU cost: depthwise over Y, 9 weight
    bytes a channel, the per-layer overhead)."""
    n, _, h, w = x_shape
    return kpu_layer_cost(n * kpu_map_cycles(oc, h, w, oc, True), 9 * oc)


def cpu_cycles_saved(x_shape: tuple, oc: int, depthwise: bool) -> float:
    """A lower bound of the CPU work the pair removes (kcc.target.k210's costs). A depthwise layer
    otherwise keeps its full-resolution output: copied out of KPU RAM (three quarters more bytes than
    the picked output) and sliced on the CPU. A conv otherwise reads its input pre-padded by a row and
    a column on the CPU, and its output is cropped. Each CPU node also costs its dispatch. Uploads
    are not counted."""
    n, c, h, w = x_shape
    out = n * oc * (h // 2) * (w // 2)
    slice_ = cpu_cycles("strided_slice") * out + CPU_NODE_CYCLES
    if depthwise:
        return cpu_cycles("kpu_download_byte") * (n * oc * h * w - out) + slice_
    return cpu_cycles("pad") * n * c * (h + 2) * (w + 2) + CPU_NODE_CYCLES + slice_


def cheaper(x_shape: tuple, oc: int, depthwise: bool) -> bool:
    return pick_cycles(x_shape, oc) < cpu_cycles_saved(x_shape, oc, depthwise)


def serves(x_shape: tuple, out_shape: tuple, padding: tuple, k: int, stride: tuple, depthwise: bool) -> bool:
    """True when legalize_kpu computes this conv with the pair (shapes, KPU RAM and cost allowing)."""
    oc = out_shape[1]
    return (pick_pool(x_shape, out_shape, padding, k, stride) is not None and fits(x_shape, oc)
            and cheaper(x_shape, oc, depthwise))


def build(g: Graph, n: Node, name: str, ins: tuple[Node, Node, Node], fn: tuple[str, float] | None,
          pool: str) -> tuple[Node, str]:
    """The pair in graph g for conv n (its input, weights and bias there `ins`, a fused activation
    `fn`): the conv at stride 1, then the pick layer named `name`; and what its placement says."""
    op = n.op
    k, depthwise, oc = ins[1].shape[2], op.groups > 1, ins[1].shape[0]
    full = g.add(KO.FloatKpuConv(k, depthwise, "bypass", op.act, fn), ins, n.name + "/full")
    shift = g.constant(shift_weights(oc, SHIFT), n.name + "/w_pick")
    zero = g.constant(np.zeros(oc, np.float32), n.name + "/zero_bias")
    y = g.add(KO.FloatKpuConv(3, True, pool), (full, shift, zero), name)
    what = (f"{k}x{k}{' depthwise' if depthwise else ''} at stride 1" + (f", {fn[0]}" if fn else "")
            + f", then a pick layer of its odd rows (pool {pool}), both in KPU RAM (padding "
              f"{[list(p) for p in op.padding]})")
    return y, what
