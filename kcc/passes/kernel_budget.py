"""kernel_budget: the device RAM the decomposed convs of kcc.passes.decompose_kernels may take.

A decomposition is bought with kmodel bytes (its KPU layers and weights). decompose_kernels gives each
conv its fastest form within a cap of its own (kcc.passes.kernel_plans.STACK_KPU_BYTES) and, on a
first try, up to MODEL_KPU_BYTES more between them (`allot`: the ladders of faster forms beyond
that cap, the most estimated time saved per extra byte first). A model that this puts over its
device RAM budget (kcc.pipeline) is compiled again with the room the budget leaves its weighed convs
(`within_room`): every conv starts on the CPU and they climb their ladders together (`climb`, a
greedy multiple-choice knapsack), exact forms and, where the room holds no exact form made in KPU
RAM, forms reading a float input of the CPU as 8-bit codes. Those add a rounding the CPU's float conv
does not make: each one's cost to the model's outputs is measured alone on the calibration samples
(`CodesCosts`), and with `--decompose accurate` (the default) their sum stays within
CODES_COSINE_BUDGET: a move's cost counts as the bytes of the same share of what is left of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.options import CompileOptions
from kcc.passes import kernel_plans as P
from kcc.passes.kernel_cost import kmodel_bytes
from kcc.passes.kernel_forms import KPU_MADE, Form
from kcc.target.k210 import DEFAULT_MHZ
from kcc.target.quant_rules import fixup_range

#: kmodel bytes a whole model may spend, beyond what each conv may take (kernel_plans.STACK_KPU_BYTES),
#: on stacks made in KPU RAM that need more (`allot`): the device RAM spent on speed, taken back by
#: kcc.pipeline from a model it puts over CompileOptions.ram_budget (`--ram-budget`; default the bare
#: SDK's 5.5 MiB of kmodel and working memory)
MODEL_KPU_BYTES = 3 * 1024 * 1024
#: 1 - cosine of a model's outputs (its worst output, mean over the calibration samples) that reading
#: float inputs of the CPU as 8-bit codes may cost under --decompose accurate, summed over the convs
#: that do, each measured alone (`CodesCosts`). BlazePalm: its 23 5x5s reading floats cost 2.6e-3 in
#: all on one grid each (docs/measurements.md §20), 2.6e-4 on a grid per 4 channels, as its forms'
#: channel groups read them (§24)
CODES_COSINE_BUDGET = 5e-4

#: the reason of a decision reading a float input of the CPU as 8-bit codes (`within_room`)
CODES_REASON = "decomposed, reading its float input as 8-bit codes: the device RAM budget holds no exact form"


class Status(Enum):
    DECOMPOSED = "decomposed"  # `plan` puts the conv on the KPU
    ON_KPU = "on the KPU as it is"  # legalize_kpu takes the conv as it is: nothing to decide
    KEPT = "kept on the CPU"  # some form lands on the KPU, or none was tried: `reason` says why not
    NO_FORM = "no form"  # no decomposition lands on the KPU: legalize_kpu's own reason says it all


@dataclass(frozen=True)
class Decision:
    node: str
    status: Status
    plan: Form | None  # None: the conv stays as it is
    cycles: float  # estimate of the chosen form
    cpu_cycles: float  # estimate of the conv left on the CPU
    reason: str
    codes: bool = False  # it reads its float input as 8-bit codes (`within_room`)

    @property
    def cpu_note(self) -> str | None:
        """What the CPU placement of a conv kept on the CPU adds to legalize_kpu's reason."""
        return f"not decomposed: {self.reason}" if self.status is Status.KEPT else None


