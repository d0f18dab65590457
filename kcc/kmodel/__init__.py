"""kmodel v4 (nncase v0.2, K210): the file format, written once for kcc's writer and kpu_sim.

A leaf package: it imports only the standard library, numpy and `kcc.errors`.
Spec: `docs/kmodel_v4.md` (shared/docs/kmodel_v4.md); section numbers in docstrings refer to it.

    model = kcc.kmodel.read(data, name="model.kmodel")   # validates; raises KmodelError
    data = kcc.kmodel.write(model)                        # canonical bytes
"""

from kcc.kmodel.bodies import (
    NO_CLAMP,
    NO_PADDING,
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
from kcc.kmodel.codec import U32, Body
from kcc.kmodel.cpu_bodies import (
    CpuConv2D,
    CpuDepthwiseConv2D,
    CpuQuantizedConv2D,
    CpuQuantizedDepthwiseConv2D,
    CpuReduceWindow2D,
)
from kcc.kmodel.k210_bodies import (
    KPU_WEIGHTS_PER_LOAD,
    MAX_WEIGHT_LOADS,
    KpuConv2D,
    KpuUpload,
    aligned_table_padding,
    layer_fields,
    layer_problems,
    load_fields,
    map_fields,
    weight_loads,
)
from kcc.kmodel.kpu_layout import (
    KpuRowLayout,
    kpu_bytes,
    kpu_channel_offset,
    kpu_offsets,
    kpu_row_layout,
    kpu_rows,
)
from kcc.kmodel.layer import (
    KpuActivationSegment,
    KpuActivationTable,
    KpuBatchNormTable,
    KpuLayerArgument,
    wrap_signed,
    wrap_unsigned,
)
from kcc.kmodel.model import V3_MESSAGE, V5_MESSAGE, KModel, Node, read, read_file, validate, write
from kcc.kmodel.quantized_bodies import QuantizedBinary, QuantizedConv2D, QuantizedMatMul, TableLookup1D
from kcc.kmodel.registry import BODIES
from kcc.kmodel.spec import (
    BETA3_OPCODES,
    FLT_MAX,
    KPU_RAM_SIZE,
    BinaryOp,
    DataType,
    KpuFilterType,
    KpuPoolType,
    MemoryType,
    NnilOpcode,
    Opcode,
    ReduceOp,
    ResizeMode,
    Target,
    UnaryOp,
)
from kcc.kmodel.types import (
    ABSENT_RANGE,
    MemoryRange,
    Padding,
    Paddings4,
    QuantParam,
    Scalar,
    Shape4,
    ValueRange,
)

__all__ = [
    "ABSENT_RANGE", "BETA3_OPCODES", "BODIES", "FLT_MAX", "KPU_RAM_SIZE", "KPU_WEIGHTS_PER_LOAD", "MAX_WEIGHT_LOADS",
    "NO_CLAMP", "NO_PADDING", "U32", "V3_MESSAGE", "V5_MESSAGE",
    "Binary", "BinaryOp", "Body", "Concat", "Conv2D", "Conv2DTranspose", "CpuConv2D", "CpuDepthwiseConv2D",
    "CpuQuantizedConv2D", "CpuQuantizedDepthwiseConv2D", "CpuReduceWindow2D", "DataType", "Dequantize",
    "KModel", "KpuActivationSegment", "KpuActivationTable", "KpuBatchNormTable", "KpuConv2D", "KpuFilterType",
    "KpuLayerArgument", "KpuPoolType", "KpuRowLayout", "KpuUpload", "MatMul", "MemoryCopy", "MemoryRange",
    "MemoryType", "NnilOpcode", "NnilUnaryMethod", "Node", "Opcode", "Pad", "Padding", "Paddings4", "QuantParam",
    "Quantize", "QuantizedBinary", "QuantizedConv2D", "QuantizedMatMul", "Reduce", "ReduceOp", "ReduceWindow2D",
    "ResizeImage", "ResizeMode", "Scalar", "Shape4", "Softmax", "StridedSlice", "TableLookup1D", "Target",
    "Transpose", "Unary", "UnaryOp", "ValueRange",
    "aligned_table_padding", "kpu_bytes", "kpu_channel_offset", "kpu_offsets", "kpu_row_layout", "kpu_rows",
    "layer_fields", "layer_problems", "load_fields", "map_fields", "read", "read_file", "validate", "weight_loads", "wrap_signed",
    "wrap_unsigned", "write",
]  # fmt: skip
