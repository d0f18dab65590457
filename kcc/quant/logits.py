"""Ranges for logits: tensors that reach a model output through a softmax.

A softmax only sees differences from the largest logit, and a logit more than LOGIT_SPAN below it
contributes e^-LOGIT_SPAN ~ 1e-7 of probability. Quantizing the whole observed logit range wastes
most of the 256 levels on such values; a ImageNet MobileNet's logits span ~28, giving a 0.11 step
that merges the top two classes of close calls. kcc therefore quantizes logits over
[min over samples of the per-sample maximum - LOGIT_SPAN, observed maximum].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.quant.calibrate import Samples, run_observer

LOGIT_SPAN = 16.0
_TRANSPARENT = (O.Reshape, O.Transpose, O.StridedSlice, O.Pad, KO.Dequantize)


def softmax_logits(g: Graph) -> list[Node]:
    """KPU layers whose output reaches a Softmax through data-movement ops only."""
    found = []
    for n in g.nodes:
        if not isinstance(n.op, O.Softmax):
            continue
        src = n.inputs[0]
        while isinstance(src.op, _TRANSPARENT):
            src = src.inputs[0]
        if isinstance(src.op, KO.KpuConv2D):
            found.append(src)
    return found


class _PerSampleMax:
    def __init__(self) -> None:
        self.lowest_max: dict[str, float] = {}
        self.highest: dict[str, float] = {}

    def observe(self, name: str, value: np.ndarray) -> None:
        m = float(np.max(value))
        self.lowest_max[name] = min(self.lowest_max.get(name, np.inf), m)
        self.highest[name] = max(self.highest.get(name, -np.inf), m)


def logit_ranges(view: Graph, samples: Samples, logits: Sequence[Node]) -> dict[str, tuple[float, float]]:
    if not logits:
        return {}
    obs = _PerSampleMax()
    run_observer(view, samples, logits, obs)
    return {n.name: (obs.lowest_max[n.name] - LOGIT_SPAN, obs.highest[n.name]) for n in logits}
