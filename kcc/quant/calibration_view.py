"""The graph calibration observes and the tensors whose ranges kcc.quant.quantize needs.

Calibration (kcc.quant.policy) measures ranges on the legalized float graph without editing it: the
view adds, as extra outputs, what the graph does not compute by itself (a layer's input to its
activation function), and names every point whose range quantize reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.passes.kernel_cost import uint8_conv
from kcc.passes.prelu_tables import uint8_prelu
from kcc.quant.cpu_binary import uint8_binary
from kcc.quant.cpu_matmul import uint8_matmul

PRE_ACTIVATION = "/pre_act"  # the suffix of a pre-activation point's name (a name only: see CalibrationView)


@dataclass(frozen=True)
class CalibrationView:
    """The graph to calibrate and the nodes whose ranges `quantize` needs (`calibration_view`)."""

    graph: Graph
    points: list[Node]
    #: KPU layer name -> name of the point that measures its pre-activation range (a key of the ranges)
    pre_activations: dict[str, str] = field(default_factory=dict)


def calibration_view(g: Graph) -> CalibrationView:
    """The graph to calibrate, and the nodes whose ranges `quantize` needs.

    A layer with a fused function f also needs the range of its input to f (what the activation
    table reads): the view is a new graph over g's nodes that adds, as extra outputs, the same layer
    without f and without pool, and links each layer to it by name (`pre_activations`). `g` itself
    is left as it is (its node list, outputs and names)."""
    view = Graph(list(g.nodes), list(g.outputs), {n.name for n in g.nodes})
    points: dict[int, Node] = {}
    pre_activations: dict[str, str] = {}
    for n in g.nodes:
        if isinstance(n.op, KO.FloatKpuConv):
            points[id(n)] = n
            points[id(n.inputs[0])] = n.inputs[0]
            x = n.inputs[0]
            if isinstance(x.op, O.Pad) and isinstance(x.inputs[0].op, O.Concat):  # a gap (kcc.passes.gap_pick)
                points[id(x.inputs[0])] = x.inputs[0]
            if n.op.fn is not None:
                pre = view.add(KO.FloatKpuConv(n.op.kernel, n.op.depthwise, "bypass", n.op.act, None), n.inputs,
                               n.name + PRE_ACTIVATION)
                view.outputs.append(pre)
                points[id(pre)] = pre
                pre_activations[n.name] = pre.name
        elif isinstance(n.op, KO.KpuBatchStack):  # each group its own grid (policy.share_batch_zero_points)
            points.update((id(p), p) for p in n.inputs)
        elif isinstance(n.op, (O.Input, O.Pool2D)):  # a pool's range decides if it runs on codes
            points[id(n)] = n
        elif uint8_matmul(n) or uint8_conv(n):  # uint8 on the CPU: reads and writes grids (kcc.quant.cpu_*)
            points[id(n)] = n
            points[id(n.inputs[0])] = n.inputs[0]
        elif uint8_prelu(n):  # a table from its input's grid to its own (kcc.quant.cpu_table)
            points[id(n)] = n
            points[id(n.inputs[0])] = n.inputs[0]
        elif uint8_binary(n):  # and a broadcast operand's grid (a gate's), quantized for it
            points[id(n)] = n
            points.update((id(i), i) for i in n.inputs if i.type.size < n.type.size)
        elif isinstance(n.op, O.Concat) and any(isinstance(i.op, KO.FloatKpuConv) for i in n.inputs):
            # a CPU conv among KPU layers may be uploaded into its range (policy.share_concat_grids)
            points.update((id(i), i) for i in n.inputs if isinstance(i.op, O.Conv2D))
    return CalibrationView(view, list(points.values()), pre_activations)
