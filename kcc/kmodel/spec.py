"""Constants and enums of the kmodel v4 format (nncase v0.2.x, K210).

Every value here is part of the file format: changing one changes the bytes kcc writes.
Section references are to `docs/kmodel_v4.md` (kept at `shared/docs/kmodel_v4.md`).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

# §4: the C multi-character constant 'KMDL' stored little-endian reads "LDMK".
MODEL_IDENTIFIER = 0x4B4D444C
MAGIC = b"LDMK"
VERSION = 4
LEGACY_V3_VERSION = 3  # §12: first u32 of a kmodel v3 (nncase v0.1)
NNCASE_V1_VERSION = 5  # §12: kmodel v5 (nncase v1.x)

HEADER_SIZE = 40  # §4: 10 x u32
MEMORY_RANGE_SIZE = 16  # §3.1
SHAPE_SIZE = 16  # §3.3: 4 x i32
NODE_HEADER_SIZE = 8  # §6.1

BODY_ALIGNMENT = 8  # §6.2: every body starts on an 8-byte file offset
CONSTANT_ALIGNMENT = 8  # §5: constants start 8-aligned, blob size a multiple of 8
MAIN_ALIGNMENT = 8  # §7.1
KPU_ALIGNMENT = 64  # §7.2: KPU RAM is addressed in 64-byte lines
# §9.2 / §13: where a kpu_conv2d body's three tables start. ncc >= beta1 puts all three on 256-aligned file
# offsets; the KPU needs that only for the activation table: nncase v1's K210 target (v1.9.0-beta1,
# modules/k210) aligns that table to 256 and its runtime refuses a layer whose `active_addr % 256 != 0`,
# while its batch-norm and weight tables are plain constants, 8-aligned (ir/ops/constant.h), as ncc
# v0.2.0-alpha's batch-norm tables were. 8 instead of 256 saves ~250 B of padding a layer.
KPU_BN_ALIGNMENT = 8
KPU_ACT_ALIGNMENT = 256
KPU_WEIGHTS_ALIGNMENT = 8

KPU_RAM_SIZE = 2 * 1024 * 1024  # §7.2
KPU_LINE_SIZE = 64

FLT_MAX = float(np.finfo(np.float32).max)  # §3.4: value_range<f32> uses +-FLT_MAX for "no clamp"


class Opcode(IntEnum):
    """`runtime_opcode` (§6.3). Member names are the kmodel (runtime_op.def) names."""

    BINARY = 0x00
    CONCAT = 0x01
    CONV2D = 0x02
    DEQUANTIZE = 0x03
    MATMUL = 0x04
    PAD = 0x05
    QUANTIZE = 0x06
    REDUCE = 0x07
    REDUCE_WINDOW2D = 0x08
    MEMORY_COPY = 0x09
    RESIZE_IMAGE = 0x0A
    SOFTMAX = 0x0B
    TRANSPOSE = 0x0C
    STRIDED_SLICE = 0x0D
    UNARY = 0x0E
    QUANTIZED_CONV2D = 0x0F
    QUANTIZED_MATMUL = 0x10
    QUANTIZED_BINARY = 0x11
    TABLE_LOOKUP1D = 0x12
    CONV2D_TRANSPOSE = 0x13
    NNIL_UNARY_METHOD = 0x14
    CPU_CONV2D = 0x1001
    CPU_DEPTHWISE_CONV2D = 0x1002
    CPU_REDUCE_WINDOW2D = 0x1003
    CPU_QUANTIZED_CONV2D = 0x1004
    CPU_QUANTIZED_DEPTHWISE_CONV2D = 0x1005
    KPU_UPLOAD = 0x2001
    KPU_CONV2D = 0x2002

    @property
    def kmodel_name(self) -> str:
        """The lower-case name used in messages and dumps, e.g. `kpu_conv2d`."""
        return self.name.lower()


# §6.3: the runtime only knows these since nncase v0.2.0-beta3; older K210 firmware
# (e.g. MaixPy builds with a beta1/beta2 runtime) fails on them with "Unknown opcode".
BETA3_OPCODES = frozenset({Opcode.TABLE_LOOKUP1D, Opcode.NNIL_UNARY_METHOD})


class MemoryType(IntEnum):
    """`memory_type_t` (§3.1)."""

    CONST = 0
    MAIN = 1
    K210_KPU = 2


class DataType(IntEnum):
    """`datatype_t` (§3.1). Only two exist in v4."""

    FLOAT32 = 0
    UINT8 = 1

    @property
    def itemsize(self) -> int:
        return 4 if self is DataType.FLOAT32 else 1

    @property
    def numpy(self) -> np.dtype:
        """The little-endian numpy dtype of one element."""
        return np.dtype("<f4") if self is DataType.FLOAT32 else np.dtype("u1")


class BinaryOp(IntEnum):
    """`binary_op_t` (§3.2)."""

    ADD = 0
    SUB = 1
    MUL = 2
    DIV = 3
    MIN = 4
    MAX = 5


class UnaryOp(IntEnum):
    """`unary_op_t` (§3.2)."""

    ABS = 0
    CEIL = 1
    COS = 2
    EXP = 3
    FLOOR = 4
    LOG = 5
    NEG = 6
    RSQRT = 7
    SIN = 8
    SQUARE = 9


class ReduceOp(IntEnum):
    """`reduce_op_t` (§3.2)."""

    MEAN = 0
    MIN = 1
    MAX = 2
    SUM = 3


class ResizeMode(IntEnum):
    """`image_resize_mode_t` (§3.2)."""

    BILINEAR = 0
    NEAREST_NEIGHBOR = 1


class Target(IntEnum):
    """`model_target` (§4). ncc always writes K210, even for `-t cpu`."""

    CPU = 0
    K210 = 1


class KpuFilterType(IntEnum):
    """`kpu_filter_type` in `kernel_pool_type_cfg.kernel_type` (§9.3)."""

    FILTER_1X1 = 0
    FILTER_3X3 = 1

    @property
    def size(self) -> int:
        return 1 if self is KpuFilterType.FILTER_1X1 else 3


class KpuPoolType(IntEnum):
    """`kpu_pool_type` in `kernel_pool_type_cfg.pool_type` (§9.7)."""

    BYPASS = 0
    MAX_2_S2 = 1
    MEAN_2_S2 = 2
    MAX_4_S4 = 3
    MEAN_4_S4 = 4
    LEFT_TOP_2_S2 = 5
    RIGHT_TOP_2_S2 = 6
    LEFT_TOP_4_S4 = 7
    MEAN_2_S1 = 8
    MAX_2_S1 = 9

    @property
    def stride(self) -> int:
        """Output size is `input // stride` (§9.7)."""
        if self in (KpuPoolType.BYPASS, KpuPoolType.MEAN_2_S1, KpuPoolType.MAX_2_S1):
            return 1
        if self in (KpuPoolType.MAX_4_S4, KpuPoolType.MEAN_4_S4, KpuPoolType.LEFT_TOP_4_S4):
            return 4
        return 2


class NnilOpcode(IntEnum):
    """nnil bytecode (§10), one byte per instruction; `LDC_R4` carries a 4-byte f32 operand."""

    NOP = 0x00
    DUP = 0x01
    POP = 0x02
    LDA_0 = 0x03
    LDC_R4_0 = 0x04
    LDC_R4_1 = 0x05
    LDC_R4 = 0x06
    ABS = 0x20
    CEIL = 0x21
    COS = 0x22
    EXP = 0x23
    FLOOR = 0x24
    LOG = 0x25
    NEG = 0x26
    RSQRT = 0x27
    SIN = 0x28
    SQUARE = 0x29
    ADD = 0x40
    SUB = 0x41
    MUL = 0x42
    DIV = 0x43
    MIN = 0x44
    MAX = 0x45
    CLAMP = 0x80
    RET = 0xA0


NNIL_STACK_DEPTH = 64  # §10


def align_up(value: int, alignment: int) -> int:
    """Round `value` up to a multiple of `alignment`."""
    return (value + alignment - 1) // alignment * alignment
