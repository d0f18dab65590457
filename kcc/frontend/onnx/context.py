"""What an ONNX op importer sees: the IR graph under construction, the run-time values and the constants.

ONNX is NCHW like the IR (kcc.ir.ops), so importers add IR ops directly, without layout transposes.
A tensor is either a run-time value (`values`: tensor name -> IR node) or a constant known at import
(`consts`: tensor name -> numpy array: initializers, Constant nodes and everything folded from them,
kcc.frontend.onnx.fold). A constant becomes a float32 `Constant` node only where a run-time op reads
it (`input`); shape operands, axes and the like are read as numbers (`const_ints`).

Attributes that later opsets turned into inputs (Slice, Pad, Clip, Split, Squeeze, Unsqueeze, the
reductions, Resize) are read with `attr_or_input`, so each importer handles every opset form.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from kcc.errors import ModelFormatError, UnsupportedModelError
from kcc.frontend.onnx.reader import OnnxModel, OnnxNode
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

#: what an importer returns per output: an IR node, or a numpy array for a constant result
Value = Union[Node, np.ndarray]
ImportResult = Union[Value, Sequence[Value]]


class ImportContext:
    """Per-model state shared by the importer functions of `kcc.frontend.onnx.ops`."""

    def __init__(self, model: OnnxModel, graph: Graph):
        self.model = model
        self.graph = graph
        self.values: dict[str, Node] = {}
        self.consts: dict[str, np.ndarray] = dict(model.initializers)
        self._const_nodes: dict[str, Node] = {}
        # how many node inputs and graph outputs read each tensor (what a fold into a producer checks)
        self.readers: dict[str, int] = {}
        for n in model.nodes:
            for t in n.inputs:
                self.readers[t] = self.readers.get(t, 0) + 1
        for t in model.outputs:
            self.readers[t] = self.readers.get(t, 0) + 1

    # ------------------------------------------------------------------ errors
    def unsupported(self, node: OnnxNode, reason: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.model.name}: {node.op_type} '{node.label}': {reason}")

    def undefined(self, node: OnnxNode, t: str) -> ModelFormatError:
        return ModelFormatError(f"{self.model.name}: {node.op_type} '{node.label}': input '{t}' is produced by no "
                                f"earlier node and is neither a graph input nor an initializer")

    # ------------------------------------------------------------------ tensors
    def has_input(self, node: OnnxNode, i: int) -> bool:
        return i < len(node.inputs) and node.inputs[i] != ""

    def require(self, node: OnnxNode, i: int) -> str:
        if not self.has_input(node, i):
            raise self.unsupported(node, f"expects at least {i + 1} inputs, has {len(node.inputs)}")
        return node.inputs[i]

    def is_const(self, node: OnnxNode, i: int) -> bool:
        return self.has_input(node, i) and node.inputs[i] in self.consts

    def out_name(self, node: OnnxNode, k: int = 0) -> str:
        return node.outputs[k] if k < len(node.outputs) and node.outputs[k] else f"{node.label}:{k}"

    def input(self, node: OnnxNode, i: int) -> Node:
        """The IR node of input `i`; a constant becomes a float32 Constant node named after its tensor."""
        t = self.require(node, i)
        if t in self.values:
            return self.values[t]
        if t not in self.consts:
            raise self.undefined(node, t)
        if t not in self._const_nodes:
            data = self.consts[t]
            if data.dtype.kind not in "fiub":
                raise self.unsupported(node, f"constant input '{t}' is {data.dtype}")
            self._const_nodes[t] = self.graph.constant(np.asarray(data, np.float32), t)
        return self._const_nodes[t]

    def shape(self, node: OnnxNode, i: int) -> tuple[int, ...]:
        t = self.require(node, i)
        if t in self.values:
            return self.values[t].shape
        if t in self.consts:
            return tuple(int(d) for d in self.consts[t].shape)
        raise self.undefined(node, t)

    def rank(self, node: OnnxNode, i: int) -> int:
        return len(self.shape(node, i))

    def const(self, node: OnnxNode, i: int, what: str = "") -> np.ndarray:
        """The value of input `i`, which must be known at import time."""
        t = self.require(node, i)
        if t not in self.consts:
            raise self.unsupported(node, f"{what or f'input {i}'} '{t}' is computed at run time; kcc needs "
                                         f"it constant (static shapes and weights)")
        return self.consts[t]

    def float_const(self, node: OnnxNode, i: int, what: str = "") -> np.ndarray:
        value = self.const(node, i, what)
        if value.dtype.kind not in "fiub":
            raise self.unsupported(node, f"{what or f'input {i}'} is {value.dtype}, expected numbers")
        return np.asarray(value, np.float32)

    def const_ints(self, node: OnnxNode, i: int, what: str = "") -> list[int]:
        value = self.const(node, i, what)
        if value.dtype.kind not in "iu":
            raise self.unsupported(node, f"{what or f'input {i}'} must be an integer tensor, is {value.dtype}")
        return [int(v) for v in np.asarray(value).ravel()]

    def attr_or_input(self, node: OnnxNode, key: str, i: int, default: Any = None, ints: bool = True) -> Any:
        """The attribute `key` of older opsets or the constant input `i` of newer ones (a list of
        ints with `ints`, else a float array), `default` when neither is present."""
        if self.has_input(node, i):
            return self.const_ints(node, i, key) if ints else self.float_const(node, i, key)
        return node.attrs.get(key, default)

    # ------------------------------------------------------------------ building
    def add(self, node: OnnxNode, ir_op: O.Op, inputs: Sequence[Node], name: str | None = None) -> Node:
        """Add an IR node named after the ONNX node's first output (or `name`)."""
        return self.graph.add(ir_op, inputs, name if name is not None else self.out_name(node), note=node.op_type)

    def const_node(self, data: np.ndarray, name: str) -> Node:
        return self.graph.constant(np.asarray(data, np.float32), name)


def axis_index(ctx: ImportContext, node: OnnxNode, axis: int, rank: int, extra: int = 0) -> int:
    """A possibly negative axis in [-rank-extra, rank+extra) normalised; out of range is refused."""
    a = axis + rank + extra if axis < 0 else axis
    if not 0 <= a < rank + extra:
        raise ctx.unsupported(node, f"axis {axis} out of range for rank {rank}")
    return a


def conv_pads(ctx: ImportContext, node: OnnxNode, spatial: Sequence[int], kernel: Sequence[int],
              strides: Sequence[int], dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) per spatial axis from `pads` or `auto_pad` (onnx/defs/nn/defs.cc, Conv and pools).

    SAME_UPPER / SAME_LOWER: out = ceil(in / stride), total = max(0, (out-1)*stride + eff - in) with
    eff = (k-1)*dilation + 1; the odd pixel goes after (UPPER) or before (LOWER). VALID: no padding.
    NOTSET: the explicit `pads`, [x1_begin, x2_begin, ..., x1_end, x2_end, ...].
    """
    n = len(spatial)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * (2 * n)))
        if len(pads) != 2 * n or min(pads, default=0) < 0:
            raise ctx.unsupported(node, f"pads {pads} for {n} spatial axes")
        return [(pads[k], pads[k + n]) for k in range(n)]
    if auto == "VALID":
        return [(0, 0)] * n
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.unsupported(node, f"auto_pad {auto!r}")
    out = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        eff = (k - 1) * d + 1
        total = max(0, ((size + s - 1) // s - 1) * s + eff - size)
        small, big = total // 2, total - total // 2
        out.append((small, big) if auto == "SAME_UPPER" else (big, small))
    return out
