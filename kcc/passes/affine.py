"""Per-channel multiply / add / subtract folded into the linear layer that computes its operand.

A conv, transposed conv or matmul with constant weights and no fused activation, followed by a
`Binary(mul | add | sub)` with a constant that varies along its output channels only, is the same
layer with other weights: w' = w * a, b' = b * a + c. Caffe and ONNX keep batch normalisation as such
ops (BatchNorm + Scale, BatchNormalization), TFLite converters have already folded it, and the KPU
computes a layer as conv + one per-channel multiply-add, so kcc folds it once, in canonicalize, for
every frontend (`fold_affine`). `scale_layer` is the folding itself, also used where an op is moved
into the producers of a concatenation (kcc.passes.concat_activations). The products are taken in
float64 and rounded once to float32.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

LINEAR = (O.Conv2D, O.Conv2DTranspose, O.MatMul)


def channel_operand(layer: Node, c: Node) -> np.ndarray | None:
    """The value per output channel of `layer` of constant `c` broadcast against its output, when `c`
    varies along those channels only (axis 1 of a map, the last axis of a matmul); else None."""
    if not c.is_constant:
        return None
    axis = layer.type.rank - 1 if isinstance(layer.op, O.MatMul) else 1
    try:
        full = np.broadcast_to(c.data, layer.shape)
    except ValueError:
        return None
    index = tuple(slice(None) if k == axis else 0 for k in range(full.ndim))
    per_c = np.ascontiguousarray(full[index], np.float32)
    shape = [1] * full.ndim
    shape[axis] = per_c.size
    return per_c if np.array_equal(full, np.broadcast_to(per_c.reshape(shape), full.shape)) else None


def scale_layer(g: Graph, layer: Node, kind: str, v: np.ndarray) -> None:
    """layer `kind` v (kind mul, add or sub; v per output channel) becomes new constant weights and bias
    of `layer` itself (its old constants are left to remove_dead: they may be shared)."""
    w, b = layer.inputs[1].data.astype(np.float64), layer.inputs[2].data.astype(np.float64)
    v = np.asarray(v, np.float64)
    if kind == "mul":
        w = w * (v[None, :] if isinstance(layer.op, O.MatMul) else v.reshape(-1, *([1] * (w.ndim - 1))))
        b = b * v
    else:
        b = b + v if kind == "add" else b - v
    wn = g.insert_before(layer, O.Constant(w.astype(np.float32)), (), layer.inputs[1].name + "/folded")
    bn = g.insert_before(layer, O.Constant(b.astype(np.float32)), (), layer.inputs[2].name + "/folded")
    layer.inputs = (layer.inputs[0], wn, bn)


def foldable_layer(layer: Node) -> bool:
    """A linear layer whose output a per-channel affine op can be folded into."""
    return (isinstance(layer.op, LINEAR) and layer.op.act == O.NO_CLAMP
            and all(i.is_constant for i in layer.inputs[1:3]) and len(layer.inputs) == 3)


def fold_affine(g: Graph) -> Graph:
    """Fold every per-channel mul / add / sub of a linear layer's output read by that op alone (with the
    op's fused clamp, if any)."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    for n in list(g.nodes):
        op = n.op
        if not (isinstance(op, O.Binary) and op.op in ("mul", "add", "sub")):
            continue
        x, c = n.inputs
        if op.op != "sub" and not c.is_constant:
            x, c = c, x
        if not (foldable_layer(x) and len(users.get(x, ())) == 1 and id(x) not in outputs and n.shape == x.shape):
            continue
        v = channel_operand(x, c)
        if v is None:
            continue
        scale_layer(g, x, op.op, v)
        if op.act != O.NO_CLAMP:  # a clamp fused into the op (canonicalize's fuse_clamp) moves along
            x.op = dataclasses.replace(x.op, act=op.act)
        g.substitute(n, x, "/folded")
        users = g.users()
    return g
