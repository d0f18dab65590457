"""Node bodies of the runtime-only CPU ops 0x1001-0x1005 (kmodel_v4.md §8.21).

ncc never emits them, but the runtime executes them, so they are part of the format. They use
NHWC: channels are `in_shape[3]`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from kcc.kmodel.bodies import NO_CLAMP, NO_PADDING, ReduceWindow2D
from kcc.kmodel.codec import Body, body_dataclass, element_count
from kcc.kmodel.spec import Opcode
from kcc.kmodel.types import MemoryRange, Padding, Shape4, ValueRange


@body_dataclass
class CpuReduceWindow2D(ReduceWindow2D):
    """§8.8 layout, but the runtime kernel treats in_shape as NHWC (§8.21) and has no sum."""

    OPCODE: ClassVar[Opcode] = Opcode.CPU_REDUCE_WINDOW2D


@body_dataclass
class CpuConv2D(Body):
    """§8.21: NHWC (channels = in_shape[3]); runtime only, never emitted by ncc."""

    OPCODE: ClassVar[Opcode] = Opcode.CPU_CONV2D
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
    out_channels: int
    padding_h: Padding = NO_PADDING
    padding_w: Padding = NO_PADDING
    filter_h: int
    filter_w: int
    stride_h: int = 1
    stride_w: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    fused_activation: ValueRange = NO_CLAMP
    weights: np.ndarray
    bias: np.ndarray

    @classmethod
    def _array_layout(cls, v: dict[str, Any]) -> list[tuple[str, str, int]]:
        oc = v["out_channels"]
        w = element_count("cpu_conv2d weights", oc, v["in_shape"][3], v["filter_h"], v["filter_w"])
        return [("weights", "<f4", w), ("bias", "<f4", element_count("cpu_conv2d bias", oc))]


@body_dataclass
class CpuDepthwiseConv2D(Body):
    """§8.21: NHWC depthwise; weights f32[C*kh*kw], bias f32[C]."""

    OPCODE: ClassVar[Opcode] = Opcode.CPU_DEPTHWISE_CONV2D
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
    padding_h: Padding = NO_PADDING
    padding_w: Padding = NO_PADDING
    filter_h: int
    filter_w: int
    stride_h: int = 1
    stride_w: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    fused_activation: ValueRange = NO_CLAMP
    weights: np.ndarray
    bias: np.ndarray

    @classmethod
    def _array_layout(cls, v: dict[str, Any]) -> list[tuple[str, str, int]]:
        c = v["in_shape"][3]
        w = element_count("cpu_depthwise_conv2d weights", c, v["filter_h"], v["filter_w"])
        return [("weights", "<f4", w), ("bias", "<f4", element_count("cpu_depthwise_conv2d bias", c))]


@body_dataclass
class CpuQuantizedConv2D(Body):
    """§8.21: NHWC uint8; **weights then bias** (the reverse of quantized_conv2d)."""

    OPCODE: ClassVar[Opcode] = Opcode.CPU_QUANTIZED_CONV2D
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
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
    weights: np.ndarray
    bias: np.ndarray

    @classmethod
    def _array_layout(cls, v: dict[str, Any]) -> list[tuple[str, str, int]]:
        oc = v["out_channels"]
        w = element_count("cpu_quantized_conv2d weights", oc, v["in_shape"][3], v["filter_h"], v["filter_w"])
        return [("weights", "u1", w), ("bias", "<i4", element_count("cpu_quantized_conv2d bias", oc))]


@body_dataclass
class CpuQuantizedDepthwiseConv2D(Body):
    """§8.21: NHWC uint8 depthwise; weights u8[C*kh*kw], bias i32[C]."""

    OPCODE: ClassVar[Opcode] = Opcode.CPU_QUANTIZED_DEPTHWISE_CONV2D
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
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
    weights: np.ndarray
    bias: np.ndarray

    @classmethod
    def _array_layout(cls, v: dict[str, Any]) -> list[tuple[str, str, int]]:
        c = v["in_shape"][3]
        w = element_count("cpu_quantized_depthwise_conv2d weights", c, v["filter_h"], v["filter_w"])
        return [("weights", "u1", w), ("bias", "<i4", element_count("cpu_quantized_depthwise_conv2d bias", c))]
