"""eliminate_dilated_conv: a dilated convolution as a plain one over d*d sub-images (space-to-batch).

The KPU has no dilation, but it runs a layer over N batches (kmodel_v4.md §9.7 "Batches"), which
is what a dilated convolution becomes after a phase decomposition. For stride 1 and dilation d:

    out[d*y + i, d*x + j] = sum_k w[k] * xp[d*(y + ky) + i, d*(x + kx) + j]
                          = conv_valid(sub[i, j], w)[y, x],   sub[i, j][y, x] = xp[d*y + i, d*x + j]

where xp is the input with the conv's padding (plus a few rows so its size divides by d). So:

    pad -> space_to_batch -> conv2d (dilation 1, valid) -> batch_to_space -> crop

with space_to_batch / batch_to_space as reshape-transpose-reshape chains that stay 4-D (the
kmodel's limit): [C*h, d, w, d] -(1,3,0,2)-> [d, d, C*h, w] = [d*d, C, h, w], and back.
The inner conv is then an ordinary KPU candidate with d*d batches (ncc does the same: the K210
RFB-320 example runs 25/9/4-batch layers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

if TYPE_CHECKING:
    from kcc.passes.manager import CompileContext


def _rewrite(g: Graph, n: Node) -> Node | None:
    op: O.Conv2D = n.op
    x, w, b = n.inputs
    d = op.dilation[0]
    if op.dilation[1] != d or d == 1 or op.stride != (1, 1) or x.shape[0] != 1:
        return None
    _, c, h, wd = x.shape
    _, oc, oh, ow = n.shape
    (pt, pb), (pl, pr) = op.padding
    hp, wp = h + pt + pb, wd + pl + pr
    eh, ew = (-hp) % d, (-wp) % d
    hs, ws = (hp + eh) // d, (wp + ew) // d
    name = n.name
    pads = ((0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew))
    # no pad op that would copy the map unchanged (a VALID conv on sizes that divide by d)
    xp = g.insert_before(n, O.Pad(pads, 0.0), (x,), name + "/s2b_pad") if any(sum(p) for p in pads) else x
    r1 = g.insert_before(n, O.Reshape((c * hs, d, ws, d)), (xp,), name + "/s2b_split")
    t1 = g.insert_before(n, O.Transpose((1, 3, 0, 2)), (r1,), name + "/s2b_phase")
    sub = g.insert_before(n, O.Reshape((d * d, c, hs, ws)), (t1,), name + "/s2b")
    conv = g.insert_before(n, O.Conv2D((1, 1), ((0, 0), (0, 0)), (1, 1), op.groups, op.act), (sub, w, b), name + "/conv")
    _, _, ch, cw = conv.shape
    r2 = g.insert_before(n, O.Reshape((d, d, oc * ch, cw)), (conv,), name + "/b2s_split")
    t2 = g.insert_before(n, O.Transpose((2, 0, 3, 1)), (r2,), name + "/b2s_phase")
    full = g.insert_before(n, O.Reshape((1, oc, ch * d, cw * d)), (t2,), name + "/b2s")
    if (ch * d, cw * d) == (oh, ow):
        return full
    return g.insert_before(n, O.StridedSlice((0, 0, 0, 0), (1, oc, oh, ow), (1, 1, 1, 1)), (full,), name + "/crop")


def eliminate_dilated_conv(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Rewrite every stride-1, batch-1 dilated Conv2D; other convs are left alone. Needs nothing of `ctx`."""
    for n in list(g.nodes):
        if isinstance(n.op, O.Conv2D) and n.op.dilation != (1, 1):
            new = _rewrite(g, n)
            if new is not None:
                g.substitute(n, new, "/dilated")
    g.remove_dead()
    return g
