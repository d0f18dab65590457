"""What an op importer sees: the IR graph under construction and the tflite tensors' values.

`ImportContext.values` maps a tflite tensor index to the IR node holding that tensor *in tflite's
own layout* (NHWC for 4-D maps); `ImportContext.folded` maps the tensors of folded shape arithmetic
(kcc.frontend.tflite.fold) to their numpy values, which `const` reads like constant buffers. Importers of spatial ops wrap the IR op in NHWC->NCHW and
NCHW->NHWC transposes (`to_nchw`, `to_nhwc`), as ncc does; `kcc.passes.canonicalize` cancels the
pairs afterwards. Constant tensors become `Constant` nodes on first use, named after the tensor.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np

from kcc.errors import ModelFormatError, UnsupportedModelError
from kcc.frontend.quantization import ModelQuantization
from kcc.frontend.tflite.quantization import (
    dequantize_constant,
    is_per_channel,
    is_quantized_constant,
    is_symmetric_int8,
)
from kcc.frontend.tflite.reader import TfliteModel, TfliteOperator, TfliteTensor
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)

# Fused activations an op may carry and the clamp each one is (schema ActivationFunctionType).
FUSED_CLAMPS: dict[str, tuple[float, float]] = {
    "NONE": O.NO_CLAMP,
    "RELU": (0.0, O.INF),
    "RELU6": (0.0, 6.0),
    "RELU_N1_TO_1": (-1.0, 1.0),
}

ImportResult = Union[Node, Sequence[Node]]


class ImportContext:
    """Per-model state shared by the importer functions of `kcc.frontend.tflite.ops`."""

    def __init__(self, model: TfliteModel, graph: Graph):
        self.model = model
        self.graph = graph
        self.values: dict[int, Node] = {}
        self.folded: dict[int, np.ndarray] = {}  # values of folded integer ops (kcc.frontend.tflite.fold)
        self._const_nodes: dict[int, Node] = {}  # constant tensors already materialised
        self.quantization = ModelQuantization()  # grids of quantized activations, filled by the importer

    # ------------------------------------------------------------------ errors
    def unsupported(self, op: TfliteOperator, reason: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.model.name}: {op.opcode} '{self.out_name(op)}': {reason}")

    # ------------------------------------------------------------------ tensors
    def tensor(self, op: TfliteOperator, i: int) -> TfliteTensor:
        self.require_inputs(op, i + 1)
        return self.model.tensors[op.inputs[i]]

    def has_input(self, op: TfliteOperator, i: int) -> bool:
        return i < len(op.inputs) and op.inputs[i] >= 0

    def out_name(self, op: TfliteOperator, k: int = 0) -> str:
        return self.model.tensors[op.outputs[k]].name if op.outputs else f"op{op.index}"

    def out_shape(self, op: TfliteOperator, k: int = 0) -> tuple[int, ...]:
        return self.model.tensors[op.outputs[k]].shape

    def require_inputs(self, op: TfliteOperator, n: int) -> None:
        if len(op.inputs) < n or any(t < 0 for t in op.inputs[:n]):
            raise self.unsupported(op, f"expects {n} inputs, has {len(op.inputs)}")

    def input(self, op: TfliteOperator, i: int) -> Node:
        """The IR node of input `i` (tflite layout); constant tensors become Constant nodes."""
        self.require_inputs(op, i + 1)
        t = op.inputs[i]
        if t in self.values:
            return self.values[t]
        if t not in self._const_nodes:
            tensor = self.model.tensors[t]
            if tensor.data is None and t not in self.folded:
                raise ModelFormatError(f"{self.model.name}: {op.opcode} '{self.out_name(op)}': input tensor "
                                       f"'{tensor.name}' is not computed by an earlier operator")
            self._const_nodes[t] = self.graph.constant(self.float_const(op, i), tensor.name)
        return self._const_nodes[t]

    def input_4d(self, op: TfliteOperator, i: int) -> Node:
        """Input `i`, which must be a 4-D NHWC map (spatial ops)."""
        x = self.input(op, i)
        if len(x.shape) != 4:
            raise self.unsupported(op, f"expects a 4-D NHWC input, got shape {list(x.shape)}")
        return x

    def int_opt(self, op: TfliteOperator, key: str, default: int = 1) -> int:
        """A stride / dilation / window option, which must be >= 1 (a corrupt file may hold 0)."""
        value = op.opt(key, default)
        if not isinstance(value, int) or value < 1:
            raise self.unsupported(op, f"option {key} = {value} (must be a positive integer)")
        return value

    def shape(self, op: TfliteOperator, i: int) -> tuple[int, ...]:
        """Static shape of input `i` (from its IR node when it has one, else from the file)."""
        self.require_inputs(op, i + 1)
        t = op.inputs[i]
        if t in self.values:
            return self.values[t].shape
        return self.folded[t].shape if t in self.folded else self.model.tensors[t].shape

    def const(self, op: TfliteOperator, i: int, what: str = "") -> np.ndarray:
        """The value of input `i`, which must be constant: a buffer, folded shape arithmetic or a
        folded DEQUANTIZE."""
        self.require_inputs(op, i + 1)
        t = op.inputs[i]
        if t in self.folded:
            return self.folded[t]
        node = self.values.get(t)
        if node is not None and node.is_constant:
            return node.data
        tensor = self.model.tensors[t]
        if tensor.data is None:
            raise self.unsupported(op, f"{what or f'input {i}'} '{tensor.name}' is computed at run time; "
                                       f"kcc needs it constant (static shapes and weights only)")
        return tensor.data

    def float_const(self, op: TfliteOperator, i: int, what: str = "") -> np.ndarray:
        """A constant float32 operand (weights, bias, alpha...); quantized constants (uint8/int8
        weights, int32 biases with a scale) are dequantized exactly (kcc.frontend.quantization)."""
        value = self.const(op, i, what)
        if value.dtype == np.float32:
            return value
        t = self.tensor(op, i)
        if value is t.data and is_quantized_constant(t):
            try:
                real = dequantize_constant(t)
            except ValueError as e:
                raise self.unsupported(op, f"{what or f'input {i}'} '{t.name}': {e}") from None
            if (is_per_channel(t) and t.type_name != "INT32" and not is_symmetric_int8(t)
                    and t.name not in self.quantization.per_channel_weights):
                self.quantization.per_channel_weights.append(t.name)
            return real
        raise self.unsupported(op, f"{what or f'input {i}'} '{t.name}' is {t.type_name}"
                                   f"{' without quantization parameters' if t.quant is None else ''}; kcc needs "
                                   f"float32 constants, or quantized ones with a scale")

    def const_ints(self, op: TfliteOperator, i: int, what: str = "") -> list[int]:
        value = self.const(op, i, what)
        if value.dtype.kind not in "iu":
            raise self.unsupported(op, f"{what or f'input {i}'} must be an integer tensor, is {value.dtype}")
        return [int(v) for v in np.asarray(value).ravel()]

    def weight(self, op: TfliteOperator, i: int, data: np.ndarray, suffix: str = "") -> Node:
        """A Constant node holding re-laid-out weights of input `i` (named after the tensor)."""
        name = self.tensor(op, i).name + suffix
        return self.graph.constant(np.ascontiguousarray(data, dtype=np.float32), name)

    # ------------------------------------------------------------------ building
    def add(self, op: TfliteOperator, ir_op: O.Op, inputs: Sequence[Node], name: str | None = None) -> Node:
        return self.graph.add(ir_op, inputs, name if name is not None else self.out_name(op), note=op.opcode)

    def to_nchw(self, op: TfliteOperator, x: Node) -> Node:
        return self.add(op, O.Transpose(NHWC_TO_NCHW), [x], f"{x.name}/nchw")

    def to_nhwc(self, op: TfliteOperator, x: Node) -> Node:
        return self.add(op, O.Transpose(NCHW_TO_NHWC), [x], f"{x.name}/nhwc")

    def spatial(self, op: TfliteOperator, x: Node, build: Callable[[Node], Node]) -> Node:
        """NHWC x -> transpose -> build(NCHW x) -> transpose back: the wrapper of every spatial op."""
        if len(x.shape) != 4:
            raise self.unsupported(op, f"expects a 4-D NHWC input, got shape {list(x.shape)}")
        return self.to_nhwc(op, build(self.to_nchw(op, x)))

    def fused_act(self, op: TfliteOperator) -> tuple[float, float]:
        act = op.opt("fused_activation_function", "NONE")
        if act not in FUSED_CLAMPS:
            raise self.unsupported(op, f"fused activation {act} is not supported")
        return FUSED_CLAMPS[act]

    def add_with_act(self, op: TfliteOperator, ir_op: O.Op, inputs: Sequence[Node],
                     act: tuple[float, float]) -> Node:
        """`ir_op` followed by a Clamp for a fused activation, for IR ops without an `act` field.

        The node that ends up holding the tflite tensor (the clamp, if any) gets the tensor name.
        """
        if act == O.NO_CLAMP:
            return self.add(op, ir_op, inputs)
        y = self.add(op, ir_op, inputs, f"{self.out_name(op)}/{ir_op.kind}")
        return self.add(op, O.Clamp(*act), [y])


def axis_index(axis: int, rank: int) -> int:
    """Normalise a possibly negative axis; the caller checks the range."""
    return axis + rank if axis < 0 else axis


def tf_padding(mode: str, size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF/TFLite SAME or VALID padding along one axis (tensorflow/lite/kernels/padding.h).

    out = ceil(in / stride) for SAME, ceil((in - eff + 1) / stride) for VALID, eff = (k-1)*dil + 1;
    SAME pads total = max(0, (out-1)*stride + eff - in), the smaller half before.
    """
    if mode == "VALID":
        return (0, 0)
    eff = (k - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = max(0, (out - 1) * stride + eff - size)
    return (total // 2, total - total // 2)
