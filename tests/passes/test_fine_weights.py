"""fine_weights: the coarse/fine split of a depthwise layer's weights and the pair's float values."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.passes import fine_weights as F
from kcc.target.quant_rules import uint8_grid

rng = np.random.default_rng(12)


def test_the_coarse_weights_lie_on_the_grid_and_the_fine_ones_sum_to_under_half_a_step():
    w = rng.uniform(-37, 39, (5, 1, 3, 3))
    k = F.grid_steps(w)
    assert k == 3  # a span of 76 and the centre tap 1/k within 255 steps
    hi, lo = F.split_weights(w, k)
    np.testing.assert_allclose(hi + lo, w, atol=1e-12)
    np.testing.assert_allclose(hi * k, np.round(hi * k), atol=1e-9)
    assert np.abs(lo).max() <= 1.0 / k  # each tap at most one step off (its carried error included)
    assert np.abs(lo.sum(axis=(1, 2, 3))).max() <= 0.5 / k + 1e-12


def test_a_grid_whose_closest_weights_skip_codes_is_found():
    """B's weights: taps on the grid of step 1/3, a centre weight 2/3, zeros; no two on neighbouring
    codes. The grid is still found (a weight grid kcc.quant keeps exactly); a float layer's is not."""
    w = np.array([-37, -12, 0, 2, 14, 40]) / 3.0
    z, s = uint8_grid(w.astype(np.float32))
    assert (z, round(s, 6)) == (37, 3.0)
    assert uint8_grid(rng.uniform(-1, 1, 50).astype(np.float32)) is None


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, ((1, 1), (1, 1))), (3, 2, ((0, 1), (0, 1))),
                                                      (1, 1, ((0, 0), (0, 0)))])
def test_the_pair_computes_the_depthwise_conv(kernel, stride, padding):
    """A then B (any stride and padding of the conv; t read at B's centre tap) give the conv's float
    values: exact but for float32 rounding, as long as t stays unclamped (no clamp in the float graph)."""
    c = 4
    w = rng.uniform(-40, 40, (c, 1, kernel, kernel)).astype(np.float32)
    b = rng.uniform(-1, 1, c).astype(np.float32)
    op = O.Conv2D((stride, stride), padding, (1, 1), c, (0.0, 6.0))

    def build(pair: bool) -> Graph:
        g = Graph()
        x = g.input(0, (1, c, 12, 12))
        y = g.add(op, (x, g.constant(w), g.constant(b)), "dw")
        if pair:
            p = F.FinePlan(F.grid_steps(w), 2, np.linspace(0.5, 3.0, c))
            y = F.fine_pair(g, y, x, w, b, op, "dw_pair", p)
        g.outputs = [y]
        g.remove_dead()
        return g

    x = rng.uniform(0, 1, (1, c, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(run(build(True), [x])[0], run(build(False), [x])[0], atol=2e-4)


def test_the_plan_keeps_t_within_the_inputs_range():
    """The gain k/j is the largest with t spanning at most FILL of x's range on the samples, and beta
    centres each channel's t in it."""
    w = rng.uniform(-37, 39, (3, 1, 3, 3))
    xs = [rng.uniform(0, 0.9, (1, 3, 16, 16)) for _ in range(3)]
    p = F.plan(w, xs)
    _, lo = F.split_weights(w, p.k)
    t = [p.k / p.j * F._conv_same(x, lo, True) + p.beta[None, :, None, None] for x in xs]
    t_lo, t_hi = min(v.min() for v in t), max(v.max() for v in t)
    x_lo, x_hi = min(x.min() for x in xs), max(x.max() for x in xs)
    assert x_lo <= t_lo and t_hi <= x_hi
    assert t_hi - t_lo <= F.FILL * (x_hi - x_lo)
    if p.j > 1:  # one step more gain would not fit
        corr = [F._conv_same(x, lo, True) for x in xs]
        span = np.max(np.max([c.max(axis=(0, 2, 3)) for c in corr], axis=0)
                      - np.min([c.min(axis=(0, 2, 3)) for c in corr], axis=0))
        assert p.k / (p.j - 1) * span > F.FILL * (x_hi - x_lo)
