"""Text and Graphviz forms of the IR: the main debugging tool (`--dump-ir`).

One line per node, e.g.
    %conv1 = conv2d[stride=(2, 2) padding=((0, 1), (0, 1)) act=(0, 6)](%input, %w, %b) : f32[1,8,64,64]
"""

from __future__ import annotations

import math

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if hasattr(v, "name") and hasattr(v, "value"):  # enums
        return str(v.name)
    return str(v)


def op_label(op: O.Op) -> str:
    attrs = op.attrs()
    if "act" in attrs and attrs["act"] == O.NO_CLAMP:
        del attrs["act"]
    if attrs.get("floor_bias", 0.0) is None:  # a KPU layer's (kcc.ir.kpu_ops.FloatKpuConv), rarely set
        del attrs["floor_bias"]
    inner = " ".join(f"{k}={_fmt(v)}" for k, v in attrs.items())
    return f"{op.kind}[{inner}]" if inner else op.kind


def format_node(n: Node) -> str:
    args = ", ".join(f"%{i.name}" for i in n.inputs)
    line = f"%{n.name} = {op_label(n.op)}({args}) : {n.type}"
    return f"{line}  # {n.note}" if n.note else line


def format_graph(g: Graph, *, constants: bool = False) -> str:
    """The graph as text; constants are listed only when asked (they are visible as operands)."""
    lines = [format_node(n) for n in g.nodes if constants or not n.is_constant]
    lines.append("return " + ", ".join(f"%{o.name}" for o in g.outputs))
    return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(g: Graph, title: str = "kcc") -> str:
    """Graphviz source: one box per node (constants folded into their consumer's label)."""
    ids = {id(n): f"n{i}" for i, n in enumerate(g.nodes)}
    out = [f"digraph {_q(title)} {{", "  node [shape=box, fontname=monospace, fontsize=10];"]
    for n in g.nodes:
        if n.is_constant:
            continue
        consts = [f"{c.name}: {c.type}" for c in n.inputs if c.is_constant]
        label = "\\n".join([n.name, op_label(n.op), str(n.type), *consts])
        style = ", style=filled, fillcolor=lightblue" if isinstance(n.op, O.Input) else ""
        out.append(f"  {ids[id(n)]} [label={_q(label)}{style}];")
    for n in g.nodes:
        for i in n.inputs:
            if not i.is_constant:
                out.append(f"  {ids[id(i)]} -> {ids[id(n)]} [label={_q(str(i.type))}];")
    for k, o in enumerate(g.outputs):
        out.append(f"  out{k} [label={_q('output ' + str(k))}, shape=ellipse];")
        out.append(f"  {ids[id(o)]} -> out{k};")
    out.append("}")
    return "\n".join(out) + "\n"
