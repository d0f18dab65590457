"""grouped_as_dense: a grouped convolution as the dense one with block-diagonal weights (issue #16).

The KPU convolves densely or depthwise, one input channel per output channel (kpu_semantics.md §3,
kmodel_v4.md §9.3 `depth_wise_layer`). A conv of 1 < groups < C channels (ResNeXt's, ShuffleNet's) or
a depthwise one with a channel multiplier (Keras' `DepthwiseConv2D(depth_multiplier=2)`) is neither,
and legalize_kpu leaves it to the CPU in float: ~64 cycles a multiply-accumulate, 578 ms for a
16 -> 32 channel 3x3 at 112x112. As a dense conv its output channel o reads every input channel
with weight 0 outside its group: the same values in float, and on the KPU, where 0 is exact on any
uint8 weight grid (the grid's range always holds 0, kcc.target.quant_rules.fixup_range), the same
layer as any other. The dense weights take `groups` times the bytes (C x OC x k x k), so only up to
GROUPED_DENSE_BYTES; a larger grouped conv stays on the CPU with legalize_kpu's reason. K210 path
only: the CPU's own grouped kernel does fewer multiply-accumulates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, copy_rewriting, depthwise_conv
from kcc.passes.manager import CompileContext

#: most kmodel bytes (uint8 weights) the dense form of a grouped conv may take: a 3x3 over 84 input
#: and 84 output channels (MobileNet's 16 -> 32 depthwise-multiplier-2 layer takes 4.6 KiB)
GROUPED_DENSE_BYTES = 64 * 1024


def grouped(n: Node) -> bool:
    """n is a conv with constant weights that is neither dense nor depthwise (one channel each)."""
    return (isinstance(n.op, O.Conv2D) and n.op.groups != 1 and n.inputs[1].is_constant
            and not depthwise_conv(n))


def dense_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """[OC, C/groups, k, k] grouped weights as [OC, C, k, k] block-diagonal ones."""
    oc, icg = w.shape[:2]
    ocg = oc // groups
    dense = np.zeros((oc, icg * groups, *w.shape[2:]), w.dtype)
    for gi in range(groups):
        dense[gi * ocg:(gi + 1) * ocg, gi * icg:(gi + 1) * icg] = w[gi * ocg:(gi + 1) * ocg]
    return dense


def grouped_as_dense(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Rewrite every grouped conv whose dense weights take at most GROUPED_DENSE_BYTES (module docstring)."""
    ctx = ctx or CompileContext()
    if ctx.options.target == "cpu" or not any(grouped(n) for n in g.nodes):
        return g
    out, mapping = Graph(), {}

    def rewrite(n: Node) -> Node | None:
        if not grouped(n) or n.inputs[0].shape[1] * n.inputs[1].type.size > GROUPED_DENSE_BYTES:
            return None
        x, w, b = n.inputs
        dense = out.constant(dense_weights(w.data, n.op.groups), w.name + "/dense")
        return out.add(dataclasses.replace(n.op, groups=1), (mapping[id(x)], dense, mapping[id(b)]), n.name, n.note)

    return copy_rewriting(g, out, mapping, rewrite)
