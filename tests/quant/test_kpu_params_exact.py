"""The exact clamp path of kcc.quant.kpu_params: a KPU layer whose activation is only a clamp
computes z_z + round_half_up((acc + b_acc) * s_z/(s_x s_w)), clamped, for *every* accumulator it can
produce, as TFLite's integer kernels do.

Checked by enumerating the accumulators of small random layers through the simulator's own decoding
of the emitted BN words and activation table (kpu_sim), against exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from kcc.emit.kpu import _activation_table
from kcc.quant.kpu_params import Y_LIMIT, clamp_bn, clamp_bounds, clamp_table
from kcc.quant.params import QuantParam
from kpu_sim.kernels.kpu_activation import activate_exact
from kpu_sim.kernels.kpu_layer import decode_activation

rng = np.random.default_rng(7)


def _reference(acc: np.ndarray, so: float, b_acc: float, z_z: int, lo: int, hi: int) -> np.ndarray:
    """round half up of (acc + b) * so in exact rationals (so and b as the float64s they are)."""
    s, b = Fraction(so), Fraction(b_acc)
    a = acc.astype(object)  # Python integers: floor(((a*bd + bn)*sn + bd*sd/2) / (bd*sd)), exactly
    num = 2 * (a * b.denominator + b.numerator) * s.numerator + b.denominator * s.denominator
    out = (num // (2 * b.denominator * s.denominator)).astype(np.int64) + z_z
    return np.clip(out, lo, hi)


@pytest.mark.parametrize("case", range(12))
def test_every_accumulator_rounds_as_exact_arithmetic(case):
    z_z = int(rng.integers(0, 256)) if case % 3 else 0
    zq = QuantParam(z_z, float(rng.uniform(2, 60)))
    act = [(0.0, 6.0), (0.0, np.inf), (-np.inf, np.inf)][case % 3]
    lo, hi = clamp_bounds(act, zq)
    so = float(rng.uniform(0.5, 2.0) * 10.0 ** rng.uniform(-4, -1.5))  # output steps per acc unit
    acc_max = int(min(2 ** 16, 300 / so))  # covers the whole output range and beyond
    b_acc = np.array([float(rng.integers(-acc_max // 2, acc_max // 2)) if case % 2 else rng.normal(0, 50)])
    e = np.array([1.0])
    bn, up, exact = clamp_bn(so, e, b_acc, np.array([acc_max]), z_z, lo, hi)
    assert exact == 1
    mul, shift, add = (int(v) for v in bn[0])
    acc = np.arange(-acc_max, acc_max + 1, dtype=np.int64)
    y = ((acc * mul) >> shift) + add
    assert np.abs(y).max() < Y_LIMIT
    z = activate_exact(y, decode_activation(_activation_table(clamp_table(act, zq, up))))
    np.testing.assert_array_equal(z, _reference(acc, so, float(b_acc[0]), z_z, lo, hi))


def test_clamp_table_is_one_exact_slope_between_two_constants():
    zq = QuantParam(3, 40.0)
    table = clamp_table((0.0, 6.0), zq, 20)
    lo, hi = clamp_bounds((0.0, 6.0), zq)
    assert (lo, hi) == (3, 243)
    assert table[1].tolist() == [0, 1, 20, 3] and table[2].tolist() == [240 << 20, 0, 0, 243]


def test_a_bias_of_thousands_of_steps_keeps_the_add_within_32_bits():
    """A channel whose bias alone is 5000 output steps: 20 fraction bits would need a 33-bit add."""
    zq = QuantParam(0, 40.0)
    lo, hi = clamp_bounds((0.0, 6.0), zq)
    so = 0.01
    bn, up, exact = clamp_bn(so, np.array([1.0]), np.array([-5000 / so]), np.array([50_000]), 0, lo, hi)
    assert abs(int(bn[0, 2])) < 2 ** 31 and up < 20 and exact == 1
