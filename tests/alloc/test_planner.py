"""plan_memory: valid, never worse than first fit, optimal where the optimum is known, deterministic,
first fit only with a zero budget, and a one-line overflow error naming the layer and tensors."""

import random

import pytest

from kcc.alloc import (
    Buffer,
    MemoryOverflowError,
    first_fit,
    live_lower_bound,
    plan_errors,
    plan_memory,
    planner,
)
from kcc.alloc.greedy import greedy_candidates
from kcc.alloc.solver import maximal_live_sets, solve
from kcc.errors import KccError

#: Greedy packers reach 72 B here, the optimum is the lower bound 56 B (found by a random search).
GREEDY_MISSES = [Buffer(f"t{i}", s, b, d) for i, (s, b, d) in
                 enumerate([(24, 3, 4), (8, 1, 3), (32, 5, 8), (24, 4, 5), (24, 0, 3), (16, 1, 2)])]


def _alternating_chain(n: int) -> list[Buffer]:
    """A CNN-like chain whose sizes alternate big/small: first fit fragments, the optimum is the bound."""
    sizes = [96, 32, 160, 48, 128, 24, 200, 40] * (n // 8 + 1)
    return [Buffer(f"x{i}", sizes[i], i - 1, i) for i in range(n)]


def _random(seed: int, n: int) -> list[Buffer]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        b = rng.randint(0, n)
        out.append(Buffer(f"r{i}", rng.choice([1, 2, 3, 4, 6, 8]) * rng.randint(100, 900),
                          b, b + rng.choice([0, 1, 2, 3, 5, 10])))
    return out


CASES = [GREEDY_MISSES, _alternating_chain(24), _random(1, 40), _random(2, 60), _random(3, 80)]


@pytest.mark.parametrize("bufs", CASES)
@pytest.mark.parametrize("align", [8, 64])
def test_plan_is_valid_and_never_worse_than_first_fit(bufs, align):
    res = plan_memory(bufs, align=align, solve_secs=60)
    assert plan_errors(bufs, res.plan, align) == []
    assert res.peak <= first_fit(bufs, align).peak == res.first_fit_peak
    assert res.peak >= res.lower_bound == live_lower_bound(bufs, align)
    assert res.peak % align == 0


def test_solver_reaches_the_lower_bound_where_greedy_does_not():
    lb = live_lower_bound(GREEDY_MISSES, 8)
    assert min(p.peak for _, p in greedy_candidates(GREEDY_MISSES, 8)) > lb
    res = plan_memory(GREEDY_MISSES, align=8, solve_secs=60)
    assert (res.peak, res.method, res.solver_status, res.optimal) == (lb, "cp-sat", "OPTIMAL", True)


@pytest.mark.parametrize("bufs", CASES[1:])
def test_known_optimal_cases_reach_the_lower_bound(bufs):
    res = plan_memory(bufs, align=8, solve_secs=60)
    assert res.peak == res.lower_bound and res.optimal


def test_alternating_chain_beats_first_fit():
    bufs = _alternating_chain(24)
    res = plan_memory(bufs, align=8, solve_secs=60)
    assert res.first_fit_peak > res.peak == res.lower_bound


@pytest.mark.parametrize("bufs", [GREEDY_MISSES, _random(3, 80)])
def test_deterministic(bufs):
    a = plan_memory(bufs, align=8, solve_secs=60)
    b = plan_memory(list(bufs), align=8, solve_secs=60)
    assert a.plan == b.plan and a.method == b.method


def test_zero_budget_is_first_fit_only():
    for bufs in CASES:
        res = plan_memory(bufs, align=8, solve_secs=0)
        assert res.plan == first_fit(bufs, 8)
        assert res.method == "first fit" and res.solver_status.startswith("not run")


def test_solver_bound_and_warm_start():
    bufs = _random(3, 80)
    warm = first_fit(bufs, 8)
    r = solve(bufs, 8, warm, live_lower_bound(bufs, 8), 1.0)
    assert r.plan is not None and r.plan.peak < warm.peak and plan_errors(bufs, r.plan, 8) == []
    assert r.bound <= r.plan.peak


def test_maximal_live_sets_cover_every_time_overlap():
    bufs = _random(2, 60)
    sets = [set(s) for s in maximal_live_sets(bufs)]
    for i, a in enumerate(bufs):
        for j, b in enumerate(bufs[:i]):
            assert a.overlaps_in_time(b) == any({i, j} <= s for s in sets)


def test_overflow_error_names_the_layer_tensors_and_sizes():
    bufs = [Buffer("input", 200_000, -1, 0), Buffer("conv_a", 1_200_000, 0, 1),
            Buffer("conv_b", 1_000_000, 1, 2), Buffer("out", 1000, 2, 3)]
    steps = ["layer_a", "layer_b", "layer_c"]
    with pytest.raises(MemoryOverflowError) as e:
        plan_memory(bufs, align=64, solve_secs=60, capacity=2 * 1024 * 1024, space="KPU RAM", step_names=steps)
    assert isinstance(e.value, KccError)
    line = e.value.one_line()
    assert "\n" not in line
    assert "KPU RAM overflow: 2200000 B needed, 2097152 B available" in line
    assert "peak at step 1 'layer_b'" in line
    assert "conv_a 1171.9 KiB" in line and "conv_b 976.6 KiB" in line and "input 19" not in line  # dead by then
    assert "no packing can fit" in line
    assert "hint: use a smaller input resolution, or fewer channels in the layers around 'layer_b'" in line


def test_overflow_by_fragmentation_only_says_so(monkeypatch):
    lb = live_lower_bound(GREEDY_MISSES, 8)
    monkeypatch.setattr(planner, "OVERFLOW_SOLVE_SECS", 0.0)  # no search at all
    with pytest.raises(MemoryOverflowError, match="best packing found; lower bound"):
        plan_memory(GREEDY_MISSES, align=8, solve_secs=0, capacity=lb)
    assert plan_memory(GREEDY_MISSES, align=8, solve_secs=60, capacity=lb).peak == lb  # the solver makes it fit


def test_zero_budget_searches_where_every_greedy_packing_overflows_but_the_bound_fits():
    """--max-allocator-solve-secs 0 whose cheap packings all overflow KPU RAM while the live-size bound
    fits: CP-SAT gets OVERFLOW_SOLVE_SECS rather than the compile failing (BlazePalm's stem, read in
    its parts in KPU RAM, at its first add)."""
    lb = live_lower_bound(GREEDY_MISSES, 8)
    assert min(p.peak for _, p in greedy_candidates(GREEDY_MISSES, 8)) > lb
    res = plan_memory(GREEDY_MISSES, align=8, solve_secs=0, capacity=lb)
    assert res.peak == lb and res.method == "cp-sat"
    assert plan_memory(GREEDY_MISSES, align=8, solve_secs=0).method != "cp-sat"  # no capacity: first fit


def test_zero_budget_tries_the_greedy_orders_before_reporting_an_overflow():
    """--max-allocator-solve-secs 0 must not fail a model that a cheap greedy order fits (a real case:
    hand_landmark_lite_224's KPU RAM: first fit 2.3 MiB > 2 MiB, a greedy order fits)."""
    bufs = _alternating_chain(24)
    lb = live_lower_bound(bufs, 8)
    assert first_fit(bufs, 8).peak > lb
    res = plan_memory(bufs, align=8, solve_secs=0, capacity=lb)
    assert res.peak == lb and res.method != "first fit" and res.solver_status.startswith("not run")


def test_empty():
    res = plan_memory([], align=8, solve_secs=60)
    assert (res.peak, res.lower_bound, res.peak_step, res.peak_live) == (0, 0, -1, ())
