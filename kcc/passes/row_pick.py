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
   exactly (kcc.quant.policy.copy_grids, kcc.ir.code_moves.shift_copy).
Y never leaves KPU RAM, and every layer's registers describe its own maps (no address tricks): the
pick layer is an ordinary layer of the real K210.

Taken for even H and W only, with H/2 and W/2 outputs (no crop), when Y fits KPU RAM next to the conv's
input and to the picked output, and when kcc.target.k210's cost model prices the pick layer below
the CPU work it removes (`cheaper`). rotate180 asks `serves` before counting a layer it would free.

**Row bands.** Y of a 320x240 camera picture (76800 pixels) or of a map over 256 rows is no one KPU
layer's output (256 rows, 65536 pixels a channel); kcc.passes.row_bands runs a plain conv's pair on
the map's row bands as channels (`bands`, W > 64 so that both maps keep one channel per line group):

1. the conv over the bands, its weights block-diagonal, makes every row of Y whose window stays in
   its band; at a band edge b*Hs the KPU pads instead of reading the neighbouring band, which spoils
   Y rows b*Hs - 1 and b*Hs;
2. per output channel o and band edge, a one-channel layer over x's rows b*Hs - 2 .. b*Hs + 2 (cut
   and uploaded on the CPU) writes Y rows b*Hs - 2 .. b*Hs + 2 of channel o in place
   (kcc.ir.kpu_ops.KpuRowPatch): right at b*Hs - 1 .. b*Hs + 1, its own padding spoils the two even
   rows at its ends, which the pick never reads (so no copy is needed, unlike row_bands' convs);
3. the pick layer on the bands keeps Y's odd rows, each read inside its band (the shift at a band's
   last row reads the pad, an odd row the pool drops), and its output [O*m, Hs/2, W/2] is the bytes
   of [O, H/2, W/2].
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.passes import row_bands
from kcc.passes.kernel_forms import shift_weights
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    KPU_CYCLE_FACTOR,
    KPU_RAM_SIZE,
    cpu_cycles,
    kpu_bytes,
    kpu_layer_cost,
    kpu_map_cycles,
)

#: the pick layer's copy: out[r, c] = Y[r + 1, c] (kcc.passes.kernel_forms.shift_weights)
SHIFT = (1, 0)


#: rows of x each band edge's one-channel layers read (module docstring, step 2)
PATCH_ROWS = 5


def bands(x_shape: tuple, oc: int, depthwise: bool = False) -> int | None:
    """How many row bands the pair of a conv from `x_shape` to `oc` channels runs in (module
    docstring; kcc.passes.row_bands): 1 when one KPU layer takes the whole map."""
    return row_bands.bands(x_shape, oc, 1, 2, depthwise)


