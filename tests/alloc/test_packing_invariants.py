"""The hole rules of the greedy packers (kcc.alloc.greedy), worked out by hand.

"first": the lowest hole the block fits in; "best": the tightest such hole, the lowest of equally tight
ones; a hole fits when it is at least the block's size, so an exact fit counts; no fitting hole puts the
block on top. Packing into exact holes is what lets a chain reach the live-size lower bound.
"""

import pytest

from kcc.alloc.greedy import ORDERS, _slot, greedy_candidates, place
from kcc.alloc.packing import Buffer, live_lower_bound, plan_errors

# three busy blocks with 16-byte holes between them: [16, 32), [48, 64), [80, 96)
EQUAL_HOLES = [(0, 16), (32, 48), (64, 80), (96, 112)]


@pytest.mark.parametrize("rule", ["first", "best"])
def test_an_exact_hole_fits(rule):
    assert _slot(16, EQUAL_HOLES, rule) == 16


def test_best_fit_takes_the_lowest_of_equally_tight_holes():
    assert _slot(12, EQUAL_HOLES, "best") == 16
    # the tighter hole wins over a lower, looser one; first fit takes the lower one
    busy = [(0, 8), (40, 48), (64, 72)]  # holes [8, 40) of 32 and [48, 64) of 16
    assert _slot(16, busy, "best") == 48
    assert _slot(16, busy, "first") == 8


@pytest.mark.parametrize("rule", ["first", "best"])
def test_without_a_fitting_hole_the_block_goes_on_top(rule):
    assert _slot(17, EQUAL_HOLES, rule) == 112
    assert _slot(8, [(0, 16), (20, 40)], rule) == 40  # the 4-byte hole is too small
    assert _slot(8, [], rule) == 0


def test_a_chain_of_equal_buffers_reuses_the_exact_hole():
    """x [0,1] and y [1,2] must be stacked (64 bytes); z [2,3] outlives x and fits exactly where x was,
    so every order and rule reaches the lower bound of 64, where z on top would need 96."""
    bufs = [Buffer("x", 32, 0, 1), Buffer("y", 32, 1, 2), Buffer("z", 32, 2, 3)]
    assert live_lower_bound(bufs, 8) == 64
    for name, plan in greedy_candidates(bufs, 8):
        assert plan_errors(bufs, plan, 8) == [], name
        assert plan.peak == 64, name
    plan = place(bufs, ORDERS["size"], "best", 8)
    assert plan.offsets == {"x": 0, "y": 32, "z": 0}
