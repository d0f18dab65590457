"""Merge per-channel affine layers (BatchNorm, Scale) into the convolution they follow.

Caffe keeps batch normalisation as separate BatchNorm + Scale layers at inference; TFLite converters
fold it into the convolution, and the KPU computes a layer as conv + one per-channel multiply-add,
so kcc folds it here: a `Binary(mul|add)` whose operands are a Conv2D / Conv2DTranspose without a
fused activation, read by nothing else, and a constant that varies along channels only becomes the
convolution's weights and bias (w' = w*a, b' = b*a; b' = b + c). The result is the same function up
to float rounding (one product instead of two).
"""

from __future__ import annotations

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_values

_CONVS = (O.Conv2D, O.Conv2DTranspose)


def fold_affine(graph: Graph) -> int:
    """Fold every foldable per-channel mul/add into its convolution; returns how many were folded."""
    folded = 0
    while True:
        users = graph.users()
        outputs = {id(o) for o in graph.outputs}
        found = next(((node, conv) for node in graph.nodes
                      if (conv := _foldable(node, users, outputs)) is not None), None)
        if found is None:
            return folded
        _fold(graph, *found)
        graph.remove_dead()  # the folded node and the old weights: the conv's only reader is gone
        folded += 1


def _foldable(node: Node, users: dict[Node, list[Node]], outputs: set[int]) -> Node | None:
    op = node.op
    if not (isinstance(op, O.Binary) and op.op in ("mul", "add") and op.act == O.NO_CLAMP):
        return None
    x, c = node.inputs
    if not c.is_constant:
        x, c = c, x
    if not (isinstance(x.op, _CONVS) and x.op.act == O.NO_CLAMP and c.is_constant):
        return None
    w, b = x.inputs[1], x.inputs[2]
    if not (w.is_constant and b.is_constant) or len(users[x]) != 1 or id(x) in outputs:
        return None
    if node.shape != x.shape or channel_values(x, c) is None:
        return None
    return x


def _fold(graph: Graph, node: Node, conv: Node) -> None:
    c = node.inputs[1] if node.inputs[0] is conv else node.inputs[0]
    per_c = channel_values(conv, c).astype(np.float64)
    w, b = conv.inputs[1].data.astype(np.float64), conv.inputs[2].data.astype(np.float64)
    if node.op.op == "mul":
        w, b = w * per_c[:, None, None, None], b * per_c
    else:
        b = b + per_c
    new_w = graph.insert_before(conv, O.Constant(w.astype(np.float32)), (), f"{node.name}/weights")
    new_b = graph.insert_before(conv, O.Constant(b.astype(np.float32)), (), f"{node.name}/bias")
    conv.inputs = (conv.inputs[0], new_w, new_b)
    graph.substitute(node, conv, "/folded")
