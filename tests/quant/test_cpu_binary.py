"""kcc.quant.cpu_binary: nncase's quantized_binary parameters for a binary op on uint8 codes, run by
kpu_sim's kernel (kmodel_v4.md §8.17), against the float op quantized on the output grid."""

import numpy as np
import pytest

from kcc import kmodel as K
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.kmodel.spec import BinaryOp
from kcc.quant.cpu_binary import quant_binary, uint8_binary
from kcc.quant.params import QuantParam, get_quant_param
from kpu_sim.kernels.quantized import quantized_binary
from kpu_sim.memory import Memory

rng = np.random.default_rng(11)


def _run(op, a, b, shape_a, shape_b, out_shape):
    """kpu_sim's quantized_binary on codes a, b (main memory)."""
    mem = Memory(1 << 20, b"")
    ra = K.MemoryRange(K.MemoryType.MAIN, K.DataType.UINT8, 0, a.size)
    rb = K.MemoryRange(K.MemoryType.MAIN, K.DataType.UINT8, 1 << 16, b.size)
    ro = K.MemoryRange(K.MemoryType.MAIN, K.DataType.UINT8, 1 << 17, int(np.prod(out_shape)))
    mem.write(ra, a.ravel())
    mem.write(rb, b.ravel())
    body = K.QuantizedBinary(input_a=ra, input_b=rb, output=ro, binary_op=BinaryOp[op.op.upper()],
                             in_a_shape=K.Shape4(*shape_a), in_b_shape=K.Shape4(*shape_b),
                             out_shape=K.Shape4(*out_shape), input_a_offset=op.a[0], input_a_mul=op.a[1],
                             input_a_shift=op.a[2], input_b_offset=op.b[0], input_b_mul=op.b[1],
                             input_b_shift=op.b[2], output_offset=op.out[0], output_mul=op.out[1],
                             output_shift=op.out[2])
    quantized_binary(mem, body)
    return mem.read(ro, np.uint8).reshape(out_shape)


def _node(name, shape_a, shape_b):
    g = Graph()
    a, b = g.input(0, shape_a), g.input(1, shape_b)
    return g.add(O.Binary(name), (a, b))


FLOAT = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "min": np.minimum, "max": np.maximum}


@pytest.mark.parametrize("name", sorted(FLOAT))
@pytest.mark.parametrize("ranges", [((-1, 3), (-2, 2)), ((0, 6), (-0.01, 0.02)), ((-40, 40), (0, 1))])
def test_the_codes_are_the_float_op_rounded_once(name, ranges):
    """Each output code within one of the float op's on the output grid (the kernel rounds the
    operands onto a common step 2^-e of the finer grid's, then once more to the output grid), and on
    average within a few hundredths of a code: the one rounding to the output grid dominates."""
    (a_lo, a_hi), (b_lo, b_hi) = ranges
    a_q, b_q = get_quant_param(a_lo, a_hi), get_quant_param(b_lo, b_hi)
    a = rng.integers(0, 256, (1, 8, 16, 16), dtype=np.uint8)
    b = rng.integers(0, 256, (1, 8, 16, 16), dtype=np.uint8)
    want = FLOAT[name](a_q.dequantize(a).astype(np.float64), b_q.dequantize(b).astype(np.float64))
    y_q = get_quant_param(float(want.min()), float(want.max()))
    n = _node(name, a.shape, b.shape)
    op = quant_binary(n, a_q, b_q, y_q)
    got = _run(op, a, b, a.shape, b.shape, a.shape).astype(np.float64)
    exact = np.clip(want * y_q.scale + y_q.zero_point, 0, 255)
    assert np.abs(got - exact).max() <= 0.5 + 0.02
    assert np.abs(got - np.round(exact)).mean() <= 0.02


def test_a_gate_broadcast_over_the_map():
    """A squeeze-excite gate [1, C, 1, 1] times a map: the broadcasting loop gives the codes of the
    same-shape loop over the gate repeated (what lower_to_neutral makes of it)."""
    a_q, b_q, y_q = get_quant_param(0, 6), get_quant_param(0, 1), get_quant_param(0, 5)
    a = rng.integers(0, 256, (1, 8, 16, 16), dtype=np.uint8)
    b = rng.integers(0, 256, (1, 8, 1, 1), dtype=np.uint8)
    op = quant_binary(_node("mul", a.shape, b.shape), a_q, b_q, y_q)
    wide = np.broadcast_to(b, a.shape).copy()
    np.testing.assert_array_equal(_run(op, a, b, a.shape, b.shape, a.shape), _run(op, a, wide, a.shape, a.shape, a.shape))


def test_which_binaries_run_on_codes():
    assert uint8_binary(_node("add", (1, 8, 16, 16), (1, 8, 16, 16)))
    assert uint8_binary(_node("mul", (1, 32, 56, 56), (1, 32, 1, 1)))  # a gate: repeated on codes
    assert not uint8_binary(_node("div", (1, 8, 16, 16), (1, 8, 16, 16)))
    g = Graph()
    x = g.input(0, (1, 8, 16, 16))
    assert not uint8_binary(g.add(O.Binary("add"), (x, g.constant(np.ones((1, 8, 16, 16), np.float32)))))


def test_grids_too_far_apart_for_int32_stay_in_float():
    """An add of a grid 2^21 times finer than the other: no common step keeps int32."""
    a_q, b_q = QuantParam(128, 1.0), QuantParam(128, float(2 ** 22))
    assert quant_binary(_node("add", (1, 4, 4, 4), (1, 4, 4, 4)), a_q, b_q, QuantParam(128, 1.0)) is None
