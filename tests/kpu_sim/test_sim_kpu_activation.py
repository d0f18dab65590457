"""The KPU activation (kpu_semantics.md §3 step 4): banker's carry shift, and the step-lookup
fast path against the element-wise reference `activate_exact`: random and real tables, compact
tables with a rounding tie at every segment start, values below the lowest segment start."""

from __future__ import annotations

import numpy as np
import pytest
import refkit
from kpu_reference import banker as reference_banker

import kcc.kmodel as km
from kcc.errors import SimulatorError
from kpu_sim.kernels.intmath import carry_shift_banker_scalar as banker
from kpu_sim.kernels.kpu_activation import (
    LUT_DOMAIN,
    activate,
    activate_exact,
    build_step_lut,
)
from kpu_sim.kernels.kpu_layer import Activation, decode_activation
from kpu_sim.kernels.kpu_post import batch_norm_activate, fused_bound_ok


@pytest.mark.parametrize(
    "v, s, expected",
    [
        (6, 2, 2), (10, 2, 2), (14, 2, 4), (5, 2, 1), (7, 2, 2),  # 1.5 -> 2, 2.5 -> 2, 3.5 -> 4: ties to even
        (-5, 2, -3), (-1, 1, -2), (-1, 2, -2), (-6, 2, -2), (-10, 2, -4),  # §3: the negative bias
        (37, 0, 37), (-37, 0, -37),  # shift 0: no rounding
        (3 << 31, 32, 1), (-1, 32, -1),  # shift 32: (int)1 << 31 is INT32_MIN -> plain floor
    ],
)  # fmt: skip
def test_carry_shift_banker(v, s, expected) -> None:
    assert banker(v, s) == expected == reference_banker(v, s)


def test_carry_shift_banker_matches_the_reference_for_odd_shift_counts() -> None:
    rng = np.random.default_rng(3)
    for _ in range(2000):
        v = int(rng.integers(-2**62, 2**62)) >> int(rng.integers(0, 60))
        s = int(rng.integers(0, 256))
        assert banker(v, s) == reference_banker(v, s), (v, s)


def _table(segments) -> Activation:
    return decode_activation(km.KpuActivationTable([km.KpuActivationSegment(s, m, st, b) for st, m, s, b in segments]))


def _probe(act: Activation, rng: np.random.Generator) -> np.ndarray:
    """y values around every segment start and spread over the table's range."""
    starts = act.start[act.start > -(2**35)]
    near = (starts[:, None] + np.arange(-3, 4)[None, :]).reshape(-1)
    lo, hi = int(act.start.min()) + 1, int(max(act.start.max(), 0)) + 2**22
    spread = rng.integers(lo, hi, 20000)
    dense = np.arange(-5000, 5000)
    return np.concatenate([near, spread, dense]).astype(np.int64)


def _random_monotone_table(rng: np.random.Generator) -> Activation:
    starts = np.sort(rng.integers(-2**24, 2**24, 15)) if rng.integers(0, 2) else rng.integers(-2**24, 2**24, 15)
    segs = [(-(2**35), 0, 0, int(rng.integers(0, 256)))]
    for s in starts:
        shift = int(rng.integers(0, 32))
        mul = int(rng.integers(0, 2**15)) if rng.integers(0, 4) else 0
        segs.append((int(s), mul, shift, int(rng.integers(0, 256))))
    return _table(segs)


def test_step_lookup_equals_the_formula_on_random_monotone_tables() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        act = _random_monotone_table(rng)
        assert build_step_lut(act) is not None
        y = _probe(act, rng)
        np.testing.assert_array_equal(activate(y, act), activate_exact(y, act))


