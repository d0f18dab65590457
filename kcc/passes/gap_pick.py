"""gap_pick: a stride-2 3x3 depthwise conv on an odd size on the KPU alone (issue #16 item 1).

TFLite SAME padding with stride 2 on an odd size H = 2m + 1 pads one row on either side: the m + 1
outputs are centred on rows 0, 2, ..., 2m. The pool unit's picks (`left_top_2_s2`,
`right_top_2_s2`, kmodel_v4.md §9.7) keep floor(H/2) = m rows of an H-row map: one short. They read
rows 0, 2, 4... of the map they are given and never its odd rows, so a map declared one row larger,
H + 1, gives the m + 1 rows whatever its last row holds. But in KPU RAM (kmodel_v4.md §7.3) an H-row
map stores its channel group g (the channels one 64-byte line holds at its width) from line
g * H * row_len: a layer declaring H + 1 rows over it would read every later group from the wrong
line. Hence, exactly and on the KPU alone:

1. the conv at stride 1 with the KPU's padding of 1 (SAME's own at every even centre), one KPU layer
   per line group of channels, each reading its group of x in place and writing its H rows into a
   buffer laid out as an (H + 1)-row map: group g from line g * (H + 1) * row_len (an in-place
   concatenation whose gap row nothing writes, kcc.ir.kpu_ops.KpuConcat `gap`);
2. one pick layer over that buffer, declared (H + 1) rows (and W + 1 columns on an odd width: the
   extra column lies in the row's line padding, as the line layout of W + 1 is W's for odd W): a 3x3
   depthwise copy (kcc.passes.kernel_forms.shift_weights) with the pool. The gap row and column are
   odd, never picked, and the copy's one tap reads the picked pixel alone.

Every layer's registers describe its own maps (no custom channel stride): the real K210 and nncase's
emulator read them alike. An even axis centred on odd rows (SAME (0, 1)) is served as
kcc.passes.row_pick serves it (the copy's row shift, right_top's columns), so a map odd in one axis
only (ULFFD's 15x20) is served too. In float the buffer is the stride-1 output padded with zeros
(Concat, then Pad), which the picks never read either.

Taken by legalize_kpu when kcc.target.k210's cost model prices the extra layers below the CPU work
they replace (its fallback: the full-resolution output copied out of KPU RAM, sliced on the CPU and
uploaded again).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
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
    kpu_row_layout,
    upload_cycles,
)

#: most KPU layers one such conv may become (one per line group): each is ~30 us and a few hundred
#: bytes of kmodel
MAX_LAYERS = 256


class Plan(NamedTuple):
    line: int  # channels per layer: the channels one 64-byte line holds at the map's width
    gap: tuple[int, int]  # rows, columns the pick layer's map adds below / right (1 on an odd size)
    shift: tuple[int, int]  # the copy's tap: (1, 0) for rows centred on odd rows (row_pick's)
    pool: str  # left_top_2_s2: columns 2j; right_top_2_s2: columns 2j + 1


def _axis(size: int, before: int, out: int) -> tuple[int, int] | None:
    """(gap, odd centre) of one axis, or None: centres on even rows (padding 1 before) with
    ceil(size/2) outputs, or on odd rows (padding 0 before) of an even size with size/2."""
    if before == 1 and out == (size + 1) // 2:
        return size % 2, 0
    if before == 0 and size % 2 == 0 and out == size // 2:
        return 0, 1
    return None


def plan(x_shape: tuple, out_shape: tuple, padding: tuple, k: int, stride: tuple, depthwise: bool) -> Plan | None:
    """The form of a conv (NCHW input `x_shape`, output `out_shape`, k x k kernel, `stride`, `padding`
    ((top, bottom), (left, right))), when it is a stride-2 3x3 depthwise conv with an odd size that
    the layers compute with no crop (module docstring); None otherwise. Shapes only: see `pays`."""
    nb, c, h, w = x_shape
    if not depthwise or k != 3 or tuple(stride) != (2, 2) or nb != 1:
        return None
    rows, cols = _axis(h, padding[0][0], out_shape[2]), _axis(w, padding[1][0], out_shape[3])
    if rows is None or cols is None or not (rows[0] or cols[0]):
        return None
    hp, wp = h + rows[0], w + cols[0]
    if kpu_row_layout(wp) != kpu_row_layout(w) or not (MIN_HW <= h and hp <= MAX_H and MIN_HW <= w and wp <= MAX_W):
        return None
    if hp * wp > MAX_MAP_PIXELS or -(-c // kpu_row_layout(w).groups) > MAX_LAYERS:
        return None
    return Plan(kpu_row_layout(w).groups, (rows[0], cols[0]), (rows[1], 0),
                "right_top_2_s2" if cols[1] else "left_top_2_s2")


def layers_cycles(x_shape: tuple, p: Plan) -> float:
    """The layers' time in CPU cycles (kcc.target.k210's KPU cost, a dispatch each): one per line
    group at stride 1, then the pick layer over the padded map."""
    _, c, h, w = x_shape
    groups = [min(p.line, c - c0) for c0 in range(0, c, p.line)]
    rows = sum(kpu_layer_cost(kpu_map_cycles(g, h, w, g, True), 9 * g) for g in groups)
    pick = kpu_layer_cost(kpu_map_cycles(c, h + p.gap[0], w + p.gap[1], c, True), 9 * c)
    return rows + pick + (len(groups) + 1) * CPU_NODE_CYCLES


def fallback_cycles(x_shape: tuple, out_shape: tuple) -> float:
    """legalize_kpu's form without it, in CPU cycles: the conv at stride 1 as one KPU layer, its
    output copied out of KPU RAM, sliced on the CPU and the slice uploaded again."""
    _, c, h, w = x_shape
    out = c * out_shape[2] * out_shape[3]
    return (kpu_layer_cost(kpu_map_cycles(c, h, w, c, True), 9 * c) + 2 * CPU_NODE_CYCLES
            + cpu_cycles("kpu_download_byte") * c * h * w + cpu_cycles("strided_slice") * out
            + upload_cycles((1, c, out_shape[2], out_shape[3])))


def pays(x_shape: tuple, out_shape: tuple, p: Plan) -> bool:
    """The buffer fits KPU RAM beside the conv's input and the picked output, and the layers cost
    less than the fallback (kcc.target.k210's costs)."""
    nb, c, h, w = x_shape
    padded = kpu_bytes((nb, c, h + p.gap[0], w + p.gap[1]))
    return (kpu_bytes(x_shape) + padded + kpu_bytes(out_shape) <= KPU_RAM_SIZE
            and layers_cycles(x_shape, p) < fallback_cycles(x_shape, out_shape))


def build(g: Graph, n: Node, op, x: Node, w: np.ndarray, b: np.ndarray, p: Plan) -> tuple[Node, str]:
    """The layers in graph g for depthwise conv n (as `op`, a zero pad before it absorbed) reading x
    there (its weights w, bias b): one stride-1 layer per line group reading its channels of x, their
    concatenation padded by the gap, the pick layer named as n; and what its placement says."""
    c, (nb, _, h, wd) = w.shape[0], x.shape
    parts = []
    for c0 in range(0, c, p.line):
        c1 = min(c, c0 + p.line)
        view = x if (c0, c1) == (0, c) else g.add(
            O.StridedSlice((0, c0, 0, 0), (nb, c1, h, wd), (1, 1, 1, 1)), (x,), f"{n.name}/ch{c0}")
        parts.append(g.add(KO.FloatKpuConv(3, True, "bypass", op.act),
                           (view, g.constant(w[c0:c1], f"{n.name}/w{c0}"), g.constant(b[c0:c1], f"{n.name}/b{c0}")),
                           f"{n.name}/rows{c0}"))
    y = g.add(O.Concat(1), tuple(parts), n.name + "/stride1") if len(parts) > 1 else parts[0]
    y = g.add(O.Pad(((0, 0), (0, 0), (0, p.gap[0]), (0, p.gap[1])), 0.0), (y,), n.name + "/gap")
    shift = g.constant(shift_weights(c, p.shift), n.name + "/w_pick")
    y = g.add(KO.FloatKpuConv(3, True, p.pool), (y, shift, g.constant(np.zeros(c, np.float32))), n.name)
    what = (f"3x3 depthwise at stride 1 in {len(parts)} layers of {p.line} channel(s), written as a "
            f"{h + p.gap[0]}x{wd + p.gap[1]} map, then a pick layer (pool {p.pool}), all in KPU RAM "
            f"(padding {[list(q) for q in op.padding]} on {h}x{wd})")
    return y, what
