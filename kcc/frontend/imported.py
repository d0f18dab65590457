"""What every frontend returns: the IR graph, and a pre-quantized model's own grids."""

from __future__ import annotations

from dataclasses import dataclass

from kcc.frontend.quantization import ModelQuantization
from kcc.ir.graph import Graph


@dataclass
class ImportedModel:
    graph: Graph
    #: the model's own quantization (None for a float model); `.activations` is empty for a
    #: weights-only (dynamic range) model, whose activations still need calibrating
    quantization: ModelQuantization | None
