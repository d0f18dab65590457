"""row_bands: a KPU layer over a map taller than 256 rows, or writing more than 65536 pixels, as layers
on its row bands (issue #16 item 4: maps over the KPU's limits are tiled with their halo).

A KPU layer reads at most 256 rows, and its DMA register counts at most 65536 output pixels a
channel (kcc.target.k210): a 320x240 camera picture's full-resolution map (76800 pixels), or any map
over 256 rows, is no one layer's. With one channel per line group (W > 32), channel c's rows are
consecutive 64-byte lines (kmodel_v4.md §7.3), so the bytes of a map [C, m*Hs, W] are also those of
[C*m, Hs, W]: its m row bands as channels of their own, an NCHW reshape that moves nothing. Layers
then run on the bands:

* the bulk: the conv over the bands, its weights block-diagonal (output band j of channel o reads
  input band j of every channel), with the layer's activation and pool. A 1x1 conv is then exact
  (a pool pairs rows inside a band when Hs is a multiple of its stride). A 3x3 conv pads at a band
  edge b*Hs instead of reading the neighbouring band, which spoils the output rows made from input
  rows b*Hs - 1 and b*Hs;
* per band edge, the same conv over the input rows around it (cut and uploaded on the CPU, a few rows
  of the picture), whose own ends are spoilt by its padding in turn; so that only its good rows are
  written, a one-channel copy layer per output channel reads 4 of them in place (a row view,
  kcc.ir.kpu_ops.KpuChannelView `rows`) and writes them over the bulk's rows, in place
  (kcc.ir.kpu_ops.KpuRowPatch);
* the result, [O*m, Hs', W'] as bytes, is read back as [O, m*Hs', W'].

kcc.passes.row_pick uses `bands` too, for its stride-2 pick pairs: there the pick never reads the even
rows, so the edge conv writes one channel of its rows straight over the full-resolution map and no
copy is needed.

Every layer is an ordinary layer of the real K210, its registers describing its own maps; the copies
move codes exactly (kcc.quant.policy.copy_grids) and every part is on the bulk's grid
(kcc.quant.policy.band_edge_grids).
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.passes.kernel_forms import shift_weights
from kcc.target.k210 import (
    KPU_RAM_SIZE,
    MAX_CHANNELS,
    MAX_H,
    MAX_MAP_PIXELS,
    MAX_W,
    MAX_WEIGHT_LOADS,
    MIN_HW,
    kpu_bytes,
    kpu_row_layout,
    weight_loads,
)

#: output rows each band edge rewrites per channel (a KPU layer reads at least 4 rows)
EDGE_ROWS = 4

#: the pool unit's picks (stride 2 on the KPU): row 2i of a band is row 2i of the map when the band
#: starts on an even row, so a band needs an even height only, not a multiple of 4 as a 2x2 pool's
PICKS = ("left_top_2_s2", "right_top_2_s2")


def bands(x_shape: tuple, oc: int, stride: int = 1, out_stride: int = 1, depthwise: bool = False,
          pick: bool = False) -> int | None:
    """How many row bands a layer from NCHW `x_shape` to `oc` channels runs in: 1 when the whole map
    is one layer's, else the fewest that meet every limit, or None. `stride` is the layer's pool
    stride (rows it pools into one), `out_stride` the width divisor of the map read back (a pick
    pair's pick: 2). A depthwise layer is not banded (its edge layers would read one channel each)."""
    n, c, h, w = x_shape
    if not (MIN_HW <= h and MIN_HW <= w <= MAX_W):
        return None
    if h <= MAX_H and (h // stride) * (w // stride) <= MAX_MAP_PIXELS:
        return 1
    if depthwise or n != 1 or kpu_row_layout(w).groups != 1 or kpu_row_layout(w // max(stride, out_stride)).groups != 1:
        return None
    for m in range(2, h // 8 + 1):
        hs = h // m
        if (h % m or hs % (stride if pick else 2 * stride) or hs > MAX_H or (hs // stride) * (w // stride) > MAX_MAP_PIXELS
                or max(c, oc) * m > MAX_CHANNELS or weight_loads(oc * m, c * m, 3, False)[1] + 1 > MAX_WEIGHT_LOADS):
            continue
        return m
    return None


def serves(x_shape: tuple, oc: int, k: int, pool: str) -> int | None:
    """The bands of a trivially placed stride-1 conv (kernel k, the KPU's own padding, `pool` fused)
    over a KPU layer's limits, when its input and output fit KPU RAM whole; None otherwise."""
    s = KO.KPU_POOLS[pool][1]
    pick = pool in PICKS
    m = bands(x_shape, oc, s, pick=pick)
    n, _, h, w = x_shape
    if m is None or m == 1 or pool not in ("bypass", "max_2_s2", "mean_2_s2", "max_4_s4", "mean_4_s4", *PICKS):
        return None
    fits = kpu_bytes(x_shape) + kpu_bytes((n, oc, h // s, w // s)) <= KPU_RAM_SIZE
    return m if fits and (k == 1 or h // m >= 3 * s) else None


def band_view(g: Graph, x: Node, m: int, name: str, views: dict) -> Node:
    """x's m row bands as channels (module docstring), made once per input (`views`)."""
    if (id(x), m) not in views:
        _, c, h, w = x.shape
        views[id(x), m] = g.add(O.Reshape((1, c * m, h // m, w)), (x,), name)
    return views[id(x), m]


def rows_of(g: Graph, x: Node, r0: int, r1: int, name: str, views: dict) -> Node:
    """Rows r0..r1-1 of x (cut on the CPU), made once per input and rows (`views`)."""
    if (id(x), r0, r1) not in views:
        _, c, _, w = x.shape
        views[id(x), r0, r1] = g.add(O.StridedSlice((0, 0, r0, 0), (1, c, r1, w), (1, 1, 1, 1)), (x,), name)
    return views[id(x), r0, r1]


def bulk(g: Graph, n: Node, ins: tuple[Node, Node, Node], kop: KO.FloatKpuConv, m: int, views: dict,
         name: str) -> Node:
    """Layer `kop` of conv n over the m row bands of its input (module docstring), named `name`: its
    weights block-diagonal, output band j of channel o reading input band j of every channel."""
    x, wn, bn = ins
    oc, c = wn.shape[:2]
    blocks = np.zeros((oc * m, c * m, *wn.shape[2:]), np.float32)
    for j in range(m):
        blocks[j::m, j::m] = wn.data
    return g.add(kop, (band_view(g, x, m, n.name + "/bands", views), g.constant(blocks, wn.name + "/bands"),
                       g.constant(np.repeat(bn.data, m), bn.name + "/bands")), name)


def build(g: Graph, n: Node, name: str, ins: tuple[Node, Node, Node], kop: KO.FloatKpuConv, m: int,
          views: dict) -> tuple[Node, str]:
    """Conv n as layer `kop` (stride 1, its pool fused) on m row bands (module docstring), in graph g
    (its input, weights and bias there `ins`); the result named `name`, and what its placement says."""
    x, wn, bn = ins
    _, c, h, w = x.shape
    hs, s = h // m, KO.KPU_POOLS[kop.pool][1]
    oc = wn.shape[0]
    whole = bulk(g, n, ins, kop, m, views, n.name + "/bulk")
    parts, starts = [], []
    ho, wo = h // s, w // s
    copy_w, zero = g.constant(shift_weights(1, (0, 0)), n.name + "/w_copy"), g.constant(np.zeros(1, np.float32))
    for edge in range(1, m if kop.kernel == 3 else 1):
        q = edge * hs // s  # the first output row of band `edge`
        rows = rows_of(g, x, (q - 3) * s, (q + 3) * s, f"{n.name}/rows{(q - 3) * s}", views)
        near = g.add(kop, (rows, wn, bn), f"{n.name}/edge{edge}")  # output rows q-3 .. q+2, the ends spoilt
        for o in range(oc):
            good = g.add(O.StridedSlice((0, o, 1, 0), (1, o + 1, 1 + EDGE_ROWS, wo), (1, 1, 1, 1)), (near,),
                         f"{n.name}/edge{edge}/o{o}")
            parts.append(g.add(KO.FloatKpuConv(3, True), (good, copy_w, zero), f"{n.name}/edge{edge}/copy{o}"))
            starts.append(o * ho + q - 2)
    out = g.add(KO.KpuRowPatch(tuple(starts)), (whole, *parts), n.name + "/patched") if parts else whole
    y = g.add(O.Reshape((1, oc, ho, wo)), (out,), name)
    what = (f"{kop.kernel}x{kop.kernel}, pool {kop.pool}" + (f", {kop.fn[0]}" if kop.fn else "")
            + f", in {m} row bands of {hs} rows (a KPU layer's limits: 256 rows, 65536 pixels)"
            + (f", the rows at the band edges from {6 * s} input rows each and {oc * (m - 1)} one-channel copies"
               if parts else ""))
    return y, what