def allot(candidates: list[tuple[Node, Decision, list[tuple[int, Decision]]]], opts: CompileOptions,
          budget: int = MODEL_KPU_BYTES) -> tuple[dict[str, int], int]:
    """Which faster form beyond STACK_KPU_BYTES (a stack made in KPU RAM) each conv takes: each
    candidate is (conv, decision within STACK_KPU_BYTES, its ladder: (cap, decision within cap), caps
    rising, each decision faster than the one before, `ladder`). Step by step, the step up some
    conv's ladder that saves the most estimated time per extra kmodel byte (`kmodel_bytes`, the CPU
    conv's float weights too; `climb`) while the extra bytes of all stay within `budget` (one that needs no
    more bytes is always taken): the time a budget buys spread over every conv that can use it (a
    `fan_kpu` in groups of one line for each wide 5x5 rather than groups of four lines for one of
    them). Returns the cap each upgraded conv is decided with, and the extra bytes they take."""
    rungs = []  # per candidate: [(extra bytes, cycles, cost)] from its decision within STACK_KPU_BYTES up
    for n, small, steps in candidates:
        base = kmodel_bytes(n, small.plan, opts)
        rungs.append([(0, small.cycles, 0.0)] + [(max(kmodel_bytes(n, d.plan, opts) - base, 0), d.cycles, 0.0)
                                                  for _, d in steps])
    at = climb(rungs, budget, [0] * len(candidates))
    return ({n.name: steps[at[i] - 1][0] for i, (n, _, steps) in enumerate(candidates) if at[i]},
            sum(r[k][0] for r, k in zip(rungs, at)))


def ladder(n: Node, small: Decision, beyond: set[Form], decide) -> list[tuple[int, Decision]]:
    """(cap, decision within cap) of conv n for every cap one of `beyond` (plans beyond STACK_KPU_BYTES)
    is estimated to need, rising, each decision faster than the one before (and than `small`)."""
    out, cycles = [], small.cycles
    # a fan only beyond STACK_KPU_BYTES (`_fan_kpu_plans`), however few bytes it takes
    for cap in sorted({max(b, P.STACK_KPU_BYTES + 1) for p in beyond if (b := P.plan_bytes(n, p)) is not None}):
        d = decide(n, cap)
        if d.plan is not None and d.cycles < cycles:
            out.append((cap, d))
            cycles = d.cycles
    return out


def climb(rungs: list[list[tuple[int, float, float]]], budget: int, at: list[int],
          cost_budget: float = 0.0) -> list[int]:
    """A multiple-choice knapsack over two resources, greedily: rungs[i] = candidate i's choices as
    (kmodel bytes, cycles, cost), `at` the ones they start on. Step by step, the move of some candidate
    to a faster choice that saves the most cycles per byte it takes, its extra cost counted as the
    bytes of the same share of what is left of the two budgets, while both stay within them (a move
    that takes neither counts as one byte). Returns each candidate's choice."""
    at, spent, cost = list(at), 0, 0.0
    while True:
        best = None  # (cycles saved per byte, candidate, choice)
        for i, steps in enumerate(rungs):
            b0, c0, e0 = steps[at[i]]
            for k, (b, c, e) in enumerate(steps):
                if c >= c0 or spent + b - b0 > budget or cost + e - e0 > cost_budget + 1e-12:
                    continue
                extra = max(b - b0, 0) + (max(e - e0, 0.0) * (budget - spent) / max(cost_budget - cost, 1e-12)
                                          if e > e0 else 0.0)
                gain = (c0 - c) / max(extra, 1)
                if best is None or gain > best[0]:
                    best = (gain, i, k)
        if best is None:
            return at
        _, i, k = best
        spent += rungs[i][k][0] - rungs[i][at[i]][0]
        cost += rungs[i][k][2] - rungs[i][at[i]][2]
        at[i] = k


