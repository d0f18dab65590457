"""What a layer importer sees: the IR graph under construction, the blobs by name, the layer's weights.

Caffe and the IR are both NCHW, so no layout changes are added. `ImportContext.values` maps a Caffe
blob name to the IR node holding its current value; an in-place layer (top == bottom) simply
rebinds the name, as Caffe overwrites the blob.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from kcc.errors import ModelFormatError, UnsupportedModelError
from kcc.frontend.caffe.reader import CaffeNet
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

ImportResult = Union[Node, Sequence[Node]]


class ImportContext:
    """Per-model state shared by the importer functions of `kcc.frontend.caffe.ops`."""

    def __init__(self, net: CaffeNet, graph: Graph):
        self.net = net
        self.graph = graph
        self.values: dict[str, Node] = {}

    # ------------------------------------------------------------------ errors
    def where(self, layer) -> str:
        return f"{self.net.prototxt or self.net.name}: {layer.type} '{layer.name}'"

    def unsupported(self, layer, reason: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.where(layer)}: {reason}")

    def bad(self, layer, reason: str) -> ModelFormatError:
        return ModelFormatError(f"{self.where(layer)}: {reason}")

    # ------------------------------------------------------------------ inputs and weights
    def input(self, layer, i: int = 0) -> Node:
        if i >= len(layer.bottom):
            raise self.bad(layer, f"needs at least {i + 1} bottom blob(s), has {len(layer.bottom)}")
        name = layer.bottom[i]
        if name not in self.values:
            raise self.bad(layer, f"bottom blob '{name}' is not produced by an earlier layer or a net input")
        return self.values[name]

    def inputs(self, layer) -> list[Node]:
        return [self.input(layer, i) for i in range(len(layer.bottom))]

    def input_4d(self, layer) -> Node:
        x = self.input(layer, 0)
        if len(x.shape) != 4:
            raise self.unsupported(layer, f"expects a 4-D NCHW input, got shape {list(x.shape)}")
        return x

    def blob_count(self, layer) -> int:
        return len(self.net.blobs.get(layer.name, ()))

    def blob(self, layer, i: int, shape: tuple[int, ...], what: str) -> np.ndarray:
        """Blob `i` as float32 of `shape`: Caffe checks element counts, and files written before
        BlobShape store e.g. InnerProduct weights as 1x1xNxK, so only the count must match."""
        blobs = self.net.blobs.get(layer.name, [])
        if i >= len(blobs):
            where = f"{self.net.name}" + (f" (weights for {self.net.prototxt})" if self.net.prototxt else "")
            raise self.bad(layer, f"has no {what} (blob {i}) in {where}")
        data = blobs[i]
        if data.size != int(np.prod(shape, dtype=np.int64)):
            raise self.bad(layer, f"{what} (blob {i}) has shape {list(data.shape)}, expected {list(shape)}")
        return np.ascontiguousarray(data.reshape(shape), np.float32)

    def constant(self, layer, data: np.ndarray, suffix: str) -> Node:
        return self.graph.constant(np.ascontiguousarray(data, np.float32), f"{layer.name}/{suffix}")

    # ------------------------------------------------------------------ building
    def out_name(self, layer, k: int = 0) -> str:
        """The top's name, or the layer's when the layer writes in place (the top already names the
        node holding the value before it)."""
        if k < len(layer.top) and layer.top[k] not in self.values:
            return layer.top[k]
        return layer.name if len(layer.top) <= 1 else f"{layer.name}/{k}"

    def add(self, layer, op: O.Op, inputs: Sequence[Node], name: str | None = None) -> Node:
        return self.graph.add(op, inputs, name if name is not None else self.out_name(layer), note=layer.type)

    def per_channel(self, values: np.ndarray, rank: int, axis: int = 1) -> np.ndarray:
        """Values along `axis` of a rank-`rank` tensor, shaped to broadcast against it (C -> Cx1x1)."""
        return values.reshape(values.shape + (1,) * (rank - axis - values.ndim))


def axis_index(axis: int, rank: int) -> int | None:
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end; None when out of range."""
    a = axis + rank if axis < 0 else axis
    return a if 0 <= a < rank else None
