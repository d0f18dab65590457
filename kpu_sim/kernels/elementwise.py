"""Elementwise kernels: binary, unary, quantize, dequantize (kmodel_v4.md §8.1, §8.4, §8.13).

Semantics follow nncase v0.2.0-beta4 `neutral_ops.cpp` / `neutral_kernels.h` on x86:
float32 arithmetic, the fused clamp after the op, element counts taken from the ranges where
the runtime takes them from the ranges.
"""

from __future__ import annotations

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import Binary, BinaryOp, Dequantize, Quantize, Shape4, Unary
from kpu_sim.kernels.fp32 import (
    F32,
    UNARY_FUNCTIONS,
    apply_activation,
    c_max,
    c_min,
    round_half_away,
    to_int32,
)
from kpu_sim.memory import Memory

BINARY_FUNCTIONS = {
    BinaryOp.ADD: lambda a, b: a + b,
    BinaryOp.SUB: lambda a, b: a - b,
    BinaryOp.MUL: lambda a, b: a * b,
    BinaryOp.DIV: lambda a, b: a / b,
    BinaryOp.MIN: c_min,
    BinaryOp.MAX: c_max,
}


def shape_count(shape: Shape4, what: str) -> int:
    if min(shape) < 0:
        raise SimulatorError(f"{what} {tuple(shape)} has a negative dimension")
    return shape.count


def broadcast_to(x: np.ndarray, out_shape: Shape4) -> np.ndarray:
    """`get_reduced_offset` broadcasting: index i of an axis reads i if i < dim, else 0.

    This is NumPy broadcasting for axes of size 1 and for equal axes, and also defines what the
    runtime does for any other pair of sizes.
    """
    index = [np.where(np.arange(o) < d, np.arange(o), 0) for d, o in zip(x.shape, out_shape)]
    return x[np.ix_(*index)]


def binary(mem: Memory, body: Binary) -> None:
    """§8.1. Equal input shapes take the runtime's flat path (out_shape is then not used)."""
    op = BINARY_FUNCTIONS[body.binary_op]
    a_shape, b_shape = body.in_a_shape, body.in_b_shape
    a = mem.read(body.input_a, F32, shape_count(a_shape, "in_a_shape"))
    b = mem.read(body.input_b, F32, shape_count(b_shape, "in_b_shape"))
    if a_shape == b_shape:
        out = op(a, b)
    else:
        mem.require(body.output, shape_count(body.out_shape, "out_shape") * 4)
        out = op(broadcast_to(a.reshape(a_shape), body.out_shape), broadcast_to(b.reshape(b_shape), body.out_shape))
    mem.write(body.output, apply_activation(np.asarray(out, dtype=F32), body.fused_activation))


def unary(mem: Memory, body: Unary) -> None:
    """§8.13: count = input.size / 4."""
    x = mem.read(body.input, F32)
    mem.write(body.output, np.asarray(UNARY_FUNCTIONS[body.unary_op.name.lower()](x), dtype=F32))


def quantize(mem: Memory, body: Quantize) -> None:
    """§8.4: q = clamp((int32)roundf(x * scale + zero_point), 0, 255), all in float32."""
    x = mem.read(body.input, F32)
    t = x * F32(body.quant_param.scale) + F32(body.quant_param.zero_point)
    q = to_int32(round_half_away(t))
    mem.write(body.output, np.clip(q, 0, 255).astype(np.uint8))


def dequantize(mem: Memory, body: Dequantize) -> None:
    """§8.4: x = (q - zero_point) * (1.f / scale); count = input.size."""
    q = mem.read(body.input, np.uint8).astype(np.int64)
    div = F32(1.0) / F32(body.quant_param.scale)
    mem.write(body.output, (q - body.quant_param.zero_point).astype(F32) * div)
