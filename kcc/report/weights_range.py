"""`--dump-weights-range`: the weight range of every convolution / fully-connected layer, as ncc prints it.

ncc writes `name{min, max}` per conv2d so that users can pick `--weights-quantize-threshold`
(ecosystem.md §2 P11): a layer whose range exceeds it stays a float conv on the CPU. kcc prints
the same lines, read from the canonical float graph (before any KPU mapping), for conv2d,
transpose conv and matmul (FULLY_CONNECTED) nodes with constant weights.
"""

from __future__ import annotations

from kcc.ir import ops as O
from kcc.ir.graph import Graph

WeightRange = tuple[str, float, float]


def weights_ranges(g: Graph) -> list[WeightRange]:
    """(node name, min, max) of the constant weights of each conv / fc node, in graph order."""
    out: list[WeightRange] = []
    for n in g.nodes:
        if isinstance(n.op, (O.Conv2D, O.Conv2DTranspose, O.MatMul)) and len(n.inputs) > 1 and n.inputs[1].is_constant:
            w = n.inputs[1].data
            if w.size:
                out.append((n.name, float(w.min()), float(w.max())))
    return out


def format_weights_range(item: WeightRange) -> str:
    """ncc's line: `name{min, max}` (C++ stream formatting: 6 significant digits)."""
    name, lo, hi = item
    return f"{name}{{{lo:.6g}, {hi:.6g}}}"
