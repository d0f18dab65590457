"""eliminate_dilated_conv: space-to-batch + plain conv + batch-to-space computes the dilated conv."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.dilated_conv import eliminate_dilated_conv
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext


def legalize(g, opts=None):
    """legalize_kpu over a fresh context: (legalized graph, placements)."""
    ctx = CompileContext(opts or CompileOptions())
    return legalize_kpu(g, ctx), ctx.placements


rng = np.random.default_rng(3)


@pytest.mark.parametrize("d,h,w,pad,groups", [
    (2, 9, 10, ((2, 2), (2, 2)), 1), (4, 33, 33, ((4, 4), (4, 4)), 6), (2, 8, 8, ((0, 0), (0, 0)), 1),
    (3, 11, 7, ((3, 2), (1, 3)), 6),
])
def test_dilated_conv_is_exact_and_goes_to_the_kpu(d, h, w, pad, groups):
    g = Graph()
    x = g.input(0, (1, 6, h, w))
    wt = g.constant(rng.uniform(-1, 1, (6, 6 // groups, 3, 3)).astype(np.float32), "w")
    b = g.constant(rng.uniform(-1, 1, 6).astype(np.float32), "b")
    g.outputs = [g.add(O.Conv2D((1, 1), pad, (d, d), groups, (0.0, 6.0)), (x, wt, b), "conv")]
    xi = rng.uniform(-1, 1, (1, 6, h, w)).astype(np.float32)
    want = run(g, [xi])[0]
    g = eliminate_dilated_conv(g)
    g.verify("eliminate_dilated_conv")
    assert not any(isinstance(n.op, O.Conv2D) and n.op.dilation != (1, 1) for n in g.nodes)
    assert g.outputs[0].name == "conv"
    np.testing.assert_allclose(run(g, [xi])[0], want, rtol=1e-5, atol=1e-5)
    lg, placements = legalize(g)
    assert placements[0].on_kpu
    np.testing.assert_allclose(run(lg, [xi])[0], want, rtol=1e-5, atol=1e-5)