def test_fused_batch_norm_path_equals_the_plain_one() -> None:
    """kpu_post: y2 = acc*m + ((add - base) << s), key y2 >> (s + k), thresholds shifted by s."""
    rng = np.random.default_rng(6)
    for trial in range(30):
        act = _random_monotone_table(rng)
        rows = 3
        mul = rng.integers(0, 2**12, rows)  # |acc * mul| < 2^32: y stays above segment 0 (-2^35)
        shift = np.full(rows, int(rng.integers(0, 16)))
        add = rng.integers(-2**24, 2**24, rows)
        acc = rng.integers(-2**20, 2**20, (rows, 4000)) >> rng.integers(0, 20)
        plain = batch_norm_activate(acc.copy(), mul, shift, add, act, fused=False)
        assert fused_bound_ok(2**20, mul, add, shift, act), trial
        np.testing.assert_array_equal(batch_norm_activate(acc.copy(), mul, shift, add, act, fused=True), plain)


def test_step_lookup_handles_steep_slopes_and_equal_starts() -> None:
    # shift 0 with mul 7: the output jumps by 7 per unit (buckets with such jumps are resolved exactly);
    # segments 2 and 3 start at the same x_start: the higher index wins
    act = _table([(-(2**35), 0, 0, 3), (0, 7, 0, 0), (20, 1, 1, 100), (20, 1, 3, 10)] + [(2**35 - 1, 0, 0, 0)] * 12)
    y = np.arange(-50, 3000, dtype=np.int64)
    np.testing.assert_array_equal(activate(y, act), activate_exact(y, act))
    assert activate(np.array([21], np.int64), act)[0] == 10  # (21 - 20) * 1 >> 3 rounds to 0, + bias 10


def test_tables_that_are_not_monotone_use_the_formula() -> None:
    negative_slope = _table([(-(2**35), -1, 2, 100)] + [(2**35 - 1, 0, 0, 0)] * 15)
    big_shift = _table([(-(2**35), 1, 33, 100)] + [(2**35 - 1, 0, 0, 0)] * 15)
    assert build_step_lut(negative_slope) is None and build_step_lut(big_shift) is None
    y = np.arange(-100, 100, dtype=np.int64)
    np.testing.assert_array_equal(activate(y, negative_slope), activate_exact(y, negative_slope))


def test_values_outside_the_lookup_domain_use_the_formula() -> None:
    act = _table([(-(2**35), 0, 0, 0)] + [(0, 1, 31, 0)] * 15)  # segments 1-15 identical: 15 is selected
    y = np.array([5, LUT_DOMAIN + 1, 2**50, 3 * 2**30], np.int64)
    np.testing.assert_array_equal(activate(y, act), activate_exact(y, act))
    # 5 / 2^31 -> 0; 2^40 / 2^31 = 512 -> clamped; 3 * 2^30 / 2^31 = 1.5 -> 2 (tie to even)
    assert activate(y, act).tolist() == [0, 255, 255, 2]


def test_step_lookup_on_every_table_of_the_reference_kmodels() -> None:
    """The activation tables of the ncc kmodels that ship in tests/reference (85 distinct ones)."""
    paths = sorted((refkit.SHIPPED / "ncc-outputs" / "kmodels").glob("*.kmodel"))
    assert paths
    rng = np.random.default_rng(8)
    seen = set()
    for path in paths:
        for node in km.read_file(path).nodes:
            if node.opcode is not km.Opcode.KPU_CONV2D:
                continue
            act = decode_activation(node.body.activation)
            key = act.start.tobytes() + act.mul.tobytes() + act.shift.tobytes() + act.add.tobytes()
            if key in seen:
                continue
            seen.add(key)
            assert build_step_lut(act) is not None  # ncc tables are monotone: the fast path applies
            y = _probe(act, rng)
            np.testing.assert_array_equal(activate(y, act), activate_exact(y, act), err_msg=str(path))
    assert len(seen) >= 80


# -- compact tables: a rounding tie at every segment start, and values below the table ----------


