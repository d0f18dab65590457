"""Small graphs of one convolution and legalize_kpu over a fresh context, for the pass tests of
decompose_kernels and its forms (tests/passes)."""

from __future__ import annotations

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext


def legalize(g, opts=None):
    """legalize_kpu over a fresh context: (legalized graph, placements)."""
    ctx = CompileContext(opts or CompileOptions())
    return legalize_kpu(g, ctx), ctx.placements


def conv_graph(rng, c, oc, h, w, kh, kw, stride, pad, groups=1, act=(0.0, 6.0), wscale=1.0) -> Graph:
    """x [1, c, h, w] -> Conv2D 'conv' (weights and bias uniform in [-1, 1) from `rng`, times wscale)."""
    g = Graph()
    x = g.input(0, (1, c, h, w))
    wt = g.constant((wscale * rng.uniform(-1, 1, (oc, c // groups, kh, kw))).astype(np.float32), "w")
    b = g.constant(rng.uniform(-1, 1, oc).astype(np.float32), "b")
    g.outputs = [g.add(O.Conv2D(stride, pad, (1, 1), groups, act), (x, wt, b), "conv")]
    g.verify()
    return g


def parts_read_by_a_residual_stack(rng, c: int, size: int) -> Graph:
    """What kcc.passes.part_groups leaves of a conv in four parts (clamped to y <= -0.3 shifted,
    [-0.3, 0], [0, 0.3], y >= 0.3 shifted), alpha times the low ones (%neg), read by a 5x5 depthwise's
    residual stack_kpu (%s0..%s8 the shifted copies of %prelu, %r0..%r8 those of its residual, %dw
    their stacked conv) and by an add: kcc.passes.parts_stack's case, c channels of size x size."""
    from kcc.ir import kpu_ops as KO
    from kcc.passes.kernel_forms import shift_weights

    g = Graph()
    x = g.input(0, (1, 3, size, size))
    w = g.constant(rng.uniform(-0.5, 0.5, (c, 3, 3, 3)).astype(np.float32), "w")
    parts = [g.add(O.Conv2D(padding=((1, 1), (1, 1)), act=act), (x, w, g.constant(np.full(c, b, np.float32), f"b{i}")),
                   f"part{i}")
             for i, (act, b) in enumerate([((-np.inf, 0.0), 0.3), ((-0.3, 0.0), 0.0), ((0.0, 0.3), 0.0), ((0.0, np.inf), -0.3)])]
    alpha = g.constant(rng.uniform(-1.5, 1.5, (1, c, 1, 1)).astype(np.float32), "alpha")
    neg = g.add(O.Binary("mul"), (g.add(O.Binary("add"), parts[:2], "low"), alpha), "neg")
    y = g.add(O.Binary("add"), (g.add(O.Binary("add"), (neg, parts[2]), "s1"), parts[3]), "prelu")
    zero = g.constant(np.zeros(c, np.float32), "zero")
    shifts = [(cy, cx) for cy in (-1, 0, 1) for cx in (-1, 0, 1)]
    lost = g.add(KO.QuantResidual(16.0), (y,), "residual")
    views = [g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), (1, 1), c), (src, g.constant(shift_weights(c, s), f"{tag}w{k}"), zero),
                   f"{tag}{k}") for src, tag in ((lost, "r"), (y, "s")) for k, s in enumerate(shifts)]
    ws = np.zeros((c, 9 * c, 3, 3), np.float32)
    for v in range(9):
        ws[np.arange(c), v * c + np.arange(c)] = rng.uniform(-0.4, 0.4, (c, 3, 3))
    dw = g.add(O.Conv2D(padding=((1, 1), (1, 1))), (g.add(O.Concat(1), tuple(views), "stack"),
                                                    g.constant(np.concatenate([ws / 16, ws], axis=1), "ws"),
                                                    g.constant(np.zeros(c, np.float32), "bs")), "dw")
    g.outputs = [g.add(O.Binary("add"), (y, dw), "add")]
    return g
