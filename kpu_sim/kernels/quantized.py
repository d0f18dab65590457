"""uint8 CPU kernels: quantized_conv2d, quantized_matmul, quantized_binary, table_lookup1d
(kmodel_v4.md §8.15-§8.18, kpu_semantics.md §4.4), as nncase v0.2.0-beta4's `neutral_kernels.h`.

All three arithmetic kernels end the same way: an int32 `value` goes through
`mul_and_carry_shift(value, mul, shift)` (int64 product, add 2^(shift-1), arithmetic shift,
truncate to int32), then `+ output_offset` (int32, wraps) and a clamp to 0..255.
Note the sign convention: these neutral kernels **add** their input/filter offsets (ncc stores
-zero_point there); the cpu_quantized_* kernels (cpu.py) subtract them.
"""

from __future__ import annotations

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import (
    BinaryOp,
    DataType,
    QuantizedBinary,
    QuantizedConv2D,
    QuantizedMatMul,
    TableLookup1D,
)
from kpu_sim.kernels.elementwise import broadcast_to, shape_count
from kpu_sim.kernels.intconv import conv_sums, matmul_sums, output_size
from kpu_sim.kernels.intmath import c_div_trunc, mul_and_carry_shift, wrap_i32
from kpu_sim.memory import Memory

I64 = np.int64
INT32_MIN = -(2**31)


def requantize(value: np.ndarray, mul: int, shift: int, offset: int) -> np.ndarray:
    """clamp((int32)(mul_and_carry_shift(wrap32(value), mul, shift) + offset), 0, 255) as uint8."""
    out = wrap_i32(mul_and_carry_shift(wrap_i32(value), mul, shift) + I64(wrap_i32(offset)))
    return np.clip(out, 0, 255).astype(np.uint8)


def quantized_conv2d(mem: Memory, body: QuantizedConv2D) -> None:
    """§8.15: NCHW grouped conv; value = bias[o] + sum (x + input_offset) * (w + filter_offset)."""
    n, c, h, w = body.in_shape
    shape_count(body.in_shape, "in_shape")
    groups = body.groups
    if groups <= 0 or body.out_channels < 0:
        raise SimulatorError(f"invalid groups {groups} / out_channels {body.out_channels}")
    g_ic, g_oc = c // groups, body.out_channels // groups
    oc = groups * g_oc  # channels the runtime computes
    oh = output_size(h, body.filter_h, body.stride_h, body.dilation_h, body.padding_h)
    ow = output_size(w, body.filter_w, body.stride_w, body.dilation_w, body.padding_w)
    mem.require(body.output, n * oc * oh * ow)
    x = mem.read(body.input, np.uint8, body.in_shape.count).reshape(n, c, h, w).astype(I64) + body.input_offset
    weights = body.weights[: oc * g_ic * body.filter_h * body.filter_w].astype(I64) + body.filter_offset
    sums = conv_sums(
        x, weights.reshape(oc, g_ic, body.filter_h, body.filter_w), groups,
        (body.stride_h, body.stride_w), (body.dilation_h, body.dilation_w), body.padding_h, body.padding_w,
    )  # fmt: skip
    value = sums + body.bias[:oc].astype(I64).reshape(1, oc, 1, 1)
    mem.write(body.output, requantize(value, body.output_mul, body.output_shift, body.output_offset))


def quantized_matmul(mem: Memory, body: QuantizedMatMul) -> None:
    """§8.16: out[r][c] = requantize(bias[c] + sum_k (a[r][k] + a_off) * (b[k][c] + b_off))."""
    rows, cols, b_cols = body.a_rows, body.a_cols, body.b_cols
    if min(rows, cols, b_cols) < 0:
        raise SimulatorError(f"negative matmul size ({rows}, {cols}, {b_cols})")
    mem.require(body.output, rows * b_cols)
    a = mem.read(body.input_a, np.uint8, rows * cols).reshape(rows, cols).astype(I64) + body.input_a_offset
    b = mem.read(body.input_b, np.uint8, cols * b_cols).reshape(cols, b_cols).astype(I64) + body.input_b_offset
    value = matmul_sums(a, b) + body.bias.astype(I64)[None, :]
    mem.write(body.output, requantize(value, body.output_mul, body.output_shift, body.output_offset))


def _binary_op(op: BinaryOp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The int32 lambdas of `neutral_ops.cpp` (results wrap to int32)."""
    if op is BinaryOp.ADD:
        return wrap_i32(a + b)
    if op is BinaryOp.SUB:
        return wrap_i32(a - b)
    if op is BinaryOp.MUL:
        return wrap_i32(a * b)
    if op is BinaryOp.MIN:
        return np.minimum(a, b)
    if op is BinaryOp.MAX:
        return np.maximum(a, b)
    # DIV: (a + b / 2) / b in C int32 division; x86 traps on b == 0 and on INT32_MIN / -1
    if np.any(b == 0):
        raise SimulatorError("quantized_binary div: division by zero (the runtime crashes)")
    numerator = wrap_i32(a + c_div_trunc(b, np.full_like(b, 2)))
    if np.any((numerator == INT32_MIN) & (b == -1)):
        raise SimulatorError("quantized_binary div: INT32_MIN / -1 overflows (the runtime crashes)")
    return c_div_trunc(numerator, b)


def quantized_binary(mem: Memory, body: QuantizedBinary) -> None:
    """§8.17: a' = mcs(a + a_off), b' = mcs(b + b_off), out = requantize(op(a', b')).

    Equal input shapes take the runtime's flat path (out_shape unused); otherwise out_shape is
    iterated and inputs are broadcast with `get_reduced_offset`.
    """
    a_shape, b_shape = body.in_a_shape, body.in_b_shape
    a = mem.read(body.input_a, np.uint8, shape_count(a_shape, "in_a_shape")).astype(I64)
    b = mem.read(body.input_b, np.uint8, shape_count(b_shape, "in_b_shape")).astype(I64)
    if a_shape != b_shape:
        mem.require(body.output, shape_count(body.out_shape, "out_shape"))
        a = broadcast_to(a.reshape(a_shape), body.out_shape).reshape(-1)
        b = broadcast_to(b.reshape(b_shape), body.out_shape).reshape(-1)
    a = mul_and_carry_shift(wrap_i32(a + body.input_a_offset), body.input_a_mul, body.input_a_shift)
    b = mul_and_carry_shift(wrap_i32(b + body.input_b_offset), body.input_b_mul, body.input_b_shift)
    value = _binary_op(body.binary_op, a, b)
    mem.write(body.output, requantize(value, body.output_mul, body.output_shift, body.output_offset))


def table_lookup1d(mem: Memory, body: TableLookup1D) -> None:
    """§8.18: out[i] = table[in[i]] for every byte of the input range (uint8 input only)."""
    if body.input.datatype is not DataType.UINT8:
        raise SimulatorError("table_lookup1d input must be uint8 (the runtime returns an error)")
    x = mem.read(body.input, np.uint8)
    table = mem.read(body.table, np.uint8)
    if x.size and int(x.max()) >= table.size:
        raise SimulatorError(f"input value {int(x.max())} indexes past the {table.size}-byte table")
    mem.write(body.output, table[x])
