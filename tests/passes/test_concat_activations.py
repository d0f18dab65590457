"""concat_activations: element-wise and per-channel affine ops after a channel concatenation move into
its producing convs, with the same float values, and only where every part absorbs them."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.passes.concat_activations import concat_activations

rng = np.random.default_rng(3)


def _const(g, shape):
    return g.constant(rng.uniform(-1, 1, shape).astype(np.float32))


def _conv(g, x, oc, act=O.NO_CLAMP):
    return g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=act), (x, _const(g, (oc, x.shape[1], 3, 3)), _const(g, (oc,))))


def _head(make_tail, parts=(4, 2), act=O.NO_CLAMP):
    """conv, conv -> concat -> tail -> 1x1 conv."""
    g = Graph()
    x = g.input(0, (1, 3, 6, 6))
    c = g.add(O.Concat(1), tuple(_conv(g, x, oc, act) for oc in parts), "concat")
    y = make_tail(g, c)
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (3, sum(parts), 1, 1)), _const(g, (3,))), "head")]
    return g


def _per_channel(g, c):
    return g.constant(rng.uniform(0.5, 2.0, (1, c.shape[1], 1, 1)).astype(np.float32), "v")


TAILS = {
    "relu": lambda g, c: g.add(O.Clamp(0.0, np.inf), (c,), "relu"),
    "relu6_then_leaky": lambda g, c: g.add(O.LeakyRelu(0.1), (g.add(O.Clamp(-1.0, 6.0), (c,), "clamp"),), "leaky"),
    "tanh": lambda g, c: g.add(O.Unary("tanh"), (c,), "tanh"),
    "mul_add_relu": lambda g, c: g.add(O.Clamp(0.0, np.inf), (g.add(O.Binary("add"), (
        g.add(O.Binary("mul"), (c, _per_channel(g, c)), "mul"), _per_channel(g, c)), "add"),), "relu"),
    "sub_scalar": lambda g, c: g.add(O.Binary("sub"), (c, g.constant(np.float32(0.5), "half")), "sub"),
}


@pytest.mark.parametrize("name", sorted(TAILS))
def test_ops_after_a_concat_move_into_the_convs_with_the_same_values(name):
    g = _head(TAILS[name])
    x = [rng.uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32)]
    want = run(g, x)[0]
    last = g.outputs[0].inputs[0].name
    out = concat_activations(g)
    out.verify("test")
    np.testing.assert_allclose(run(out, x)[0], want, rtol=1e-5, atol=1e-5)
    concat = out.outputs[0].inputs[0]
    assert isinstance(concat.op, O.Concat), "the head reads the concatenation directly"
    assert concat.name == last, "the concatenation computes the last op's value, under its name"
    kinds = [type(n.op) for n in out.nodes]
    assert O.Clamp not in kinds and O.Binary not in kinds, kinds  # clamps into act, affine into the weights
    if name in ("relu6_then_leaky", "tanh"):  # one activation per conv, for legalize_kpu to fuse
        fn = O.LeakyRelu if name == "relu6_then_leaky" else O.Unary
        assert all(isinstance(p.op, fn) and isinstance(p.inputs[0].op, O.Conv2D) for p in concat.inputs)


def test_not_moved_when_a_part_cannot_absorb_it():
    """A part that is a CPU op without a clamp of its own (a reshape), a concatenation read by another
    op too, a clamp whose interval misses the conv's, an affine op after a clamped conv: unchanged."""
    def cpu_part():
        g = Graph()
        x = g.input(0, (1, 3, 6, 6))
        c = g.add(O.Concat(1), (_conv(g, x, 4), g.add(O.Reshape((1, 3, 6, 6)), (g.add(O.Unary("abs"), (x,)),))))
        g.outputs = [g.add(O.Clamp(0.0, np.inf), (c,))]
        return g

    def shared_concat():
        g = Graph()
        x = g.input(0, (1, 3, 6, 6))
        c = g.add(O.Concat(1), (_conv(g, x, 4), _conv(g, x, 2)))
        g.outputs = [g.add(O.Clamp(0.0, np.inf), (c,)), c]
        return g

    cases = [cpu_part(), shared_concat(),
             _head(TAILS["relu"], act=(-5.0, -1.0)),
             _head(lambda g, c: g.add(O.Binary("mul"), (c, _per_channel(g, c))), act=(0.0, 6.0))]
    for g in cases:
        before = [(n.name, n.op) for n in g.nodes]
        assert [(n.name, n.op) for n in concat_activations(g).nodes] == before
