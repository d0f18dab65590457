"""Node bodies of the neutral float and data-movement ops (kmodel_v4.md §8.1-8.14, 8.19, 8.20).

Field order is file order (see `codec.Body`). Every body is keyword-only; layout-neutral
fields (stride, dilation, groups, padding, fused activation, masks, pad value) default to the
identity value so an emitter only spells out what matters. Arrays are 1-D numpy arrays in
file order; their lengths are checked against the counts the runtime derives from the fields.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar

import numpy as np

from kcc.errors import KmodelError
from kcc.kmodel.codec import U32, Body, body_dataclass, element_count
from kcc.kmodel.spec import BinaryOp, Opcode, ReduceOp, ResizeMode, UnaryOp
from kcc.kmodel.types import (
    MemoryRange,
    Padding,
    Paddings4,
    QuantParam,
    Reader,
    Scalar,
    Shape4,
    ValueRange,
    Writer,
)

NO_PADDING = Padding(0, 0)
NO_CLAMP = ValueRange.full()


@body_dataclass
class Binary(Body):
    """§8.1: float32 elementwise op with 4-D broadcasting, then the fused clamp."""

    OPCODE: ClassVar[Opcode] = Opcode.BINARY
    input_a: MemoryRange
    input_b: MemoryRange
    output: MemoryRange
    binary_op: BinaryOp
    in_a_shape: Shape4
    in_b_shape: Shape4
    out_shape: Shape4
    fused_activation: ValueRange = NO_CLAMP


@body_dataclass
class Concat(Body):
    """§8.2: byte-wise concatenation; `inner_size` is in bytes. inputs_count = len(inputs)."""

    OPCODE: ClassVar[Opcode] = Opcode.CONCAT
    output: MemoryRange
    inner_size: U32
    outer_size: U32
    inputs: tuple[MemoryRange, ...]
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        if len(self.inputs) != len(self.dims):
            raise KmodelError(f"concat: {len(self.inputs)} inputs but {len(self.dims)} dims")

    def _pack_tail(self, w: Writer, offset: int) -> None:
        w.pack("<I", len(self.inputs), what="inputs_count")
        for item in self.inputs:
            w.raw(item.pack())
        w.pack(f"<{len(self.dims)}i", *self.dims, what="dims")

    @classmethod
    def _unpack_tail(cls, r: Reader, values: dict[str, Any], offset: int) -> dict[str, Any]:
        count = r.u32("inputs_count")
        if count * 20 > r.remaining:  # 16-byte range + 4-byte dim per input
            raise KmodelError(f"too short for {count} concat inputs: only {r.remaining} bytes left")
        inputs = tuple(MemoryRange.read(r, f"inputs[{i}]") for i in range(count))
        dims = tuple(int(d) for d in r.array("<i4", count, "dims"))
        return {"inputs": inputs, "dims": dims}


@body_dataclass
class Conv2D(Body):
    """§8.3: float32 NCHW conv; weights [oc][ic/groups][kh][kw], then bias[oc]."""

    OPCODE: ClassVar[Opcode] = Opcode.CONV2D
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
    fused_activation: ValueRange = NO_CLAMP
    weights: np.ndarray
    bias: np.ndarray

    @classmethod
    def _array_layout(cls, v: dict[str, Any]) -> list[tuple[str, str, int]]:
        oc = v["out_channels"]
        w = element_count("conv2d weights", oc, v["in_shape"][1], v["filter_h"], v["filter_w"], divisor=v["groups"])
        return [("weights", "<f4", w), ("bias", "<f4", element_count("conv2d bias", oc))]


@body_dataclass
class Dequantize(Body):
    """§8.4: u8 -> f32, x = (q - zero_point) * (1 / scale); count = input.size."""

    OPCODE: ClassVar[Opcode] = Opcode.DEQUANTIZE
    input: MemoryRange
    output: MemoryRange
    quant_param: QuantParam


@body_dataclass
class MatMul(Body):
    """§8.5: out[r][c] = clamp(bias[c] + sum_k a[r][k] * b[k][c])."""

    OPCODE: ClassVar[Opcode] = Opcode.MATMUL
    input_a: MemoryRange
    input_b: MemoryRange
    output: MemoryRange
    a_rows: int
    a_cols: int
    b_cols: int
    fused_activation: ValueRange = NO_CLAMP
    bias: np.ndarray

    @classmethod
    def _array_layout(cls, v: dict[str, Any]) -> list[tuple[str, str, int]]:
        return [("bias", "<f4", element_count("matmul bias", v["b_cols"]))]


@body_dataclass
class Pad(Body):
    """§8.6: element size from input.datatype; negative paddings crop. ncc leaves pad_value 0."""

    OPCODE: ClassVar[Opcode] = Opcode.PAD
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
    paddings: Paddings4
    pad_value: Scalar = field(default_factory=Scalar)


@body_dataclass
class Quantize(Body):
    """§8.4: f32 -> u8, q = clamp(roundf(x * scale + zero_point), 0, 255); count = input.size / 4."""

    OPCODE: ClassVar[Opcode] = Opcode.QUANTIZE
    input: MemoryRange
    output: MemoryRange
    quant_param: QuantParam


@body_dataclass
class Reduce(Body):
    """§8.7: out_shape keeps reduced axes as 1; mean = sum * (out_elems / in_elems)."""

    OPCODE: ClassVar[Opcode] = Opcode.REDUCE
    input: MemoryRange
    output: MemoryRange
    reduce_op: ReduceOp
    in_shape: Shape4
    out_shape: Shape4
    init_value: float


@body_dataclass
class ReduceWindow2D(Body):
    """§8.8: NCHW pooling; mean divides by the number of in-bounds taps."""

    OPCODE: ClassVar[Opcode] = Opcode.REDUCE_WINDOW2D
    input: MemoryRange
    output: MemoryRange
    reduce_op: ReduceOp
    in_shape: Shape4
    padding_h: Padding = NO_PADDING
    padding_w: Padding = NO_PADDING
    filter_h: int
    filter_w: int
    stride_h: int = 1
    stride_w: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    init_value: float
    fused_activation: ValueRange = NO_CLAMP


@body_dataclass
class MemoryCopy(Body):
    """§8.9: copies floor(input.size / 4) 4-byte words."""

    OPCODE: ClassVar[Opcode] = Opcode.MEMORY_COPY
    input: MemoryRange
    output: MemoryRange


@body_dataclass
class ResizeImage(Body):
    """§8.11: float32 or uint8 (from input.datatype); 3 bytes of struct tail padding follow."""

    OPCODE: ClassVar[Opcode] = Opcode.RESIZE_IMAGE
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
    out_h: int
    out_w: int
    mode: ResizeMode
    align_corners: bool = False


@body_dataclass
class Softmax(Body):
    """§8.10: softmax over `inner_size` contiguous floats, `outer_size` times (not emitted by ncc)."""

    OPCODE: ClassVar[Opcode] = Opcode.SOFTMAX
    input: MemoryRange
    output: MemoryRange
    inner_size: int
    outer_size: int
    beta: float = 1.0


@body_dataclass
class Transpose(Body):
    """§8.12: out_shape[i] = in_shape[perm[i]]; element size from input.datatype."""

    OPCODE: ClassVar[Opcode] = Opcode.TRANSPOSE
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
    perm: Shape4


@body_dataclass
class StridedSlice(Body):
    """§8.14: begin/end/strides already normalised; the masks are stored but ignored."""

    OPCODE: ClassVar[Opcode] = Opcode.STRIDED_SLICE
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
    begin: Shape4
    end: Shape4
    strides: Shape4
    begin_mask: int = 0
    end_mask: int = 0
    ellipsis_mask: int = 0
    new_axis_mask: int = 0
    shrink_axis_mask: int = 0


@body_dataclass
class Unary(Body):
    """§8.13: float32 elementwise; count = input.size / 4."""

    OPCODE: ClassVar[Opcode] = Opcode.UNARY
    input: MemoryRange
    output: MemoryRange
    unary_op: UnaryOp


@body_dataclass
class Conv2DTranspose(Body):
    """§8.19: float32; weights [out_shape[1]][in_shape[1]/groups][kh][kw], then bias."""

    OPCODE: ClassVar[Opcode] = Opcode.CONV2D_TRANSPOSE
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4
    out_shape: Shape4
    groups: int = 1
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
        oc = v["out_shape"][1]
        w = element_count(
            "conv2d_transpose weights", oc, v["in_shape"][1], v["filter_h"], v["filter_w"], divisor=v["groups"]
        )
        return [("weights", "<f4", w), ("bias", "<f4", element_count("conv2d_transpose bias", oc))]


@body_dataclass
class NnilUnaryMethod(Body):
    """§8.20, §10: the nnil program is the whole rest of the body, padding included.

    When read from a file `program` therefore ends with the body's zero padding (nops after
    `ret`), which keeps the round trip exact; kcc's emitter passes just the program.
    """

    OPCODE: ClassVar[Opcode] = Opcode.NNIL_UNARY_METHOD
    input: MemoryRange
    output: MemoryRange
    program: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "program", bytes(self.program))

    def _pack_tail(self, w: Writer, offset: int) -> None:
        w.raw(self.program)

    @classmethod
    def _unpack_tail(cls, r: Reader, values: dict[str, Any], offset: int) -> dict[str, Any]:
        return {"program": bytes(r.take(r.remaining, "program"))}
