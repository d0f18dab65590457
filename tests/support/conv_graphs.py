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
