"""`BODIES`: the one table from opcode to body class (kmodel_v4.md §6.3)."""

from __future__ import annotations

from kcc.kmodel.bodies import (
    Binary,
    Concat,
    Conv2D,
    Conv2DTranspose,
    Dequantize,
    MatMul,
    MemoryCopy,
    NnilUnaryMethod,
    Pad,
    Quantize,
    Reduce,
    ReduceWindow2D,
    ResizeImage,
    Softmax,
    StridedSlice,
    Transpose,
    Unary,
)
from kcc.kmodel.codec import Body
from kcc.kmodel.cpu_bodies import (
    CpuConv2D,
    CpuDepthwiseConv2D,
    CpuQuantizedConv2D,
    CpuQuantizedDepthwiseConv2D,
    CpuReduceWindow2D,
)
from kcc.kmodel.k210_bodies import KpuConv2D, KpuUpload
from kcc.kmodel.quantized_bodies import QuantizedBinary, QuantizedConv2D, QuantizedMatMul, TableLookup1D
from kcc.kmodel.spec import Opcode

BODIES: dict[Opcode, type[Body]] = {
    cls.OPCODE: cls
    for cls in (
        Binary,
        Concat,
        Conv2D,
        Dequantize,
        MatMul,
        Pad,
        Quantize,
        Reduce,
        ReduceWindow2D,
        MemoryCopy,
        ResizeImage,
        Softmax,
        Transpose,
        StridedSlice,
        Unary,
        QuantizedConv2D,
        QuantizedMatMul,
        QuantizedBinary,
        TableLookup1D,
        Conv2DTranspose,
        NnilUnaryMethod,
        CpuConv2D,
        CpuDepthwiseConv2D,
        CpuReduceWindow2D,
        CpuQuantizedConv2D,
        CpuQuantizedDepthwiseConv2D,
        KpuUpload,
        KpuConv2D,
    )
}

if set(BODIES) != set(Opcode):  # a new opcode without a body class is a bug in this package
    raise AssertionError(f"opcodes without a body class: {sorted(set(Opcode) - set(BODIES))}")
