"""Buffers, first fit, the live-size lower bound and the plan checker (kcc.alloc.packing, greedy)."""

import pytest

from kcc.alloc.greedy import greedy_candidates
from kcc.alloc.packing import Buffer, Plan, first_fit, live_lower_bound, plan_errors

CHAIN = [Buffer("a", 100, 0, 1), Buffer("b", 40, 1, 2), Buffer("c", 100, 2, 3), Buffer("d", 40, 3, 4)]


def test_lower_bound_is_the_largest_live_set_with_aligned_sizes():
    assert live_lower_bound([]) == 0
    assert live_lower_bound(CHAIN, 1) == 140
    assert live_lower_bound(CHAIN, 64) == 128 + 64  # 100 -> 128, 40 -> 64


def test_first_fit_is_valid_and_reuses_dead_space():
    plan = first_fit(CHAIN, 8)
    assert plan_errors(CHAIN, plan, 8) == []
    assert plan.offsets["a"] == 0 and plan.offsets["c"] == 0  # a is dead when c is born
    assert plan.peak == 104 + 40


@pytest.mark.parametrize("align", [1, 8, 64])
def test_greedy_candidates_are_valid(align):
    bufs = CHAIN + [Buffer("skip", 24, 0, 4), Buffer("empty", 0, 2, 2)]
    for name, plan in greedy_candidates(bufs, align):
        assert plan_errors(bufs, plan, align) == [], name
        assert plan.peak >= live_lower_bound(bufs, align)


def test_plan_errors_finds_overlaps_alignment_and_peak():
    bufs = [Buffer("a", 16, 0, 1), Buffer("b", 16, 1, 2), Buffer("c", 16, 2, 3)]
    assert plan_errors(bufs, Plan({"a": 0, "b": 16, "c": 0}, 32), 8) == []
    errs = plan_errors(bufs, Plan({"a": 0, "b": 8, "c": 4}, 24), 8)
    assert any("a [0, 16) and b [8, 24) overlap at steps 1..1" in e for e in errs)
    assert any("c: offset 4" in e for e in errs)
    assert plan_errors(bufs, Plan({"a": 0, "b": 16, "c": 0}, 24), 8) == ["b: ends at 32, above the peak 24"]
    assert plan_errors(bufs, Plan({"a": 0, "b": 16}, 32), 8) == ["c: no offset"]
