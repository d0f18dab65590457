"""grouped_as_dense: grouped and channel-multiplier depthwise convs as dense ones with block-diagonal
weights, for the KPU (which convolves densely or one channel per channel)."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.grouped_conv import GROUPED_DENSE_BYTES, grouped_as_dense
from kcc.passes.manager import CompileContext

rng = np.random.default_rng(12)


def _conv(c, oc, groups, k=3, hw=12):
    g = Graph()
    x = g.input(0, (1, c, hw, hw))
    w = g.constant(rng.uniform(-1, 1, (oc, c // groups, k, k)).astype(np.float32))
    b = g.constant(rng.uniform(-1, 1, oc).astype(np.float32))
    g.outputs = [g.add(O.Conv2D((1, 1), ((k // 2, k // 2), (k // 2, k // 2)), groups=groups, act=(0.0, 6.0)),
                       (x, w, b), "conv")]
    return g


@pytest.mark.parametrize("c,oc,groups", [(16, 32, 16), (12, 24, 4), (8, 8, 2)])
def test_a_grouped_conv_becomes_dense_with_the_same_values(c, oc, groups):
    """A depthwise conv with multiplier 2, a 4-group conv and a 2-group one: one dense conv each,
    its weights zero outside each output channel's group, equal in float."""
    g = _conv(c, oc, groups)
    out = grouped_as_dense(g, CompileContext())
    (conv,) = [n for n in out.nodes if isinstance(n.op, O.Conv2D)]
    assert conv.op.groups == 1 and conv.inputs[1].shape == (oc, c, 3, 3)
    w = conv.inputs[1].data
    for o in range(oc):  # the block-diagonal pattern: output o reads its group's channels only
        group = o // (oc // groups)
        outside = np.delete(np.arange(c), np.arange(group * (c // groups), (group + 1) * (c // groups)))
        assert not np.any(w[o, outside])
    x = rng.uniform(-1, 1, (1, c, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(run(out, [x])[0], run(g, [x])[0], rtol=1e-5, atol=1e-5)


def test_dense_and_depthwise_convs_large_groups_and_the_cpu_target_stay():
    for g in (_conv(8, 8, 1), _conv(8, 8, 8)):  # the KPU's own kinds
        assert grouped_as_dense(g, CompileContext()) is g
    big = _conv(96, 96, 2)  # dense 96 x 96 x 9 = 83 KiB > GROUPED_DENSE_BYTES
    assert 96 * 96 * 9 > GROUPED_DENSE_BYTES
    assert [n.op.groups for n in grouped_as_dense(big, CompileContext()).nodes if isinstance(n.op, O.Conv2D)] == [2]
    small = _conv(16, 32, 16)
    assert grouped_as_dense(small, CompileContext(CompileOptions(target="cpu"))) is small
