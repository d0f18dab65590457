"""What every frontend returns: the IR graph, and a pre-quantized model's own grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kcc.errors import ModelFormatError
from kcc.frontend.quantization import ModelQuantization
from kcc.ir.graph import Graph


@dataclass
class ImportedModel:
    graph: Graph
    #: the model's own quantization (None for a float model); `.activations` is empty for a
    #: weights-only (dynamic range) model, whose activations still need calibrating
    quantization: ModelQuantization | None


def read_source(source: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> tuple[bytes, str]:
    """A model's bytes and the label its errors use: the file's name, or `name`."""
    if isinstance(source, (str, Path)):
        label = name or Path(source).name
        try:
            return Path(source).read_bytes(), label
        except OSError as e:
            raise ModelFormatError(f"{label}: cannot read model file: {e.strerror or e}") from None
    return bytes(source), name or "<model bytes>"
