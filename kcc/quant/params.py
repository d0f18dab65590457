"""Quantization arithmetic of nncase v0.2, reproduced in float32 (kpu_semantics.md §4.1).

Convention (used everywhere in kmodel v4, kmodel_v4.md §3.4): a quant param is `(zero_point z,
scale s)` with `q = round(x*s + z)` and `x = (q - z)/s`, so `s` is *levels per unit*, the inverse of
TFLite's scale. The range fixup every quant param starts from, `fixup_range`, is in
`kcc.target.quant_rules` (legalize_kpu applies it to weight ranges too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kcc.target.quant_rules import fixup_range

F32 = np.float32
FLT_MIN = float(np.finfo(np.float32).tiny)  # 1.17549435e-38, nncase's get_range start for max


@dataclass(frozen=True)
class QuantParam:
    zero_point: int
    scale: float  # levels per unit (float32 value)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """q = clamp(roundf(x*s + z), 0, 255) in float32, half away from zero (x86 simulator)."""
        v = np.asarray(x, F32) * F32(self.scale) + F32(self.zero_point)
        return np.clip(round_half_away(v), 0, 255).astype(np.uint8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """x = (q - z) * (1/s), with the reciprocal taken once in float32."""
        return ((np.asarray(q, F32) - F32(self.zero_point)) * (F32(1) / F32(self.scale))).astype(F32)

    @property
    def real_range(self) -> tuple[float, float]:
        inv = 1.0 / self.scale
        return (-self.zero_point * inv, (255 - self.zero_point) * inv)


@dataclass(frozen=True)
class FixedMul:
    """v ~= mul * 2^-shift with |mul| < 2^bits (mul is kept as the float nncase rounds later)."""

    mul: float
    shift: int

    @property
    def rounded_mul(self) -> int:
        return int(round_half_away(np.float32(self.mul)))


def round_half_away(v):
    """C `roundf`: half away from zero (numpy rounds half to even). Computed in float64, where
    |v| + 0.5 is exact for every float32 v (in float32, 0.49999997 + 0.5 would round up to 1)."""
    a = np.asarray(v, np.float64)
    r = np.sign(a) * np.floor(np.abs(a) + 0.5)
    return r if r.ndim else float(r)


def get_range(data: np.ndarray) -> tuple[float, float]:
    """min/max over finite values; the max starts at FLT_MIN, as nncase's get_range does."""
    d = np.asarray(data, F32).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return (float(np.finfo(F32).max), FLT_MIN)
    return (float(d.min()), max(float(d.max()), FLT_MIN))


def get_quant_param(lo: float, hi: float, bits: int = 8) -> QuantParam:
    """nncase get_quant_param: fixup, s = (2^bits - 1)/(hi - lo), z = roundf(-lo*s), all float32."""
    lo, hi = fixup_range(lo, hi)
    scale = F32(F32((1 << bits) - 1) / F32(F32(hi) - F32(lo)))
    zp = round_half_away(float(F32(-F32(lo) * scale)))
    return QuantParam(int(zp), float(scale))


class GridRange(tuple):
    """A range (lo, hi) that also fixes its quant param: the grid of a pre-quantized model's tensor
    (kcc.quant.prequantized). get_quant_param's float32 division can land one ulp away from that
    grid's scale, so `range_param` hands the grid over as it is."""

    param: QuantParam

    def __new__(cls, lo: float, hi: float, param: QuantParam) -> GridRange:
        obj = super().__new__(cls, (lo, hi))
        obj.param = param
        return obj


def range_param(r: tuple[float, float]) -> QuantParam:
    """The quant param of a range: its own grid for a GridRange, else get_quant_param."""
    return r.param if isinstance(r, GridRange) else get_quant_param(*r)


def get_fixed_mul(value: float, max_bits: int, max_shift: int, signed: bool) -> FixedMul:
    """nncase get_fixed_mul in float32: value ~= mul * 2^-shift, |mul| < 2^(max_bits - signed)."""
    bits = max_bits - 1 if signed else max_bits
    value = F32(value)
    if value == 0:
        return FixedMul(0.0, 0)
    m, e = math.frexp(float(value))
    m = F32(m)
    if abs(value) > 1:
        shift = min(max_shift, bits - e)
        mul = F32(m * F32(2.0 ** (shift + e)))
    else:
        t = min(max_shift + e, bits)
        mul = F32(m * F32(2.0 ** t))
        shift = t - e
    return FixedMul(float(mul), int(shift))
