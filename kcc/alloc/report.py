"""MemoryReport: what a compiled model needs in device RAM, and whether that fits the usual firmwares.

ncc prints only "Working memory usage", which leaves out the model itself; users learn at
`kpu.load` time that it does not fit (ecosystem.md §2 P3). The runtime keeps the whole kmodel file
in RAM (constants and weights included) and allocates `main_mem` bytes of working memory next to
it (kmodel_v4.md §7.1), so the device needs at least file size + working memory. The budgets are
the usable-RAM figures of ecosystem.md §1.6 / P3: about 5.5 MB with the bare Kendryte SDK and about
3.5 MB in MaixPy (which also keeps its GC heap and frame buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

from kcc.alloc.names import display_names
from kcc.alloc.packing import slot_size
from kcc.alloc.planner import PlanResult, step_label

MiB = 1 << 20
#: (name, bytes usable for model + working memory), most generous first.
BUDGETS: tuple[tuple[str, int], ...] = (("bare SDK", int(5.5 * MiB)), ("MaixPy", int(3.5 * MiB)))
#: `kcc compile --ram-budget`'s firmware names
BUDGET_FLAGS = {"sdk": "bare SDK", "maixpy": "MaixPy"}


def ram_budget(text: str) -> int | None:
    """Bytes of a --ram-budget value (a BUDGET_FLAGS name or a size in MiB); None if it is neither."""
    if text.lower() in BUDGET_FLAGS:
        return dict(BUDGETS)[BUDGET_FLAGS[text.lower()]]
    try:
        mib = float(text)
    except ValueError:
        return None
    return int(mib * MiB) if 0.0 < mib <= 64.0 else None


@dataclass(frozen=True)
class MemoryReport:
    main: PlanResult
    constants: int  # bytes of the constants blob (part of the kmodel file)
    step_names: tuple[str, ...]  # node name per step (the kmodel node order)
    kpu: PlanResult | None = None  # KPU RAM, when the model has KPU tensors

    @property
    def spaces(self) -> list[PlanResult]:
        return [self.main] + ([self.kpu] if self.kpu is not None else [])

    def summary_lines(self, kmodel_bytes: int, timed: bool = True) -> list[str]:
        """The few lines `kcc compile` prints: totals, the peak's layer, bounds, the fit verdict; without
        the planners' wall-clock seconds unless `timed` (a --report is the same for the same inputs)."""
        m = self.main
        out = [f"Main memory: constants {self.constants} B + working memory {m.peak} B = {self.constants + m.peak} B",
               f"  working memory {_quality(m)}; {_how(m, timed)}",
               f"  peak at {_where(m, self.step_names)}"]
        if self.kpu is not None:
            k = self.kpu
            out.append(f"KPU RAM: {k.peak} of {k.capacity} B, {_quality(k)}; {_how(k, timed)}")
            out.append(f"  peak at {_where(k, self.step_names)}")
        out.append(fit_verdict(kmodel_bytes, m.peak))
        return out

    def peak_items(self) -> list[tuple[str, int]]:
        """(display name, bytes) of the main-memory buffers alive at the working-memory peak, largest
        first: what the working memory is made of where it is largest."""
        m = self.main
        names = display_names(b.name for b in m.peak_live)
        return sorted(((names[b.name], slot_size(b, m.align)) for b in m.peak_live), key=lambda kv: -kv[1])

    def table_lines(self) -> list[str]:
        """`--memory-report`: every buffer of every space in birth order, with its address range."""
        out = []
        for res in self.spaces:
            out.append(f"{res.space} buffers (align {res.align}; steps are kmodel node indices, "
                       f"-1 = model input, {len(self.step_names)} = model output):")
            out.append(f"  {'offset':>9} {'size':>9} {'end':>9}  {'steps':>9}  name")
            names = display_names((b.name for b in res.buffers), 80)
            for b in sorted(res.buffers, key=lambda b: (b.birth, res.plan.offsets[b.name], b.name)):
                off = res.plan.offsets[b.name]
                out.append(f"  {off:>9} {b.size:>9} {off + slot_size(b, res.align):>9}  "
                           f"{f'{b.birth}..{b.death}':>9}  {names[b.name]}")
        return out


def fit_verdict(kmodel_bytes: int, working: int) -> str:
    """One line: model file + working memory against each budget."""
    need = kmodel_bytes + working
    parts = []
    for name, budget in BUDGETS:
        left = budget - need
        parts.append(f"{name} ({budget / MiB:.1f} MiB) {'fits' if left >= 0 else 'DOES NOT FIT'}, "
                     f"{abs(left) / MiB:.2f} MiB {'free' if left >= 0 else 'over'}")
    return f"Device RAM: kmodel {kmodel_bytes} B + working memory {working} B = {need / MiB:.2f} MiB: " + "; ".join(parts)


def over_budgets(need: int) -> list[tuple[str, int]]:
    """The `BUDGETS` (name, bytes) that `need` bytes of model + working memory exceed."""
    return [(name, budget) for name, budget in BUDGETS if need > budget]


def mib(size: int) -> str:
    """A byte count for one-line messages: MiB with two decimals, KiB below 0.1 MiB."""
    return f"{size / MiB:.2f} MiB" if size >= MiB // 10 else f"{size / 1024:.1f} KiB"


def _quality(r: PlanResult) -> str:
    """'optimal (...)' or how far above the best proven lower bound, plus first fit for comparison."""
    if r.optimal:
        head = f"optimal (lower bound {r.proven_bound} B)"
    else:
        head = f"{r.peak / max(r.proven_bound, 1) - 1:.1%} above the lower bound {r.proven_bound} B"
    return f"{head}, first fit {r.first_fit_peak} B"


def _how(r: PlanResult, timed: bool = True) -> str:
    return f"plan by {r.method}; CP-SAT {r.solver_status}" + (f"; {r.solve_secs:.2f} s" if timed else "")


def _where(r: PlanResult, step_names: tuple[str, ...], shown: int = 4) -> str:
    """Where the peak is (the step is the kmodel node index) and what is alive there, in the
    model's tensor names with kcc's own tensors in words (kcc.alloc.names)."""
    label = step_label(r.peak_step, list(step_names))
    names = display_names(b.name for b in r.peak_live)
    live = ", ".join(f"{names[b.name]} {slot_size(b, r.align)} B" for b in r.peak_live[:shown])
    more = f", +{len(r.peak_live) - shown} more" if len(r.peak_live) > shown else ""
    return f"step {r.peak_step} '{label}', {len(r.peak_live)} tensor(s) alive: {live}{more}"