def _tie_table(rng: np.random.Generator, shuffled: bool) -> tuple[Activation, list[int]]:
    """16 segments 1-5 apart, no catch-all, each slope an odd multiple of 2^(shift-1): at t = y - x_start
    = 1 (the segment's first value) t*mul / 2^shift = q + 1/2 is a tie, which rounds to even (§3 step 4,
    trap 1), i.e. down for even q and up for odd q; every odd t is a tie too. Segments alternate even
    and odd q. Returns the table (segments in random order if `shuffled`) and q per segment."""
    segments, qs = [], []
    start = int(rng.integers(-40, 40))
    for i in range(16):
        shift = int(rng.integers(1, 13))
        q_max = min(7, ((32767 >> (shift - 1)) - 1) // 2)  # y_mul is s16
        q = 2 * int(rng.integers(0, (q_max - i % 2) // 2 + 1)) + i % 2
        segments.append((start, (2 * q + 1) << (shift - 1), shift, int(rng.integers(0, 150))))
        qs.append(q)
        start += int(rng.integers(1, 6))
    if shuffled:
        order = rng.permutation(16)
        segments, qs = [segments[i] for i in order], [qs[i] for i in order]
    return _table(segments), qs


@pytest.mark.parametrize("seed", range(6))
def test_compact_tables_with_a_tie_at_every_segment_start(seed) -> None:
    rng = np.random.default_rng(40 + seed)
    shuffled = seed % 2 == 1  # unsorted: the highest index with y > x_start wins, not the highest start
    act, qs = _tie_table(rng, shuffled)
    assert build_step_lut(act) is not None  # non-negative slopes, shifts <= 31: the lookup applies
    y = np.arange(int(act.start.min()) + 1, int(act.start.max()) + 64, dtype=np.int64)
    expected = activate_exact(y, act)
    np.testing.assert_array_equal(activate(y, act), expected)
    if not shuffled:  # sorted and strictly increasing starts: segment i holds y = x_start[i] + 1
        first = [min(int(b) + q + q % 2, 255) for b, q in zip(act.add, qs)]
        np.testing.assert_array_equal(expected[act.start - act.start[0]], first)
    # the fused batch-norm path (kpu_post.py) with bn shift 1: acc = 2y or 2y + 1 floors back to y
    acc = 2 * y + rng.integers(0, 2, y.size)
    one = np.ones(1, np.int64)
    fused = batch_norm_activate(acc[None].copy(), one, one, 0 * one, act, fused=True)
    np.testing.assert_array_equal(fused[0], expected)


def _gentle_table(rng: np.random.Generator, shuffled: bool) -> Activation:
    """16 segments 20 apart from -100, no catch-all, slope 1/8: levels rise by 1 every few values, so
    the lookup's first bucket holds a single step of 1 and is resolved by the lookup itself."""
    segments = [(-100 + 20 * i, 1, 3, 10 * i) for i in range(16)]
    if shuffled:
        segments = [segments[i] for i in rng.permutation(16)]
    return _table(segments)


@pytest.mark.parametrize("kind", ["ties", "ties-shuffled", "gentle", "gentle-shuffled"])
def test_values_not_above_the_lowest_segment_start_raise(kind) -> None:
    """§3 step 4: with no segment whose x_start is below y nncase reads outside the table; the
    simulator refuses. One such value among valid ones must be found by every path."""
    rng = np.random.default_rng(60)
    shuffled = kind.endswith("shuffled")
    act = _gentle_table(rng, shuffled) if kind.startswith("gentle") else _tie_table(rng, shuffled)[0]
    lut = build_step_lut(act)
    if kind.startswith("gentle"):
        # values below the table would land in bucket 0, which the lookup answers without the formula:
        # only the lookup's range check (lowest) can refuse them
        assert lut is not None and not lut.complex[0]
    lowest = int(act.start.min())
    valid = np.arange(lowest + 1, lowest + 40, dtype=np.int64)
    np.testing.assert_array_equal(activate(valid, act), activate_exact(valid, act))
    one = np.ones(1, np.int64)
    for bad in (lowest, lowest - 1, lowest - 10**6):
        y = np.insert(valid, 7, bad)
        for run in (lambda: activate(y, act), lambda: activate_exact(y, act),
                    lambda: batch_norm_activate(y[None].copy(), one, 0 * one, 0 * one, act, fused=True),
                    lambda: batch_norm_activate(y[None].copy(), one, 0 * one, 0 * one, act, fused=False)):
            with pytest.raises(SimulatorError, match=f"value {bad} is not above any segment start"):
                run()
