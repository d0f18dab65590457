"""Exact packing with OR-tools CP-SAT: minimise the peak address, deterministically.

ncc models each allocator as a 2-D no-overlap problem (time x address, addresses in units of the
alignment) and minimises the *sum* of end addresses with a wall-clock limit and parallel workers,
so its layouts change from run to run and the sum objective does not target the one number the
runtime allocates, the peak (kpu_semantics.md §7; kmodel_v4.md §7.1: `main_mem` = max(start +
slot size)). kcc keeps the 2-D model but

* minimises the peak (`peak >= x_i + s_i`, peak bounded below by the live-size lower bound, so a
  solution reaching it stops the search as proven optimal),
* adds one 1-D no-overlap per maximal live set (the buffers alive at one step). With fixed time
  intervals this is equivalent to the 2-D constraint (intervals overlap iff they share a birth
  step) but gives the solver energy reasoning on each step, which proves optimality much sooner,
* starts from the best greedy plan (AddHint) and uses its peak as the upper bound, and
* runs one worker with a fixed seed and a *deterministic* time limit, so the same buffers always
  give the same offsets on any machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from kcc.alloc.packing import Buffer, Plan, align_up

#: Fixed seed: part of the reproducibility contract, change it only with a reason.
SEED = 20190828
USE_2D = True


@dataclass(frozen=True)
class SolveResult:
    plan: Plan | None  # None if the solver found nothing (then the caller keeps its warm start)
    status: str  # CP-SAT status name: OPTIMAL, FEASIBLE, UNKNOWN, ...
    bound: int  # proven lower bound on the peak, in bytes
    wall_secs: float
    deterministic_secs: float


def maximal_live_sets(buffers: list[Buffer]) -> list[list[int]]:
    """Indices of the buffers alive at each birth step, keeping only sets not contained in another.

    The buffers of an interval graph that pairwise overlap in time all contain the latest birth
    among them, so these sets are exactly the maximal cliques of the time-overlap graph.
    """
    sets: list[frozenset[int]] = []
    for t in sorted({b.birth for b in buffers}):
        sets.append(frozenset(i for i, b in enumerate(buffers) if b.birth <= t <= b.death))
    sets = list(dict.fromkeys(sets))
    maximal = [s for s in sets if not any(s < o for o in sets)]
    return [sorted(s) for s in maximal]


def solve(buffers: list[Buffer], align: int, warm: Plan, lower_bound: int,
          deterministic_secs: float) -> SolveResult:
    """Minimise the peak of `buffers`, starting from (and never worse than) `warm`.

    `lower_bound` (bytes, a multiple of `align`) must be valid for every packing, e.g.
    `live_lower_bound(buffers, align)`. Offsets are multiples of `align`.
    """
    t0 = time.perf_counter()
    units = [align_up(max(b.size, 1), align) // align for b in buffers]
    ub = warm.peak // align
    lb = min(lower_bound // align, ub)
    model = cp_model.CpModel()
    xs, addr, when = [], [], []
    for i, (b, s) in enumerate(zip(buffers, units)):
        x = model.new_int_var(0, ub - s, f"x{i}")
        xs.append(x)
        addr.append(model.new_fixed_size_interval_var(x, s, f"a{i}"))
        when.append(model.new_fixed_size_interval_var(b.birth, b.death - b.birth + 1, f"t{i}"))
        model.add_hint(x, warm.offsets[b.name] // align)
    peak = model.new_int_var(lb, ub, "peak")
    for x, s in zip(xs, units):
        model.add(peak >= x + s)
    if USE_2D:
        model.add_no_overlap_2d(when, addr)
    for live in maximal_live_sets(buffers):
        if len(live) > 1:
            model.add_no_overlap([addr[i] for i in live])
    model.add_hint(peak, ub)
    model.minimize(peak)

    solver = cp_model.CpSolver()
    p = solver.parameters
    p.num_workers = 1
    p.random_seed = SEED
    p.max_deterministic_time = deterministic_secs
    p.log_search_progress = False
    status = solver.solve(model)
    name = solver.status_name(status)
    plan = None
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        offsets = {b.name: solver.value(x) * align for b, x in zip(buffers, xs)}
        plan = Plan(offsets, solver.value(peak) * align)
    bound = int(solver.best_objective_bound) * align if plan is not None else lb * align
    return SolveResult(plan, name, bound, time.perf_counter() - t0, solver.deterministic_time)