class CodesCosts:
    """What reading a conv's float input as 8-bit codes costs the model (`cost`), measured on demand,
    each (conv, channel group) once: g's float outputs on `samples` are computed once, with every
    conv input's range per channel."""

    def __init__(self, g: Graph, convs: list[Node], samples: list):
        self.g, self.samples, self.convs = g, samples, {n.name: n for n in convs}
        self.measured: dict[tuple[str, int | None], float] = {}
        xs = {id(n.inputs[0]) for n in convs}
        self.seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def note(n: Node, v: np.ndarray) -> None:
            if id(n) in xs:
                lo, hi = v.min(axis=(0, *range(2, v.ndim))), v.max(axis=(0, *range(2, v.ndim)))
                was = self.seen.get(id(n))
                self.seen[id(n)] = (lo, hi) if was is None else (np.minimum(was[0], lo), np.maximum(was[1], hi))

        self.refs = [run(g, s, note) for s in samples] if samples and convs else []

    def __contains__(self, name: str) -> bool:
        return name in self.convs and bool(self.samples)

    def cost(self, name: str, group: int | None = None) -> float:
        """1 - cosine of g's outputs (the worst output, mean over the samples) when conv `name`'s input
        alone is rounded to 8 bits, each `group` channels (None: all) on the grid of their range over
        the samples (as kcc.quant.policy.share_view_grids gives a decomposed depthwise's channel groups),
        against g's float outputs: what reading it as codes costs the model, before any rounding of
        its own."""
        key = (name, group)
        if key not in self.measured:
            self.measured[key] = self._measure(self.convs[name], group)
        return self.measured[key]

    def _measure(self, n: Node, group: int | None) -> float:
        g, x = self.g, n.inputs[0]
        lo_c, hi_c = self.seen[id(x)]
        c = x.shape[1]
        step = group or c
        made: list[Node] = []
        parts = []
        for c0 in range(0, c, step):
            c1 = min(c, c0 + step)
            lo, hi = fixup_range(float(lo_c[c0:c1].min()), float(hi_c[c0:c1].max()))
            scale = 255.0 / (hi - lo)  # the grid calibration gives that range (nncase's, kcc.quant.params)
            zero = round(-lo * scale)
            src = x
            if (c0, c1) != (0, c):
                src = g.insert_before(n, O.StridedSlice((0, c0, *[0] * (x.type.rank - 2)), (x.shape[0], c1, *x.shape[2:]),
                                                        (1,) * x.type.rank), (x,), f"{n.name}/codes_probe_slice")
                made.append(src)
            code = g.insert_before(n, KO.Quantize(zero, scale), (src,), n.name + "/codes_probe")
            back = g.insert_before(n, KO.Dequantize(zero, scale), (code,), n.name + "/codes_probe_f")
            made += [code, back]
            parts.append(back)
        if len(parts) > 1:
            parts = [g.insert_before(n, O.Concat(1), tuple(parts), n.name + "/codes_probe_all")]
            made += parts
        n.inputs = (parts[0], *n.inputs[1:])
        try:
            return float(np.mean([1.0 - min(_cosine(a, b) for a, b in zip(run(g, s), ref))
                                  for s, ref in zip(self.samples, self.refs)]))
        finally:
            n.inputs = (x, *n.inputs[1:])
            dead = {id(m) for m in made}
            g.nodes = [m for m in g.nodes if id(m) not in dead]


