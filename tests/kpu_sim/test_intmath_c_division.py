"""C integer division in the simulator (kpu_semantics.md §4.4 quantized_binary div: `(a' + b'/2) / b'`
in C int32 division, which truncates toward zero; Python's // floors)."""

import numpy as np
import pytest

from kpu_sim.kernels.intmath import c_div_trunc


@pytest.mark.parametrize("a, b, want", [
    (7, 2, 3), (-7, 2, -3), (7, -2, -3), (-7, -2, 3),  # C99: the quotient truncates toward zero
    (-1, 3, 0), (1, -3, 0), (-6, 3, -2), (0, -5, 0), (-(2**31) + 1, 2, -(2**30) + 1),
])
def test_c_div_truncates_toward_zero(a, b, want):
    got = c_div_trunc(np.array([a], np.int64), np.array([b], np.int64))
    assert got.tolist() == [want]
