"""kcc/ir/graph.py: building (names, types), editing (uses, dead nodes, order) and `verify`, which
every stage's output goes through (kcc.passes.manager)."""

from __future__ import annotations

import numpy as np
import pytest

from kcc.errors import VerifyError
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.ir.types import DType


def _chain() -> Graph:
    """x -> exp -> neg (output), and a dead tanh of x."""
    g = Graph()
    x = g.input(0, (1, 2, 3))
    e = g.add(O.Unary("exp"), (x,), "e")
    g.add(O.Unary("tanh"), (x,), "dead")
    g.outputs = [g.add(O.Unary("neg"), (e,), "y")]
    return g


def test_names_are_made_unique_and_types_inferred():
    g = Graph()
    x = g.input(0, (1, 4, 4, 2))
    a, b = g.add(O.Unary("exp"), (x,), "a"), g.add(O.Unary("exp"), (x,), "a")
    c = g.add(O.Unary("exp"), (x,))  # no name: the op's kind
    assert [a.name, b.name, c.name] == ["a", "a_1", "unary"]
    t = g.add(O.Transpose((0, 3, 1, 2)), (a,), "t")
    assert t.shape == (1, 2, 4, 4) and t.dtype is DType.float32
    assert g.constant(np.zeros((3,), np.uint8), "k").dtype is DType.uint8


def test_users_count_every_use_and_inputs_follow_their_index():
    g = Graph()
    x1, x0 = g.input(1, (2,), name="x1"), g.input(0, (2,), name="x0")
    s = g.add(O.Binary("add"), (x0, x0), "s")
    g.outputs = [g.add(O.Binary("mul"), (s, x1), "y")]
    assert g.inputs == [x0, x1]
    assert [u.name for u in g.users()[x0]] == ["s", "s"]
    assert g.find("y") is g.outputs[0]
    with pytest.raises(KeyError):
        g.find("nothing")


def test_replace_all_uses_keeps_the_new_nodes_own_input():
    g = _chain()
    e = g.find("e")
    wrapped = g.insert_before(g.find("y"), O.Clamp(0.0, 1.0), (e,), "clip")
    g.replace_all_uses(e, wrapped)
    assert g.find("y").inputs == (wrapped,) and wrapped.inputs == (e,)
    assert [n.name for n in g.nodes] == ["input", "e", "dead", "clip", "y"]
    g.verify("test")


def test_substitute_hands_the_name_over():
    g = _chain()
    y = g.find("y")
    z = g.add(O.Unary("abs"), (g.find("e"),), "tmp")
    g.substitute(y, z, "/retired")
    assert g.outputs == [z] and z.name == "y" and y.name == "y/retired"
    assert g.unique_name("y") == "y_1"


def test_remove_dead_keeps_the_graph_inputs():
    g = Graph()
    x = g.input(0, (2,))
    g.input(1, (2,), name="unused")
    g.add(O.Unary("exp"), (x,), "dead")
    g.outputs = [g.add(O.Unary("neg"), (x,), "y")]
    assert g.remove_dead() == 1
    assert [n.name for n in g.nodes] == ["input", "unused", "y"] and g.unique_name("dead") == "dead"


def test_sort_restores_topological_order_and_keeps_a_valid_one():
    g = _chain()
    valid = list(g.nodes)
    g.sort()
    assert g.nodes == valid
    g.nodes.reverse()
    with pytest.raises(VerifyError, match="before it is defined"):
        g.verify()
    g.sort()
    g.verify()
    order = [n.name for n in g.nodes]
    assert order.index("input") < order.index("e") < order.index("y")


@pytest.mark.parametrize("break_it, message", [
    (lambda g: g.nodes.append(g.nodes[1]), "duplicate node name %e"),
    (lambda g: setattr(g.find("y"), "inputs", (g.find("y"),)), "%y uses %y before it is defined"),
    (lambda g: setattr(g.find("e"), "op", O.Reshape((6,))), "%e has type f32"),
    (lambda g: setattr(g.find("e"), "op", O.Reshape((7,))), "%e = reshape: "),
    (lambda g: g.input(0, (1,), name="again"), "two graph inputs with index 0"),
    (lambda g: g.input(2, (1,), name="gap"), r"graph input indices \[0, 2\] are not 0..n-1"),
    (lambda g: g.outputs.append(Graph().input(0, (1,))), "graph output %input is not a node of the graph"),
])
def test_verify_names_the_stage_and_the_first_bad_node(break_it, message):
    g = _chain()
    g.verify("build")
    break_it(g)
    with pytest.raises(VerifyError, match=r"^IR verify after stage 'broken': .*" + message):
        g.verify("broken")
