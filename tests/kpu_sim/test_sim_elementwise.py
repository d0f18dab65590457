"""binary, unary, quantize, dequantize (kmodel_v4.md §8.1, §8.4, §8.13)."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import F32, U8, run_one

import kcc.kmodel as km

rng = np.random.default_rng(1)


def _binary(op, a, b, out_shape, act=km.NO_CLAMP):
    return run_one(
        lambda ins, out: km.Binary(
            input_a=ins[0], input_b=ins[1], output=out, binary_op=op,
            in_a_shape=km.Shape4.of(a.shape), in_b_shape=km.Shape4.of(b.shape), out_shape=km.Shape4.of(out_shape),
            fused_activation=act,
        ),
        [a, b], F32, int(np.prod(out_shape)),
    )  # fmt: skip


@pytest.mark.parametrize(
    "op, fn",
    [
        (km.BinaryOp.ADD, np.add),
        (km.BinaryOp.SUB, np.subtract),
        (km.BinaryOp.MUL, np.multiply),
        (km.BinaryOp.DIV, np.divide),
        (km.BinaryOp.MIN, np.minimum),
        (km.BinaryOp.MAX, np.maximum),
    ],
)
def test_binary_ops_same_shape(op, fn) -> None:
    a = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    b = rng.standard_normal((1, 2, 3, 4)).astype(np.float32) + 3
    np.testing.assert_array_equal(_binary(op, a, b, a.shape), fn(a, b).reshape(-1))


def test_binary_broadcasts_like_numpy_and_clamps() -> None:
    a = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((1, 3, 1, 5)).astype(np.float32)
    got = _binary(km.BinaryOp.ADD, a, b, (1, 3, 4, 5), km.ValueRange(-0.5, 0.75))
    np.testing.assert_array_equal(got, np.clip(a + b, -0.5, 0.75).reshape(-1))


def test_binary_broadcast_of_a_scalar_constant_on_the_left() -> None:
    a = np.array([2.0], dtype=np.float32)
    b = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    got = _binary(km.BinaryOp.SUB, a, b, (1, 1, 2, 3))
    np.testing.assert_array_equal(got, (2.0 - b).reshape(-1))


@pytest.mark.parametrize("op", list(km.UnaryOp))
def test_unary_matches_float64_reference_rounded_once(op) -> None:
    x = rng.uniform(0.1, 4.0, size=(2, 7)).astype(np.float32)
    got = run_one(lambda ins, out: km.Unary(input=ins[0], output=out, unary_op=op), [x], F32, x.size)
    xd = x.astype(np.float64).reshape(-1)
    ref = {
        "ABS": np.abs(xd), "CEIL": np.ceil(xd), "COS": np.cos(xd), "EXP": np.exp(xd), "FLOOR": np.floor(xd),
        "LOG": np.log(xd), "NEG": -xd, "SIN": np.sin(xd), "SQUARE": (x * x).reshape(-1),
        "RSQRT": np.float32(1) / np.sqrt(x.reshape(-1)),
    }[op.name]  # fmt: skip
    np.testing.assert_array_equal(got, np.asarray(ref).astype(np.float32))


def test_quantize_rounds_half_away_from_zero_and_clamps() -> None:
    # scale 2, zero point 10: x*2+10 = 12.5 -> 13, 7.5 -> 8, -0.2*2+10 = 9.6 -> 10, huge -> 255, very negative -> 0
    x = np.array([1.25, -1.25, -0.2, 1000.0, -1000.0, np.nan, 3e9, 0.0], dtype=np.float32)
    got = run_one(
        lambda ins, out: km.Quantize(input=ins[0], output=out, quant_param=km.QuantParam(10, 2.0)), [x], U8, x.size
    )
    # NaN and values beyond int32 convert to INT32_MIN on x86 and clamp to 0 (kmodel_v4.md §3.4, runtime on x86).
    np.testing.assert_array_equal(got, [13, 8, 10, 255, 0, 0, 0, 10])


def test_dequantize_multiplies_by_the_float_reciprocal() -> None:
    q = np.array([0, 1, 127, 128, 255], dtype=np.uint8)
    scale = np.float32(35.91549)
    got = run_one(
        lambda ins, out: km.Dequantize(input=ins[0], output=out, quant_param=km.QuantParam(128, float(scale))),
        [q], F32, q.size,
    )  # fmt: skip
    ref = (q.astype(np.int64) - 128).astype(np.float32) * (np.float32(1) / scale)
    np.testing.assert_array_equal(got, ref)
