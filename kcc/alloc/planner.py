"""plan_memory(): the best deterministic packing of one address space, and why it is that big.

Candidates, cheapest first (kpu_semantics.md §7 describes ncc's two):
1. first fit in birth order (ncc's `--max-allocator-solve-secs 0`; with 0, the only candidate unless it
   overflows a capacity: then 2, and 3 if they overflow too while the lower bound fits),
2. the greedy packers of `kcc.alloc.greedy` (largest first, lowest or tightest hole),
3. CP-SAT (`kcc.alloc.solver`), warm-started from the best of 1-2 and only run when that is above
   the live-size lower bound.
The smallest peak wins; ties go to the earlier candidate. Every candidate is deterministic, so the
plan is a pure function of the buffers and the time budget.

The same code packs main memory (align 8, no capacity: the runtime allocates `main_mem`, kmodel_v4.md
§7.1) and KPU RAM (align 64, capacity 2 MiB, §7.2). Over capacity, `MemoryOverflowError` names the
step where the peak is reached and what is alive there (the context ncc's "KPU allocator cannot
allocate more memory" lacks, ecosystem.md §2 P9).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kcc.alloc.greedy import greedy_candidates
from kcc.alloc.names import display_names
from kcc.alloc.packing import Buffer, Plan, first_fit, live_at, live_lower_bound, plan_errors, slot_size
from kcc.alloc.solver import solve
from kcc.errors import UnsupportedModelError

#: CP-SAT deterministic seconds granted per second of `--max-allocator-solve-secs`. Deterministic
#: time counts solver work, not seconds, and CP-SAT under-counts its no-overlap propagation: on the
#: 2-core build machine, hard packing searches advanced only 0.02-0.08 deterministic s per wall s
#: (0.016 under load), so 0.025 keeps a search that exhausts its budget near the requested wall
#: time (default 60 s -> 1.5; the worst stress instance took 47 s). Searches that reach the lower
#: bound stop at once, which is what real networks do.
DETERMINISTIC_PER_SEC = 0.025

#: `--max-allocator-solve-secs 0` whose first fit and greedy packings all overflow a capacity the
#: live-size lower bound fits in: CP-SAT still gets this many seconds' budget, since a kmodel is what
#: the user asked for (BlazePalm's stem, whose skip is written in KPU RAM from its first group on,
#: packs in 2 MiB only by search)
OVERFLOW_SOLVE_SECS = 10.0


class MemoryOverflowError(UnsupportedModelError):
    """The best packing of an address space with a fixed capacity (KPU RAM) does not fit. `space`,
    `excess` (bytes over the capacity) and `live` (name and bytes of each tensor alive at the peak) let
    a caller retry with less in that space (kcc.pipeline)."""

    space: str = ""
    excess: int = 0
    live: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class PlanResult:
    """One packed address space plus what a report needs to explain it."""
    space: str  # "main memory" or "KPU RAM"
    align: int
    capacity: int | None
    buffers: tuple[Buffer, ...]
    plan: Plan
    method: str  # the winning candidate: "first fit", "size/best-fit", ..., "cp-sat"
    first_fit_peak: int
    lower_bound: int  # live-size lower bound (aligned sizes)
    proven_bound: int  # max(lower_bound, the bound CP-SAT proved)
    solver_status: str  # "OPTIMAL", "FEASIBLE", or why CP-SAT did not run
    solve_secs: float  # wall time of the whole planning
    deterministic_secs: float  # CP-SAT's deterministic time
    peak_step: int  # a step where the highest address in use is reached (-1 = before the first node)
    peak_live: tuple[Buffer, ...]  # buffers alive at peak_step, largest first

    @property
    def peak(self) -> int:
        return self.plan.peak

    @property
    def optimal(self) -> bool:
        return self.plan.peak <= self.proven_bound


def step_label(step: int, step_names: list[str]) -> str:
    """'conv_3' for a node step; the graph boundary for the steps before/after all nodes."""
    if step < 0:
        return "(model inputs)"
    if step >= len(step_names):
        return "(model outputs)"
    return display_names(step_names)[step_names[step]]


def peak_step(buffers: list[Buffer], plan: Plan, align: int) -> int:
    """The step whose live buffers reach the highest address (most live bytes, then earliest, on ties)."""
    best, key = -1, (-1, -1)
    for t in sorted({b.birth for b in buffers}):
        live = live_at(buffers, t)
        k = (max(plan.offsets[b.name] + slot_size(b, align) for b in live), sum(slot_size(b, align) for b in live))
        if k > key:
            best, key = t, k
    return best


def plan_memory(buffers: list[Buffer], *, align: int, solve_secs: float, capacity: int | None = None,
                space: str = "main memory", step_names: list[str] | None = None) -> PlanResult:
    """Pack `buffers` (unique names) as tightly as the budget allows; see the module docstring.

    `solve_secs` is `--max-allocator-solve-secs`: 0 = first fit only (or the greedy candidates too,
    when first fit overflows `capacity`, and CP-SAT for OVERFLOW_SOLVE_SECS when they all do but the
    lower bound fits); otherwise CP-SAT gets
    `solve_secs * DETERMINISTIC_PER_SEC` deterministic seconds. `step_names` (node name per step)
    only serve messages. Raises `MemoryOverflowError` if the peak exceeds `capacity`.
    """
    t0 = time.perf_counter()
    buffers = list(buffers)
    lower = live_lower_bound(buffers, align)
    ff = first_fit(buffers, align)
    candidates: list[tuple[str, Plan]] = [("first fit", ff)]
    status, bound, det = "not run (--max-allocator-solve-secs 0)", lower, 0.0
    if solve_secs > 0 or (capacity is not None and ff.peak > capacity):
        # the greedy orders are cheap: even without the solver, try them before reporting an overflow
        candidates += greedy_candidates(buffers, align)
    if solve_secs <= 0 and capacity is not None and lower <= capacity < min(c[1].peak for c in candidates):
        solve_secs = OVERFLOW_SOLVE_SECS
    if solve_secs > 0:
        _, best = min(candidates, key=lambda c: c[1].peak)
        if best.peak <= lower:
            status = "not needed (a greedy plan reached the lower bound)"
        else:
            result = solve(buffers, align, best, lower, solve_secs * DETERMINISTIC_PER_SEC)
            status, bound, det = result.status, max(lower, result.bound), result.deterministic_secs
            if result.plan is not None and not plan_errors(buffers, result.plan, align):
                candidates.append(("cp-sat", result.plan))
    method, best = min(candidates, key=lambda c: c[1].peak)
    t = peak_step(buffers, best, align)
    live = sorted(live_at(buffers, t), key=lambda b: (-b.size, b.name))
    res = PlanResult(space, align, capacity, tuple(buffers), best, method, ff.peak, lower, max(bound, lower),
                     status, time.perf_counter() - t0, det, t, tuple(live))
    if capacity is not None and best.peak > capacity:
        raise overflow_error(res, step_names or [])
    return res


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def overflow_error(res: PlanResult, step_names: list[str], shown: int = 6) -> MemoryOverflowError:
    """One line: where the peak is, what is alive there, needed vs available, and what to change."""
    where = step_label(res.peak_step, step_names)
    live = res.peak_live
    names = display_names(b.name for b in live)
    items = ", ".join(f"{names[b.name]} {_kib(slot_size(b, res.align))}" for b in live[:shown])
    if len(live) > shown:
        rest = sum(slot_size(b, res.align) for b in live[shown:])
        items += f", +{len(live) - shown} more {_kib(rest)}"
    floor = ("no packing can fit: the tensors alive at one step alone need "
             f"{res.lower_bound} B" if res.lower_bound > (res.capacity or 0)
             else f"best packing found; lower bound {res.lower_bound} B")
    err = MemoryOverflowError(
        f"{res.space} overflow: {res.peak} B needed, {res.capacity} B available ({floor}); "
        f"peak at step {res.peak_step} '{where}' with {len(live)} tensor(s) alive: {items}",
        hint=f"use a smaller input resolution, or fewer channels in the layers around '{where}'")
    err.space, err.excess = res.space, res.peak - (res.capacity or 0)
    err.live = tuple((b.name, slot_size(b, res.align)) for b in live)
    return err
