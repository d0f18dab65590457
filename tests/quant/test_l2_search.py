"""The fast l2 threshold search returns exactly ncc's exhaustive answer (kpu_semantics.md §4.2).

`reference` below is a plain transcription of ncc's loops (every candidate, every bin, float32
scalars, the term in double added to a float32 sum). The fast search must return the same
(lower, upper) and the same float32 loss, with its pruning stage forced on (direct_work=0) or off.
"""

import numpy as np
import pytest

from kcc.quant.histogram import Histogram, bin_interval
from kcc.quant.l2_search import (
    FLT_MAX,
    l2_losses,
    l2_range,
    l2_threshold,
    loss_bounds,
    real_losses,
    search_space,
)
from kcc.target.quant_rules import fixup_range

F32 = np.float32


def reference(counts, lo, hi, levels):
    """ncc histogram::finish + compute_l2, straight: O(zb * bins * bins) scalar float32 steps."""
    bins = len(counts)
    c = [float(min(int(n), 1 << 24)) for n in counts]
    lo, hi = F32(lo), F32(hi)
    interval = F32(F32(hi - lo) / F32(bins))
    zb = int(min(max(F32(F32(0) - lo) / interval, F32(0)), F32(bins - 1)))
    p = [F32(lo + F32(interval * F32(i))) for i in range(bins)]
    best, choice = F32(FLT_MAX), None
    for lower in range(zb + 1):
        upper = bins
        while upper >= lower + levels and upper >= zb:
            qmin = F32(F32(F32(lower) * interval) + lo)
            qstep = F32(F32(F32(F32(F32(upper) * interval) + lo) - qmin) / F32(levels - 1))
            d = F32(0)
            for i in range(bins):
                r = float(F32(F32(p[i] - qmin) / qstep))
                idx = min(max(int(np.sign(r) * np.floor(abs(r) + 0.5)), 0), levels - 1)  # roundf
                e = float(F32(p[i] - F32(qmin + F32(qstep * F32(idx)))))
                d = F32(float(d) + e * e * c[i])
            if d < best:
                best, choice = d, (lower, upper)
            upper -= 1
    return choice, best


def random_case(rng, bins):
    scale = rng.choice([0.0, 1e-3, 0.1, 1.0, 30.0, 1000.0])
    lo, hi = fixup_range(-abs(rng.normal()) * rng.choice([0.0, 1.0, scale]), abs(rng.normal()) * scale)
    kind = rng.integers(4)
    if kind == 0:
        c = rng.integers(0, 100, bins)
    elif kind == 1:  # sparse
        c = (rng.random(bins) < 0.15) * rng.integers(1, 10_000, bins)
    elif kind == 2:  # bell curve
        c = np.round(5000 * np.exp(-0.5 * ((np.arange(bins) - rng.integers(bins)) / rng.uniform(1, 12)) ** 2))
    else:  # heavy tail
        c = np.round(1e4 / (1 + np.abs(np.arange(bins) - rng.integers(bins))) ** 2)
    return np.asarray(c, np.int64), lo, hi


def check(counts, lo, hi, levels):
    expect, loss = reference(counts, lo, hi, levels)
    for direct_work in (0, 1 << 40):
        r = l2_threshold(counts, lo, hi, levels, direct_work=direct_work)
        assert (r.lower, r.upper) == expect, (direct_work, lo, hi, counts.tolist())
        assert F32(r.loss) == loss


def test_search_space_is_ncc_visiting_order():
    for bins, levels, zb in [(32, 8, 0), (32, 8, 5), (32, 8, 31), (48, 16, 40), (2048, 256, 3)]:
        expect = [(lower, upper) for lower in range(zb + 1)
                  for upper in range(bins, -1, -1) if upper >= lower + levels and upper >= zb]
        lowers, uppers = search_space(zb, bins, levels)
        assert list(zip(lowers.tolist(), uppers.tolist())) == expect


@pytest.mark.parametrize("seed", range(30))
def test_matches_reference_on_random_histograms(seed):
    rng = np.random.default_rng(seed)
    bins = int(rng.choice([24, 32, 48]))
    levels = int(rng.choice([4, 8]))
    check(*random_case(rng, bins), levels)


@pytest.mark.parametrize("name,lo,hi,counts", [
    ("all mass in the zero bin", -1.0, 1.0, {16: 1000}),
    ("all mass in the first bin", -1.0, 1.0, {0: 7}),
    ("all mass in the last bin", -1.0, 1.0, {31: 7}),
    ("one bin left of zero", -0.25, 3.0, {1: 50}),
    ("all negative (zb = last bin)", -2.5, 0.0, {3: 5, 20: 9, 31: 100}),
    ("all positive (zb = 0)", 0.0, 6.0, {0: 900, 5: 30, 31: 2}),
    ("zero at the upper edge, mass at lo", -7.0, 0.0, {0: 1}),
    ("tiny range near the fixup minimum", -0.004, 0.006, {0: 3, 13: 4, 31: 5}),
    ("huge range, all at lo", -1000.0, 0.001, {0: 10}),
    ("saturated float32 counts", -1.0, 2.0, {3: (1 << 24) + 999, 10: 1 << 25, 20: 3}),
    ("empty histogram", -1.0, 1.0, {}),
])
def test_matches_reference_on_adversarial_histograms(name, lo, hi, counts):
    c = np.zeros(32, np.int64)
    for i, n in counts.items():
        c[i] = n
    check(c, lo, hi, 8)


