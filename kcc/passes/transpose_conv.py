"""lower_transpose_conv: a transposed convolution as zero insertion + an ordinary convolution.

ncc v0.2 always runs TRANSPOSE_CONV in float on the CPU. Its algebra (stride s, kernel K, padding
before p, dilation 1; `Conv2DTranspose` semantics: out[iy*s - p + ky] += x[iy] * w[ky]):

    out[o] = sum_ky w[ky] * z[o + p - ky]              z[iy*s] = x[iy], 0 elsewhere
           = sum_k  w[K-1-k] * z[o + p - (K-1) + k]     (k = K-1-ky)

which is a stride-1 convolution of z, padded by K-1-p before, with the kernel flipped in both
spatial axes. The zeros are inserted with 4-D data movement only (reshape + pad), which runs on
uint8 in main memory before the layer is uploaded; the convolution is then an ordinary KPU
candidate (legalize_kpu).

    x [N,C,H,W] -> [N*C,H,W,1] -pad(0,s-1)-> [N*C,H,W,s] -> [N*C,H,1,W*s] -pad(0,s-1)->
    [N*C,H,s,W*s] -> [N,C,H*s,W*s]   (the last s-1 rows/columns are zeros too: they count as padding)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

if TYPE_CHECKING:
    from kcc.passes.manager import CompileContext


def _rewrite(g: Graph, n: Node) -> Node | None:
    op: O.Conv2DTranspose = n.op
    x, w, b = n.inputs
    if op.dilation != (1, 1) or not w.is_constant:
        return None
    nb, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    _, _, oh, ow = n.shape
    sh, sw = op.stride
    top, left = kh - 1 - op.padding[0][0], kw - 1 - op.padding[1][0]
    zh, zw = h * sh, wd * sw  # zero-inserted size, trailing zeros included
    bottom, right = oh - 1 + kh - zh - top, ow - 1 + kw - zw - left
    # up to s-1 trailing rows/columns of z are inserted zeros: dropping them is free
    cut_h, cut_w = max(0, -bottom), max(0, -right)
    if min(top, left) < 0 or cut_h > sh - 1 or cut_w > sw - 1:
        return None  # would need cropping real input rows; stays on the CPU
    bottom, right = bottom + cut_h, right + cut_w
    name = n.name
    v = x
    if (sh, sw) != (1, 1):
        v = g.insert_before(n, O.Reshape((nb * c, h, wd, 1)), (v,), name + "/zi_cols")
        v = g.insert_before(n, O.Pad(((0, 0), (0, 0), (0, 0), (0, sw - 1)), 0.0), (v,), name + "/zi_pad_w")
        v = g.insert_before(n, O.Reshape((nb * c, h, 1, wd * sw)), (v,), name + "/zi_rows")
        v = g.insert_before(n, O.Pad(((0, 0), (0, 0), (0, sh - 1), (0, 0)), 0.0), (v,), name + "/zi_pad_h")
        v = g.insert_before(n, O.Reshape((nb, c, zh, zw)), (v,), name + "/zero_inserted")
        if cut_h or cut_w:
            v = g.insert_before(n, O.StridedSlice((0, 0, 0, 0), (nb, c, zh - cut_h, zw - cut_w), (1, 1, 1, 1)),
                                (v,), name + "/zero_trim")
    flipped = g.insert_before(n, O.Constant(np.ascontiguousarray(w.data[:, :, ::-1, ::-1])), (), name + "/flipped")
    conv = O.Conv2D((1, 1), ((top, bottom), (left, right)), (1, 1), op.groups, op.act)
    return g.insert_before(n, conv, (v, flipped, b), name + "/conv")


def lower_transpose_conv(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Rewrite every TRANSPOSE_CONV whose padding allows it; the others stay as they are. Needs nothing of
    `ctx`."""
    for n in list(g.nodes):
        if isinstance(n.op, O.Conv2DTranspose):
            new = _rewrite(g, n)
            if new is not None:
                g.substitute(n, new, "/transposed")
    g.remove_dead()
    return g