def pick_pool(x_shape: tuple, out_shape: tuple, padding: tuple, k: int, stride: tuple,
              depthwise: bool = False) -> str | None:
    """The pick layer's pool when a conv (input NCHW `x_shape`, output `out_shape`, 3x3 kernel `k`,
    `stride`, `padding` ((top, bottom), (left, right))) is centred on odd rows and the pair computes it
    with no crop (module docstring), in row bands if need be; None otherwise. Shapes only: fit and
    cost are `fits`/`cheaper`."""
    (top, _), (left, _) = padding
    h, w = x_shape[2:]
    oh, ow = out_shape[2:]
    if k != 3 or tuple(stride) != (2, 2) or top != 0 or left not in (0, 1):
        return None
    if h % 2 or w % 2 or (oh, ow) != (h // 2, w // 2) or bands(x_shape, out_shape[1], depthwise) is None:
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
    bytes a channel, the per-layer overhead), and in row bands what they add: the conv's block-diagonal
    weights over m bands, and per band edge the CPU cut and upload of x's rows and one KPU layer an
    output channel."""
    n, c, h, w = x_shape
    pick = kpu_layer_cost(n * kpu_map_cycles(oc, h, w, oc, True), 9 * oc)
    m = bands(x_shape, oc) or 1
    if m == 1:
        return pick
    conv = (m - 1) * kpu_map_cycles(c, h, w, oc, False)
    rows = c * PATCH_ROWS * w
    edge = (oc * kpu_layer_cost(kpu_map_cycles(c, PATCH_ROWS, w, 1, False), 9 * c)
            + rows * (cpu_cycles("strided_slice") + cpu_cycles("kpu_upload_byte")) + 2 * CPU_NODE_CYCLES)
    return pick + KPU_CYCLE_FACTOR * conv + (m - 1) * edge


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
    return (pick_pool(x_shape, out_shape, padding, k, stride, depthwise) is not None and fits(x_shape, oc)
            and cheaper(x_shape, oc, depthwise))


def build(g: Graph, n: Node, name: str, ins: tuple[Node, Node, Node], fn: tuple[str, float] | None,
          pool: str, views: dict | None = None) -> tuple[Node, str]:
    """The pair in graph g for conv n (its input, weights and bias there `ins`, a fused activation
    `fn`): the conv at stride 1, then the pick layer named `name`; and what its placement says.
    `views`: the row bands' views of an input, shared by the pairs of its channel groups."""
    op = n.op
    k, depthwise, oc = ins[1].shape[2], op.groups > 1, ins[1].shape[0]
    m = bands(ins[0].shape, oc, depthwise)
    if m != 1:
        return _build_bands(g, n, name, ins, fn, pool, m, {} if views is None else views)
    full = g.add(KO.FloatKpuConv(k, depthwise, "bypass", op.act, fn), ins, n.name + "/full")
    shift = g.constant(shift_weights(oc, SHIFT), n.name + "/w_pick")
    zero = g.constant(np.zeros(oc, np.float32), n.name + "/zero_bias")
    y = g.add(KO.FloatKpuConv(3, True, pool), (full, shift, zero), name)
    what = (f"{k}x{k}{' depthwise' if depthwise else ''} at stride 1" + (f", {fn[0]}" if fn else "")
            + f", then a pick layer of its odd rows (pool {pool}), both in KPU RAM (padding "
              f"{[list(p) for p in op.padding]})")
    return y, what


def _build_bands(g: Graph, n: Node, name: str, ins: tuple[Node, Node, Node], fn: tuple[str, float] | None,
                 pool: str, m: int, views: dict) -> tuple[Node, str]:
    """The pair on m row bands (module docstring): x's bands as channels, the conv over them with its
    weights block-diagonal, one-channel layers rewriting Y's rows at each band edge, the pick layer
    over Y's bands, its output read back as one map. x's views are made once (`views`), so that the
    channel groups of one conv read one upload of x."""
    x, wn, bn = ins
    _, c, h, w = x.shape
    hs = h // m
    wt, bias = wn.data, bn.data
    oc = wt.shape[0]
    act = n.op.act
    full = row_bands.bulk(g, n, ins, KO.FloatKpuConv(3, False, "bypass", act, fn), m, views, n.name + "/full")
    parts, starts = [], []
    for edge in range(1, m):
        r0 = edge * hs - 2
        rows = row_bands.rows_of(g, x, r0, r0 + PATCH_ROWS, f"{n.name}/rows{r0}", views)
        for o in range(oc):
            wo = g.constant(np.ascontiguousarray(wt[o:o + 1]), f"{wn.name}/o{o}")
            bo = g.constant(np.ascontiguousarray(bias[o:o + 1]), f"{bn.name}/o{o}")
            parts.append(g.add(KO.FloatKpuConv(3, False, "bypass", act, fn), (rows, wo, bo),
                               f"{n.name}/rows{r0}/o{o}"))
            starts.append(o * h + r0)
    patched = g.add(KO.KpuRowPatch(tuple(starts)), (full, *parts), n.name + "/patched")
    shift = g.constant(shift_weights(oc * m, SHIFT), n.name + "/w_pick")
    zero = g.constant(np.zeros(oc * m, np.float32), n.name + "/zero_bias")
    picked = g.add(KO.FloatKpuConv(3, True, pool), (patched, shift, zero), n.name + "/pick")
    y = g.add(O.Reshape((1, oc, h // 2, w // 2)), (picked,), name)
    what = (f"3x3 at stride 1 in {m} row bands of {hs} rows (a KPU layer's limits: 256 rows, 65536 pixels), "
            f"{oc * (m - 1)} one-channel layers rewriting its rows at the band edges from {PATCH_ROWS} rows "
            f"of the input each, then a pick layer of its odd rows (pool {pool}), all in KPU RAM (padding "
            f"{[list(p) for p in n.op.padding]})")
    return y, what
