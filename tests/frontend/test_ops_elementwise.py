"""Element-wise ops, activations, softmax, L2 normalisation and reductions against TFLite."""

from __future__ import annotations

import numpy as np
import pytest
from tflite_builder import TfliteBuilder, check_against_tflite

from kcc.ir import ops as O

rng = np.random.default_rng(2)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _unary_model(opcode, shape, **opts):
    b = TfliteBuilder()
    b.output(b.op(opcode, [b.input(shape)], **opts))
    return b


BINARY = ["ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE"]


@pytest.mark.parametrize("opcode", BINARY)
@pytest.mark.parametrize("a_shape,b_shape", [((1, 4, 5, 3), (1, 4, 5, 3)), ((1, 4, 5, 3), (3,)),
                                             ((2, 3), (2, 1)), ((1, 4, 1, 3), (1, 1, 5, 1))])
def test_binary_two_inputs_broadcast(opcode, a_shape, b_shape):
    b = TfliteBuilder()
    x, y = b.input(list(a_shape)), b.input(list(b_shape))
    b.output(b.op(opcode, [x, y]))
    rhs = randn(*b_shape)
    if opcode == "DIV":
        rhs = np.where(np.abs(rhs) < 0.1, 1.0, rhs).astype(np.float32)
    check_against_tflite(b, [randn(*a_shape), rhs])


@pytest.mark.parametrize("opcode", BINARY)
@pytest.mark.parametrize("c_shape", [(), (1,), (3,), (1, 1, 5, 3), (4, 1, 1)])
@pytest.mark.parametrize("const_first", [False, True])
def test_binary_with_constant(opcode, c_shape, const_first):
    b = TfliteBuilder()
    x = b.input([1, 4, 5, 3])
    c = b.const(rng.uniform(0.5, 2.0, c_shape).astype(np.float32))
    b.output(b.op(opcode, [c, x] if const_first else [x, c]))
    check_against_tflite(b, [randn(1, 4, 5, 3)])


@pytest.mark.parametrize("opcode", ["ADD", "SUB", "MUL", "DIV"])
@pytest.mark.parametrize("act", ["RELU", "RELU6", "RELU_N1_TO_1"])
def test_binary_fused_activation(opcode, act):
    b = TfliteBuilder()
    x, y = b.input([1, 3, 3, 4]), b.input([1, 3, 3, 4])
    b.output(b.op(opcode, [x, y], fused_activation_function=act))
    check_against_tflite(b, [randn(1, 3, 3, 4, scale=4.0), rng.uniform(0.5, 2, (1, 3, 3, 4)).astype(np.float32)])


UNARY_DOMAINS = {"ABS": (-3, 3), "CEIL": (-3, 3), "COS": (-3, 3), "EXP": (-3, 3), "FLOOR": (-3, 3),
                 "LOG": (0.1, 5), "NEG": (-3, 3), "RSQRT": (0.1, 5), "SIN": (-3, 3), "SQRT": (0, 5),
                 "SQUARE": (-3, 3), "TANH": (-4, 4), "LOGISTIC": (-8, 8), "HARD_SWISH": (-5, 5),
                 "RELU": (-3, 3), "RELU6": (-3, 9), "RELU_N1_TO_1": (-3, 3), "RELU_0_TO_1": (-3, 3),
                 "ROUND": (-3, 3)}


@pytest.mark.parametrize("opcode", sorted(UNARY_DOMAINS))
@pytest.mark.parametrize("shape", [(1, 4, 4, 3), (7,)])
def test_unary(opcode, shape):
    lo, hi = UNARY_DOMAINS[opcode]
    x = rng.uniform(lo, hi, shape).astype(np.float32)
    if opcode == "ROUND":
        x.flat[:4] = [0.5, 1.5, -2.5, 2.5]  # ties go to even
    check_against_tflite(_unary_model(opcode, list(shape)), [x])


@pytest.mark.parametrize("logistic_first", [False, True])
def test_logistic_times_its_input_becomes_silu(logistic_first):
    """The converter's SiLU / Swish, LOGISTIC then MUL: canonicalize makes it one silu (fuse_silu)."""
    b = TfliteBuilder()
    x = b.input([1, 5, 5, 3])
    s = b.op("LOGISTIC", [x])
    b.output(b.op("MUL", [s, x] if logistic_first else [x, s]))
    g = check_against_tflite(b, [randn(1, 5, 5, 3, scale=4.0)])
    assert [n.op for n in g.nodes if isinstance(n.op, (O.Unary, O.Binary))] == [O.Unary("silu")]


@pytest.mark.parametrize("alpha", [0.1, 0.3, 1.5])
def test_leaky_relu(alpha):
    check_against_tflite(_unary_model("LEAKY_RELU", [1, 5, 5, 2], alpha=alpha), [randn(1, 5, 5, 2)])


@pytest.mark.parametrize("alpha_shape", [(1, 1, 3), (3,), (4, 1, 3)])
def test_prelu(alpha_shape):
    b = TfliteBuilder()
    x = b.input([1, 4, 5, 3])
    b.output(b.op("PRELU", [x, b.const(rng.uniform(-1, 1, alpha_shape).astype(np.float32))]))
    check_against_tflite(b, [randn(1, 4, 5, 3)])


@pytest.mark.parametrize("shape", [(2, 10), (1, 3, 4, 6)])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_softmax(shape, beta):
    check_against_tflite(_unary_model("SOFTMAX", list(shape), beta=beta), [randn(*shape, scale=3.0)])


@pytest.mark.parametrize("shape", [(2, 10), (1, 3, 4, 6)])
def test_l2_normalization(shape):
    x = randn(*shape)
    x[0, ..., :] *= 1e-9  # a row whose norm is below TFLite's epsilon (1e-6)
    check_against_tflite(_unary_model("L2_NORMALIZATION", list(shape)), [x])


@pytest.mark.parametrize("opcode", ["MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"])
@pytest.mark.parametrize("axes", [[1, 2], [-1], [0, 3], [2], [1, 2, 3]])
@pytest.mark.parametrize("keep", [False, True])
def test_reduce(opcode, axes, keep):
    b = TfliteBuilder()
    x = b.input([2, 4, 5, 3])
    b.output(b.op(opcode, [x, b.const(np.array(axes, np.int32))], keep_dims=keep))
    check_against_tflite(b, [randn(2, 4, 5, 3)])


def test_global_average_pool_mean_loses_its_transposes():
    """conv -> MEAN over NHWC (1, 2): after canonicalize the reduce works on NCHW axes (2, 3)."""
    b = TfliteBuilder()
    x = b.input([1, 6, 6, 3])
    y = b.op("CONV_2D", [x, b.const(randn(8, 3, 3, 3)), b.const(randn(8))], padding="SAME", stride_w=1,
             stride_h=1)
    b.output(b.op("MEAN", [y, b.const(np.array([1, 2], np.int32))], keep_dims=False))
    g = check_against_tflite(b, [randn(1, 6, 6, 3)])
    assert not any(isinstance(n.op, O.Transpose) for n in g.nodes)
    (red,) = [n for n in g.nodes if isinstance(n.op, O.Reduce)]
    assert red.op.axes == (2, 3)
