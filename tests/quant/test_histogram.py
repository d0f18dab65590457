"""The l2 histogram: nncase's float32 binning, fixed-up range, zero bin, float32 counts (§4.2)."""

import numpy as np
import pytest

from kcc.quant.histogram import (
    BINS,
    FLOAT_COUNT_LIMIT,
    Histogram,
    bin_counts,
    bin_edges,
    bin_interval,
    zero_bin,
)

F32 = np.float32


def scalar_bin(v: float, lo: float, hi: float, bins: int = BINS) -> int:
    """ncc histogram::record for one value, transcribed with numpy float32 scalars."""
    interval = F32(F32(F32(hi) - F32(lo)) / F32(bins))
    r = F32(F32(F32(v) - F32(lo)) / interval)
    return int(min(max(r, F32(0)), F32(bins - 1)))


def test_binning_matches_scalar_transcription_on_random_and_edge_values():
    rng = np.random.default_rng(1)
    for lo, hi in [(-1.0, 1.0), (0.0, 6.0), (-0.7342, 0.0123), (-1000.0, 3.5e-3), (0.0, 0.1)]:
        interval = bin_interval(lo, hi)
        edges = bin_edges(lo, interval)
        # random values, values exactly on float32 bin edges and one ulp either side of them
        v = np.concatenate([rng.uniform(lo - 1, hi + 1, 500).astype(F32), edges[::97],
                            np.nextafter(edges[::97], F32(-np.inf)), np.nextafter(edges[::97], F32(np.inf))])
        counts = bin_counts(v, lo, interval)
        expect = np.bincount([scalar_bin(x, lo, hi) for x in v], minlength=BINS)
        assert np.array_equal(counts, expect), (lo, hi)


def test_out_of_range_infinities_and_nan():
    lo, hi = -1.0, 3.0
    interval = bin_interval(lo, hi)
    v = np.array([lo, hi, -5.0, 7.0, np.inf, -np.inf, np.nan, 0.0], F32)
    counts = bin_counts(v, lo, interval)
    assert counts.sum() == 7  # NaN skipped
    assert counts[0] == 3  # lo, -5, -inf
    assert counts[BINS - 1] == 3  # hi (r = 2048 clamps), 7, +inf
    assert counts[512] == 1  # 0.0 = lo + 512 * interval


def test_histogram_over_uses_fixed_up_range():
    h = Histogram.over(0.5, 2.0)  # does not contain 0 -> lo = 0
    assert (h.lo, h.hi) == (0.0, 2.0)
    h = Histogram.over(-3.0, -1.0)  # all negative -> hi = 0
    assert (h.lo, h.hi) == (-3.0, 0.0)
    h = Histogram.over(0.0, 0.0)  # degenerate -> width 0.1
    assert (h.lo, h.hi) == (0.0, float(F32(0.1)))
    h = Histogram.over(-5000.0, 5000.0)  # clamped to +-1000
    assert (h.lo, h.hi) == (-1000.0, 1000.0)


@pytest.mark.parametrize("lo,hi,zb", [(0.0, 1.0, 0), (-1.0, 0.0, BINS - 1), (-1.0, 1.0, 1024),
                                      (-1.0, 3.0, 512), (-1e-3, 1000.0, 0)])
def test_zero_bin(lo, hi, zb):
    assert zero_bin(lo, bin_interval(lo, hi)) == zb
    assert Histogram(lo, hi).zero_bin == zb


def test_edges_are_float32_left_edges():
    lo, hi = -0.3, 0.9
    interval = bin_interval(lo, hi)
    e = bin_edges(lo, interval)
    assert e.dtype == F32 and e.size == BINS + 1
    for i in (0, 1, 777, BINS):
        assert e[i] == F32(F32(lo) + F32(F32(interval) * F32(i)))


def test_add_accumulates_and_float_counts_saturate_at_2_pow_24():
    h = Histogram.over(-1.0, 1.0)
    h.add(np.zeros((2, 3), F32))
    h.add(np.array([0.5], F32))
    assert h.counts.sum() == 7 and h.counts[h.zero_bin] == 6
    h.counts[0] = FLOAT_COUNT_LIMIT + 12345
    fc = h.float_counts()
    assert fc[0] == FLOAT_COUNT_LIMIT  # float32 `count++` sticks at 2^24
    assert fc[h.zero_bin] == 6
