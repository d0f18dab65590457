"""lower_transpose_conv: zero insertion + flipped-kernel conv computes TRANSPOSE_CONV, on the KPU."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext
from kcc.passes.transpose_conv import lower_transpose_conv


def legalize(g, opts=None):
    """legalize_kpu over a fresh context: (legalized graph, placements)."""
    ctx = CompileContext(opts or CompileOptions())
    return legalize_kpu(g, ctx), ctx.placements


rng = np.random.default_rng(11)


@pytest.mark.parametrize("k,s,pad,h,w", [
    (3, 2, ((1, 1), (1, 1)), 6, 5), (2, 2, ((0, 0), (0, 0)), 4, 4), (3, 1, ((1, 1), (1, 1)), 5, 6),
    (3, 2, ((0, 1), (0, 1)), 4, 4), (1, 2, ((0, 0), (0, 0)), 4, 6),
])
def test_transpose_conv_is_exact_and_on_the_kpu(k, s, pad, h, w):
    oh = (h - 1) * s + k - sum(pad[0])
    ow = (w - 1) * s + k - sum(pad[1])
    g = Graph()
    x = g.input(0, (1, 4, h, w))
    wt = g.constant(rng.uniform(-1, 1, (5, 4, k, k)).astype(np.float32), "w")
    b = g.constant(rng.uniform(-1, 1, 5).astype(np.float32), "b")
    g.outputs = [g.add(O.Conv2DTranspose((1, 5, oh, ow), (s, s), pad, act=(0.0, 6.0)), (x, wt, b), "up")]
    xi = rng.uniform(-1, 1, (1, 4, h, w)).astype(np.float32)
    want = run(g, [xi])[0]
    g = lower_transpose_conv(g)
    g.verify("lower_transpose_conv")
    assert not any(isinstance(n.op, O.Conv2DTranspose) for n in g.nodes) and g.outputs[0].name == "up"
    np.testing.assert_allclose(run(g, [xi])[0], want, rtol=1e-5, atol=1e-5)
    lg, placements = legalize(g)
    assert placements[0].on_kpu
    np.testing.assert_allclose(run(lg, [xi])[0], want, rtol=1e-5, atol=1e-5)
