"""concat_activations: move element-wise ops after a channel concatenation into its producers.

An element-wise op distributes over a concatenation; a per-channel one does too, each part taking
its own channel range of the operand:

    relu(concat(a, b))                      ==   concat(relu(a), relu(b))
    concat(a, b) * s + t  (s, t per channel) ==  concat(a * s[:Ca] + t[:Ca], b * s[Ca:] + t[Ca:])

ulffd_landmark's SSH heads concatenate two convs and apply one ReLU: with the ReLU in the
concatenation's way, the concatenation and the ReLU run in float on the CPU between KPU layers
(copy-out, dequantize, float depthwise 1x1, quantize, upload: about 20 ms of its 57 ms). Moved into the
producers, each producing conv fuses it (a clamp into its `act`, kcc.passes.canonicalize.fuse_clamp;
leaky_relu / logistic / tanh / hard_swish into its KPU activation table, kcc.passes.legalize_kpu;
a per-channel affine op into its weights and bias), and the concatenation of KPU layers can be
computed in place in KPU RAM (kcc.quant.quantize, kcc.emit.storage).

The rewrite is taken only when every part absorbs the op, so it never adds a CPU op: a part absorbs
a clamp if it has a fused clamp of its own (conv, matmul, binary, pool) whose interval overlaps the
new one; an activation table function if it is a conv; an affine op if it is a conv without a clamp.
Each part must be read by the concatenation alone, and the concatenation by the op alone (neither a
graph output). Repeated to a fixpoint, so a chain of such ops moves as a whole. The pipeline runs
it again after decompose_kernels (stage `form_activations`): a decomposed conv's channel groups are
a concatenation too (MobileNetV3's 5x5 depthwise and hard-swish: the function then goes into each
group's last KPU layer instead of running on the CPU).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_values
from kcc.passes.affine import scale_layer

if TYPE_CHECKING:
    from kcc.passes.manager import CompileContext

_HAS_ACT = (O.Conv2D, O.Conv2DTranspose, O.MatMul, O.Binary, O.Pool2D)
#: binary ops with a per-channel constant that a conv folds into its weights and bias (x op c)
_AFFINE = ("add", "sub", "mul")


def concat_activations(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Move every element-wise or per-channel affine op after a channel concatenation into the
    concatenation's parts, where each part absorbs it (module docstring); needs nothing of `ctx`."""
    while _push_one(g):
        g.remove_dead()
    return g


def _push_one(g: Graph) -> bool:
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    for e in g.nodes:
        c = e.inputs[0] if e.inputs else None
        if c is None or not isinstance(c.op, O.Concat) or c.op.axis != 1 or c.type.rank != 4:
            continue
        if id(c) in outputs or len(users[c]) != 1:
            continue
        operand = _operand(e, c)
        if operand is False:
            continue
        parts = c.inputs
        if len({id(p) for p in parts}) != len(parts) or any(
                id(p) in outputs or len(users[p]) != 1 for p in parts):
            continue
        if not all(_absorbs(p, e, operand) for p in parts):
            continue
        _rewrite(g, e, c, operand)
        return True
    return False


def _operand(e: Node, c: Node) -> np.ndarray | None | bool:
    """What `e` applies to its input `c`: None for a one-input element-wise op, the per-channel
    constant of an affine op, or False when `e` is neither."""
    op = e.op
    if isinstance(op, (O.Clamp, O.LeakyRelu)):
        return None
    if isinstance(op, O.Unary) and op.op in KO.KPU_ACTIVATIONS:
        return None
    if isinstance(op, O.Binary) and op.op in _AFFINE and op.act == O.NO_CLAMP and e.inputs[0] is c \
            and e.inputs[1] is not c and e.type == c.type:
        per_c = channel_values(c, e.inputs[1])
        return False if per_c is None else per_c
    return False


def _absorbs(p: Node, e: Node, operand: np.ndarray | None) -> bool:
    """Whether part `p` takes `e` into itself (module docstring)."""
    if isinstance(e.op, O.Clamp):
        if not isinstance(p.op, _HAS_ACT):
            return False
        lo, hi = p.op.act
        return max(lo, e.op.lo) <= min(hi, e.op.hi)
    if not (isinstance(p.op, O.Conv2D) and p.inputs[1].is_constant and p.inputs[2].is_constant):
        return False
    if operand is None:  # a function of the KPU's activation table, fused by legalize_kpu
        return True
    return p.op.act == O.NO_CLAMP


def _rewrite(g: Graph, e: Node, c: Node, operand: np.ndarray | None) -> None:
    """e(concat(parts)) -> concat(e_0(part_0), ...); the concatenation takes e's place and name."""
    at = 0
    new_parts = []
    for p in c.inputs:
        ch = p.shape[1]
        if isinstance(e.op, O.Clamp):
            lo, hi = p.op.act
            p.op = dataclasses.replace(p.op, act=(max(lo, e.op.lo), min(hi, e.op.hi)))
            new_parts.append(p)
        elif operand is None:  # the function as a node of its own, right after the conv
            q = g.add(e.op, (p,), f"{p.name}/{e.op.kind}")
            g.nodes.pop()
            g.nodes.insert(g.nodes.index(p) + 1, q)
            new_parts.append(q)
        else:
            scale_layer(g, p, e.op.op, operand[at:at + ch])
            new_parts.append(p)
        at += ch
    c.inputs = tuple(new_parts)
    g.replace_all_uses(e, c)
    g.nodes.remove(e)  # nothing reads it any more; its name goes to the concatenation
    c.name = e.name
    c.note = c.note or e.note