def test_full_size_matches_reference():
    """2048 bins, 256 levels, zb = 12 (23,000 candidates) with a realistic activation histogram."""
    rng = np.random.default_rng(7)
    pos = np.abs(rng.standard_t(3, 200_000))
    values = np.concatenate([pos, -rng.uniform(0, 12.5 * pos.max() / 2048, 3000)])
    lo, hi = fixup_range(float(values.min()), float(values.max()))
    h = Histogram(lo, hi)
    h.add(values.astype(F32))
    assert h.zero_bin == 12
    expect, loss = reference_vectorised(h.counts, lo, hi)
    r = l2_threshold(h.counts, lo, hi, direct_work=0)
    assert (r.lower, r.upper) == expect and F32(r.loss) == loss
    assert r.screened < r.candidates / 10  # the pruning did prune


def reference_vectorised(counts, lo, hi, levels=256):
    """`reference` with the arithmetic vectorised over the uppers of one lower (still every
    candidate and every bin, and ncc's sequential float32 sum, bin by bin)."""
    bins = len(counts)
    c = np.minimum(counts, 1 << 24).astype(np.float64)[:, None]
    lo, hi = F32(lo), F32(hi)
    interval = F32(F32(hi - lo) / F32(bins))
    zb = int(min(max(F32(-lo) / interval, F32(0)), F32(bins - 1)))
    p = (lo + interval * np.arange(bins, dtype=F32)).astype(F32)[:, None]
    best, choice = F32(FLT_MAX), None
    for lower in range(zb + 1):
        uppers = np.arange(bins, max(lower + levels, zb) - 1, -1)
        qmin = F32(F32(F32(lower) * interval) + lo)
        qstep = ((F32(interval) * uppers.astype(F32) + lo) - qmin) / F32(levels - 1)
        r = ((p - qmin) / qstep).astype(np.float64)
        idx = np.clip(np.sign(r) * np.floor(np.abs(r) + 0.5), 0, levels - 1).astype(F32)
        e = (p - (qmin + qstep * idx)).astype(np.float64)
        d = np.zeros(uppers.size, F32)
        for t in e * e * c:
            d = (d.astype(np.float64) + t).astype(F32)
        for upper, loss in zip(uppers.tolist(), d.tolist()):
            if F32(loss) < best:
                best, choice = F32(loss), (lower, upper)
    return choice, best


def test_bounds_hold_at_full_size_in_extreme_ranges():
    """Stage 0's claim: the float32 loss lies within loss_bounds(real loss), for any candidate."""
    rng = np.random.default_rng(3)
    for lo, hi in [(-1000.0, 0.001), (-0.004, 0.006), (-1.0, 1.0), (-3.3, 700.0), (-50.0, 0.0)]:
        lo, hi = fixup_range(lo, hi)
        h = Histogram(lo, hi)
        h.counts[:] = rng.integers(0, 1000, h.bins) * (rng.random(h.bins) < 0.7)
        lowers, uppers = search_space(h.zero_bin)
        pick = np.sort(rng.choice(lowers.size, 400, replace=False))
        loss = l2_losses(h.edges(), h.float_counts(), lowers[pick], uppers[pick]).astype(np.float64)
        low, high = loss_bounds(real_losses(h.counts, lowers[pick], uppers[pick]), h.counts)
        scale = float(F32(h.interval)) ** 2
        assert np.all(low * scale <= loss) and np.all(loss <= high * scale), (lo, hi)


def test_range_is_within_the_fixed_up_no_clip_range_and_deterministic():
    rng = np.random.default_rng(11)
    for _ in range(3):
        values = rng.normal(rng.uniform(-1, 1), rng.uniform(0.1, 3), 50_000).astype(F32)
        lo, hi = fixup_range(float(values.min()), float(values.max()))
        h = Histogram(lo, hi)
        h.add(values)
        a, b = l2_range(h)
        assert lo <= a <= 0.0 <= b <= float(np.nextafter(F32(hi), F32(np.inf)))
        r = l2_threshold(h.counts, lo, hi)
        assert (a, b) == (float(h.edges()[r.lower]), float(h.edges()[r.upper]))
        assert r == l2_threshold(h.counts.copy(), lo, hi)


def test_interval_helper_matches_histogram():
    assert bin_interval(-1.0, 3.0) == Histogram(-1.0, 3.0).interval == 4.0 / 2048
