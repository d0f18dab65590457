"""`KERNELS`: opcode -> kernel function. A kernel is `fn(memory, body) -> None`.

Kernels raise `SimulatorError` without node context; the program runner adds
"node N (opcode): ". Every kmodel v4 opcode has a kernel.

Families: elementwise / movement / reduce / conv / nnil (float32 neutral ops), quantized
(uint8 neutral ops), cpu (runtime-only NHWC ops 0x1001-0x1005), k210 (kpu_upload) and
kpu_conv (kpu_conv2d with kpu_layer, kpu_post, kpu_activation, kpu_pool).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kcc.kmodel import Opcode
from kpu_sim.kernels import (
    conv,
    cpu,
    elementwise,
    k210,
    kpu_conv,
    movement,
    nnil,
    quantized,
    reduce,
)
from kpu_sim.memory import Memory

Kernel = Callable[[Memory, Any], None]


KERNELS: dict[Opcode, Kernel] = {
    Opcode.BINARY: elementwise.binary,
    Opcode.CONCAT: movement.concat,
    Opcode.CONV2D: conv.conv2d,
    Opcode.DEQUANTIZE: elementwise.dequantize,
    Opcode.MATMUL: conv.matmul,
    Opcode.PAD: movement.pad,
    Opcode.QUANTIZE: elementwise.quantize,
    Opcode.REDUCE: reduce.reduce,
    Opcode.REDUCE_WINDOW2D: reduce.reduce_window2d,
    Opcode.MEMORY_COPY: movement.memory_copy,
    Opcode.RESIZE_IMAGE: movement.resize_image,
    Opcode.SOFTMAX: reduce.softmax,
    Opcode.TRANSPOSE: movement.transpose,
    Opcode.STRIDED_SLICE: movement.strided_slice,
    Opcode.UNARY: elementwise.unary,
    Opcode.QUANTIZED_CONV2D: quantized.quantized_conv2d,
    Opcode.QUANTIZED_MATMUL: quantized.quantized_matmul,
    Opcode.QUANTIZED_BINARY: quantized.quantized_binary,
    Opcode.TABLE_LOOKUP1D: quantized.table_lookup1d,
    Opcode.CONV2D_TRANSPOSE: conv.conv2d_transpose,
    Opcode.NNIL_UNARY_METHOD: nnil.nnil_unary_method,
    Opcode.CPU_CONV2D: cpu.cpu_conv2d,
    Opcode.CPU_DEPTHWISE_CONV2D: cpu.cpu_depthwise_conv2d,
    Opcode.CPU_REDUCE_WINDOW2D: reduce.cpu_reduce_window2d,
    Opcode.CPU_QUANTIZED_CONV2D: cpu.cpu_quantized_conv2d,
    Opcode.CPU_QUANTIZED_DEPTHWISE_CONV2D: cpu.cpu_quantized_depthwise_conv2d,
    Opcode.KPU_UPLOAD: k210.kpu_upload,
    Opcode.KPU_CONV2D: kpu_conv.kpu_conv2d,
}