def codes_group(n: Node, plan: Form | None) -> int | None:
    """The channels of conv n's input that its form `plan` quantizes on one grid: a depthwise conv's
    stacked forms read it in channel groups, each sliced off and quantized on its own
    (kcc.passes.kernel_forms `_group_source`, kcc.quant.policy.share_view_grids); None: all of them.
    (A float that part_groups makes a concatenation read whole, BlazePalm's stem PReLU, keeps one
    grid: its first 5x5 takes an exact form before any codes one, `within_room`.)"""
    if plan is None or n.op.groups == 1 or plan.combine not in ("stack", "fan_kpu", *KPU_MADE):
        return None
    return plan.group or None  # 0: all channels in one layer


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def within_room(convs: list[Node], first: dict, room: int, decide, size, ram, residual_in,
                costs: CodesCosts | None) -> tuple[dict[int, tuple[Decision, int]], float | None]:
    """Each conv's decision when all of them together may take `room` bytes of kmodel (kcc.pipeline's
    retry of a model over its device RAM budget; `size(n, plan, codes)`: a choice's bytes, the CPU
    conv's weights too; `first`: per conv, its input and its decision within STACK_KPU_BYTES):
    every conv starts on the CPU and they `climb` their ladders together, each ladder its decision
    within STACK_KPU_BYTES, then within every cap a faster stack made in KPU RAM needs, up to `room`.
    A conv whose input is a float of the CPU (`residual_in`) and whose exact forms made in KPU RAM
    (which stack that input's rounding residual too) need more than STACK_KPU_BYTES also has the
    forms reading that input as 8-bit codes on its ladder, as every KPU layer reading a CPU float
    does (`decide(n, cap, True)`), each costing its measured `costs` (`CodesCosts`, on the form's channel groups) of
    CODES_COSINE_BUDGET (None: --decompose fast, no limit): BlazePalm's 24x24, 12x12 and 6x6 5x5s,
    whose exact forms the room holds only as views made by the CPU, if at all. Returns, per conv
    weighed, its choice and the cap it was decided within, and, when the room holds some conv's faster
    form back, the least CPU cycles a byte of it saves in any conv it takes off the CPU (else None):
    what another use of the device RAM must beat."""
    ms = DEFAULT_MHZ * 1e3
    top = max(room, P.STACK_KPU_BYTES + 1)

    def rungs(n: Node, d: Decision, res: bool, codes: bool) -> list[tuple]:
        def cost(e: Decision) -> float:  # on the form's own channel groups, each on its grid
            return costs.cost(n.name, codes_group(n, e.plan)) if codes and costs is not None else 0.0

        beyond = set(P.plans(n, res, True, 0.0, top, ram(n))) - set(P.plans(n, res, True, 0.0, ram=ram(n)))
        steps = [(P.STACK_KPU_BYTES, d)] + (ladder(n, d, beyond, lambda m, cap: decide(m, cap, codes)) if beyond else [])
        return [(size(n, e.plan, codes), e.cycles, cost(e), e, cap) for cap, e in steps if e.plan is not None]

    cands = []  # (conv, [(bytes, cycles, cost, decision, cap)])
    for n in convs:
        d = first[id(n)][1]
        if d.status is Status.ON_KPU or not d.cpu_cycles:
            continue
        cpu = Decision(n.name, Status.KEPT, None, d.cpu_cycles, d.cpu_cycles, d.reason)
        steps = [(size(n, None), d.cpu_cycles, 0.0, cpu if d.plan is not None else d, P.STACK_KPU_BYTES)]
        steps += rungs(n, d, residual_in(n), False)
        if (residual_in(n) and (d.plan is None or d.plan.combine not in ("fan_kpu", *KPU_MADE))
                and (costs is None or n.name in costs)):
            steps += rungs(n, decide(n, P.STACK_KPU_BYTES, True), False, True)
        cands.append((n, steps))
    free = room - sum(size(n, None) for n in convs if first[id(n)][1].status is not Status.ON_KPU)  # beyond the CPU's
    at = climb([[s[:3] for s in steps] for _, steps in cands], free, [0] * len(cands),
               CODES_COSINE_BUDGET if costs is not None else float("inf"))
    out, rates, held_back = {}, [], False
    for i, (n, steps) in enumerate(cands):
        d, cap = steps[at[i]][3:]
        if at[i]:
            rates.append((steps[0][1] - steps[at[i]][1]) / max(steps[at[i]][0] - steps[0][0], 1))
        fastest = min(steps, key=lambda s: s[1])
        if fastest[3] is not d and fastest[3].plan is not None:
            held_back = True
            held = (f"the model's device RAM budget holds {room} B of decompositions, not its faster "
                    f"{fastest[3].plan.describe()} (~{fastest[0]} B, ~{fastest[1] / ms:.1f} ms)")
            d = Decision(d.node, d.status, d.plan, d.cycles, d.cpu_cycles,
                         f"{d.reason}; {held}" if d.plan is not None or d.codes else f"device RAM: {held}", d.codes)
        out[id(n)] = (d, cap)
    return out, min(rates, default=None) if held_back else None
