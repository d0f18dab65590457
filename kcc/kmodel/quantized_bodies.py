"""Node bodies of the uint8 CPU ops (kmodel_v4.md §8.15-8.18), emitted by ncc since beta1/beta3."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from kcc.kmodel.bodies import NO_PADDING
from kcc.kmodel.codec import Body, body_dataclass, element_count
from kcc.kmodel.spec import BinaryOp, Opcode
from kcc.kmodel.types import MemoryRange, Padding, Shape4


@body_dataclass
class QuantizedConv2D(Body):
    """§8.15: uint8 conv; **bias (i32[oc]) precedes the weights** here."""

    OPCODE: ClassVar[Opcode] = Opcode.QUANTIZED_CONV2D
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
    groups: int = 1
    out_channels: int
    padding_h: Padding = NO_PADDING
    padding_w: Padding = NO_PADDING
    filter_h: int
    filter_w: int
    stride_h: int = 1
    stride_w: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    input_offset: int
    filter_offset: int
    output_mul: int
    output_shift: int
    output_offset: int
    bias: np.ndarray
    weights: np.ndarray

    @classmethod
    def _array_layout(cls, v: dict[str, Any]) -> list[tuple[str, str, int]]:
        oc = v["out_channels"]
        w = element_count(
            "quantized_conv2d weights", oc, v["in_shape"][1], v["filter_h"], v["filter_w"], divisor=v["groups"]
        )
        return [("bias", "<i4", element_count("quantized_conv2d bias", oc)), ("weights", "u1", w)]


@body_dataclass
class QuantizedMatMul(Body):
    """§8.16."""

    OPCODE: ClassVar[Opcode] = Opcode.QUANTIZED_MATMUL
    input_a: MemoryRange
    input_b: MemoryRange
    output: MemoryRange
    a_rows: int
    a_cols: int
    b_cols: int
    input_a_offset: int
    input_b_offset: int
    output_mul: int
    output_shift: int
    output_offset: int
    bias: np.ndarray

    @classmethod
    def _array_layout(cls, v: dict[str, Any]) -> list[tuple[str, str, int]]:
        return [("bias", "<i4", element_count("quantized_matmul bias", v["b_cols"]))]


@body_dataclass
class QuantizedBinary(Body):
    """§8.17: each (offset, mul, shift) triple is stored in that order."""

    OPCODE: ClassVar[Opcode] = Opcode.QUANTIZED_BINARY
    input_a: MemoryRange
    input_b: MemoryRange
    output: MemoryRange
    binary_op: BinaryOp
    in_a_shape: Shape4
    in_b_shape: Shape4
    out_shape: Shape4
    input_a_offset: int
    input_a_mul: int
    input_a_shift: int
    input_b_offset: int
    input_b_mul: int
    input_b_shift: int
    output_offset: int
    output_mul: int
    output_shift: int


@body_dataclass
class TableLookup1D(Body):
    """§8.18: out[i] = table[in[i]] (uint8 only; needs a beta3+ runtime)."""

    OPCODE: ClassVar[Opcode] = Opcode.TABLE_LOOKUP1D
    input: MemoryRange
    table: MemoryRange
    output: MemoryRange
