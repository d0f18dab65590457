"""Integer arithmetic of the nncase v0.2 runtime, vectorised and exact (kpu_semantics.md §3, §4.4).

The C++ reference (`runtime_op_utility.h`, built for x86-64 where `ncc infer` ran) relies on
two's-complement wrap-around and on the x86 shift instructions, so these helpers reproduce both:

* int32 arithmetic that overflows wraps (`wrap_i32`); int64 arithmetic wraps in numpy as in C.
* A variable shift count is masked by the CPU: 5 bits for a 32-bit operand, 6 bits for 64-bit.
  The C++ is undefined there, but the compiled code does exactly this; nncase itself never
  emits such shifts (activation shifts <= 20, output shifts < 32), so it only matters for
  hand-made or corrupted files, which then still run deterministically.
"""

from __future__ import annotations

import numpy as np

I64 = np.int64
U64 = np.uint64


def wrap_i32(x: np.ndarray | int) -> np.ndarray:
    """(int32_t) of an int64 value: keep the low 32 bits, as int64 for further arithmetic."""
    return np.asarray(x, dtype=I64).astype(np.int32).astype(I64)


def c_div_trunc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C integer division (truncates toward zero); callers exclude b == 0 and INT_MIN / -1."""
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


def carry_shift_half_up(value: np.ndarray, shift: int) -> np.ndarray:
    """`carry_shift<int64_t, false>(value, shift)`: add 2^(shift-1), arithmetic shift right.

    `shift` is the runtime's uint8 argument (0..255). The 64-bit shifts mask their count to
    6 bits on x86 (see module docstring); the `+=` wraps like the C++ on int64 overflow.
    """
    shift &= 0xFF
    v = np.asarray(value, dtype=I64)
    if shift == 0:
        return v
    rounding = I64(1) << I64((shift - 1) & 63)
    return (v + rounding) >> I64(shift & 63)


def mul_and_carry_shift(value: np.ndarray, mul: int, shift: int) -> np.ndarray:
    """`mul_and_carry_shift`: (int32)carry_shift((int64)value * mul, (uint8)shift), as int64.

    Used by every quantized CPU kernel (§4.4): `value` is an int32 (passed as int64), `mul` an
    int32, and the result is truncated back to int32.
    """
    product = np.asarray(value, dtype=I64) * I64(wrap_i32(mul))
    return wrap_i32(carry_shift_half_up(product, int(shift) & 0xFF))


def carry_shift_banker(value: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """`carry_shift<int64_t, true>` element-wise, with a per-element uint8 `shift` (§3 step 4).

    For 0 < s: I = v >> s, F = v & (2^s - 1) (compared as uint64), h = (int)1 << (s - 1)
    (converted to uint64 for the comparison), sign = v < 0 ? -1 : 1; the result is I if F < h,
    I + sign if F > h, and on a tie I + sign if I is odd else I. s = 0 returns v. So positive
    values round half to even, negative ones get the "floor then -1" bias (-5 >> 2 -> -3).
    x86 masks: the int64 shifts use s & 63, the int `1 << (s - 1)` uses (s - 1) & 31, and
    `1 << 31` is INT32_MIN, which as uint64 exceeds every F: s = 32 degenerates to floor.
    """
    v = np.asarray(value, dtype=I64)
    s = np.asarray(shift, dtype=I64) & 0xFF
    s64 = (s & 63).astype(U64)
    integral = v >> s64.astype(I64)
    mask = (U64(1) << s64) - U64(1)
    fractional = v.astype(U64) & mask  # int64 -> uint64 keeps the bits (two's complement)
    k = (s - 1) & 31
    half = np.where(k == 31, U64(2**64 - 2**31), (U64(1) << k.astype(U64)))
    sign = np.where(v < 0, I64(-1), I64(1))
    up = (fractional > half) | ((fractional == half) & ((integral & 1) == 1))
    result = integral + np.where(up, sign, I64(0))
    return np.where(s == 0, v, result)


def carry_shift_banker_scalar(value: int, shift: int) -> int:
    """Python-int version of `carry_shift_banker` (tests, table analysis); same x86 semantics."""
    return int(carry_shift_banker(np.array([value], dtype=I64), np.array([shift], dtype=I64))[0])
