"""kcc/ir/printer.py: the text form (`--dump-ir`'s NN-<stage>.txt, the golden IR of
tests/passes/test_golden_ir.py) and the Graphviz form (NN-<stage>.dot)."""

from __future__ import annotations

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.ir.printer import format_graph, format_node, op_label, to_dot


def _graph() -> Graph:
    g = Graph()
    x = g.input(0, (1, 2, 4, 4))
    w = g.constant(np.ones((3, 2, 1, 1), np.float32), "w")
    b = g.constant(np.zeros(3, np.float32), "b")
    c = g.add(O.Conv2D(act=(0.0, float("inf"))), (x, w, b), "conv", note="on the KPU")
    g.outputs = [g.add(O.Clamp(-1.5, 1e-7), (c,), "clip")]
    return g


def test_one_line_per_node_and_constants_only_when_asked():
    g = _graph()
    assert format_graph(g) == (
        "%input = input[index=0]() : f32[1,2,4,4]\n"
        "%conv = conv2d[stride=(1, 1) padding=((0, 0), (0, 0)) dilation=(1, 1) groups=1 act=(0, inf)]"
        "(%input, %w, %b) : f32[1,3,4,4]  # on the KPU\n"
        "%clip = clamp[lo=-1.5 hi=1e-07](%conv) : f32[1,3,4,4]\n"
        "return %clip\n")
    assert "%w = const" in format_graph(g, constants=True)
    assert format_node(g.find("b")) == "%b = const[value=[0.0, 0.0, 0.0]]() : f32[3]"


def test_an_unclamped_act_is_not_printed():
    assert op_label(O.Conv2D()) == "conv2d[stride=(1, 1) padding=((0, 0), (0, 0)) dilation=(1, 1) groups=1]"
    assert op_label(O.Reshape((6,))) == "reshape[shape=(6,)]"  # a one-tuple keeps its comma
    assert op_label(O.Softmax(1)) == "softmax[axis=1 beta=1]"


def test_dot_has_a_box_per_node_an_edge_per_use_and_the_outputs():
    dot = to_dot(_graph(), 'a "title"')
    assert dot.startswith('digraph "a \\"title\\"" {') and dot.endswith("}\n")
    assert dot.count("[label=") == 3 + 2 + 1  # input, conv, clip; two data edges; one output
    assert "w: f32[3,2,1,1]" in dot  # constants fold into their reader's label
    assert "n0 -> n3" in dot and "n3 -> n4" in dot and "n4 -> out0" in dot
