"""A PReLU channel's 256-byte table (kcc.quant.cpu_table): each code of the input grid to the output
code nearest the PReLU of its value."""

import numpy as np
import pytest

from kcc.quant.cpu_table import prelu_table
from kcc.quant.params import QuantParam, range_param


@pytest.mark.parametrize("alpha", [0.25, -0.4, 0.0, 1.0, 1.7, 3.5])
def test_each_code_goes_to_the_nearest_code_of_its_prelu(alpha):
    rng = np.random.default_rng(7)
    for _ in range(20):
        lo, hi = -rng.uniform(0.01, 30), rng.uniform(0.01, 30)
        x_q = range_param((lo, hi))
        ys = [alpha * lo, hi, 0.0] if alpha >= 0 else [0.0, hi, alpha * lo]
        y_q = range_param((min(ys), max(ys)))
        table = prelu_table(alpha, x_q, y_q)
        assert table.dtype == np.uint8 and table.shape == (256,)
        x = x_q.dequantize(np.arange(256)).astype(np.float64)
        want = np.where(x >= 0, x, alpha * x)
        got = y_q.dequantize(table).astype(np.float64)
        inside = (want >= y_q.real_range[0]) & (want <= y_q.real_range[1])
        step = 1.0 / y_q.scale
        assert np.all(np.abs(got - want)[inside] <= 0.5 * step * (1 + 1e-5) + 1e-6)
        # a value past the grid's range takes the end code
        assert np.all(table[want < y_q.real_range[0]] == 0) and np.all(table[want > y_q.real_range[1]] == 255)
        assert table[x_q.zero_point] == y_q.zero_point  # 0 -> 0, exactly


def test_a_table_is_monotone_where_the_slope_is_not_negative():
    x_q, y_q = QuantParam(100, 10.0), QuantParam(30, 12.0)
    for alpha in (0.0, 0.3, 1.0, 2.0):
        assert np.all(np.diff(prelu_table(alpha, x_q, y_q).astype(int)) >= 0)
