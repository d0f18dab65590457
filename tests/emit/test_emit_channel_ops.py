"""Ops with a per-channel constant as lower_to_neutral leaves them (1x1 depthwise conv2d, same-shape
adds) run on kpu_sim as the float interpreter computes them, and the kmodel holds no broadcast binary."""

import numpy as np
import pytest

import kpu_sim
from kcc import kmodel
from kcc.emit import emit
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.passes.float_prelu import PRELU_RUN_BYTES, prelu_runs
from kcc.passes.lower_to_neutral import lower_to_neutral


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (1.0, 3.0), (-2.0, 2.0)])
def test_channel_prelu_in_the_simulator_equals_the_float_prelu(low, high):
    rng = np.random.default_rng(7)
    c = 6
    alpha = rng.uniform(low, high, (c, 1, 1)).astype(np.float32)
    g = Graph()
    x = g.add(O.Unary("neg"), (g.input(0, (1, c, 5, 7)),), "x")  # a computed map (a graph input is kept)
    g.outputs = [g.add(O.PRelu(), (x, g.constant(alpha, "alpha")), "y")]
    xi = rng.standard_normal((1, c, 5, 7)).astype(np.float32) * 4
    xi[0, 0, 0, :3] = (0.0, -0.0, np.float32(1e-30))  # the knot: zeros and a tiny negative x
    xn = -xi
    want = np.where(xn >= 0, xn, alpha[None] * xn)  # TFLite's PRELU
    model = emit(lower_to_neutral(g)).model
    got = kpu_sim.load(kmodel.write(model)).run([xi])[0].reshape(want.shape)
    mixed = low < 1.0 < high
    if mixed:  # max(x, a x) / min(x, a x) in runs of channels: TFLite's one product, bit for bit
        np.testing.assert_array_equal(got, want)
    else:  # x + (a-1)*x rounds twice where a*x rounds once: within 2 float32 ulps of TFLite's value
        np.testing.assert_allclose(got, want, rtol=2.5e-7, atol=0)
    np.testing.assert_array_equal(got[xn >= 0], xn[xn >= 0])  # the positive side is x, bit for bit
    np.testing.assert_array_equal(got, run(lower_to_neutral(g), [xi])[0])  # kpu_sim == kcc.eval
    binaries = [n.body for n in model.nodes if n.name == "binary"]
    assert binaries and all(b.in_a_shape == b.in_b_shape for b in binaries)
    # x's map and the PReLU's (each run's result written into its channels), and a run's products
    runs = prelu_runs(alpha.ravel(), 5 * 7) if mixed else []
    products = max((c1 - c0 for c0, c1, _ in runs), default=0) * 5 * 7 * 4
    assert model.main_mem == 2 * xi.nbytes + products


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("const_first", [False, True])
@pytest.mark.parametrize("shape", [(), (1, 1, 1, 1), (4, 1, 1), (1, 4, 1, 1)])
def test_binary_with_a_channel_constant_is_a_depthwise_conv2d_with_the_same_floats(op, const_first, shape):
    rng = np.random.default_rng(3)
    g = Graph()
    x = g.add(O.Unary("neg"), (g.input(0, (1, 4, 3, 5)),), "x")
    c = g.constant(rng.standard_normal(shape).astype(np.float32) * 3, "c")
    g.outputs = [g.add(O.Binary(op, (-2.0, 2.0)), (c, x) if const_first else (x, c), "y")]
    xi = rng.standard_normal((1, 4, 3, 5)).astype(np.float32) * 2
    low = lower_to_neutral(g)
    assert [n.op.kind for n in low.nodes if not n.is_constant and n.op.kind != "input"] == ["unary", "conv2d"]
    model = emit(low).model
    got = kpu_sim.load(kmodel.write(model)).run([xi])[0]
    want = run(g, [xi])[0]
    np.testing.assert_array_equal(got.reshape(want.shape), want)  # bit for bit (-0.0 == 0.0)


@pytest.mark.parametrize("op, shape", [("div", (4, 1, 1)), ("max", ()), ("add", (4, 3, 1)),
                                       ("add", (1, 4, 3, 5))])
def test_other_binaries_stay_binary(op, shape):
    """div (x * (1/c) is not x / c in float32), min/max, and constants that vary along H or W."""
    g = Graph()
    x = g.add(O.Unary("neg"), (g.input(0, (1, 4, 3, 5)),), "x")
    c = np.random.default_rng(5).uniform(1, 2, shape).astype(np.float32)
    g.outputs = [g.add(O.Binary(op), (x, g.constant(c, "c")), "y")]
    assert [n.op.kind for n in lower_to_neutral(g).nodes if not n.is_constant][-1] == "binary"


def test_clamp_of_a_map_is_a_depthwise_conv2d_with_the_same_floats():
    g = Graph()
    x = g.add(O.Unary("neg"), (g.input(0, (1, 3, 4, 5)),), "x")
    flat = g.input(1, (2, 7))
    g.outputs = [g.add(O.Clamp(0.0, 6.0), (x,), "relu6"), g.add(O.Clamp(-1.0, 1.0), (flat,), "c2")]
    low = lower_to_neutral(g)
    kinds = [n.op.kind for n in low.nodes if not n.is_constant and n.op.kind != "input"]
    assert kinds == ["unary", "conv2d", "clamp"]  # a 2-D clamp is left to emit (a binary add of 0)
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((1, 3, 4, 5)).astype(np.float32) * 5,
          rng.standard_normal((2, 7)).astype(np.float32)]
    xs[0][0, 0, 0, :2] = (0.0, -0.0)
    got = kpu_sim.load(kmodel.write(emit(low).model)).run(xs)
    for a, w in zip(got, run(g, xs)):
        np.testing.assert_array_equal(a.reshape(w.shape), w)


def test_prelu_runs_follow_the_slopes_side_of_1_within_the_run_bytes():
    slopes = np.array([0.5, -0.5, 2.0, 2.0, 3.0, 0.1], np.float32)
    assert prelu_runs(slopes, 1) == [(0, 2, False), (2, 5, True), (5, 6, False)]
    plane = PRELU_RUN_BYTES // (4 * 2)  # two channels of float a run
    assert prelu_runs(slopes, plane) == [(0, 2, False), (2, 4, True), (4, 5, True), (5, 6, False)]
