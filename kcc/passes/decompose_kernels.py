"""decompose_kernels: a convolution the KPU rejects, as KPU-legal 3x3 convolutions of views of its input.

The KPU convolves 1x1 and 3x3 kernels only, over maps of at most 256 rows (legalize_kpu), so ncc
leaves every 5x5 depthwise of BlazePalm/BlazeHand, every 7x7 stem and every oversized stride-2 stem
to the CPU, where a float conv costs ~64 cycles per MAC. This pass rewrites such a conv, before
legalize, into terms that are each an ordinary 3x3 conv of a view (crop/phase) of the input.

The term algebra (which taps each 3x3 term takes, which view of the input it reads) is
kcc.passes.kernel_terms; the forms (sum, stack, stack_dw, stack_kpu, fan_kpu, copies_kpu, phases_kpu) and their IR,
kcc.passes.kernel_forms;
what a form costs in its place in the model, kcc.passes.kernel_cost; which forms a conv can take within
the KPU's limits and the byte caps (the candidates below), kcc.passes.kernel_plans. This module chooses among them.

## Choosing

Candidates: split q in {1, s} x zero placement z x combiner. A depthwise `stack` needs groups of
at most 1024 / J channels, at most MAX_STACK_GROUPS layers, STACK_WEIGHT_BUDGET bytes of weights
(MAX_STACK_WEIGHT if no grouping fits that) and < 64 weight loads a layer (kmodel's load_time
field); the fewest layers and 2, 4, ... times as many are tried, since smaller groups may fit KPU RAM
where larger ones do not. `stack_dw` needs J*C <= 1024 and the budget. A `stack_kpu` (stride 1,
"same", kernels up to 5x5: nine shifted copies made by KPU layers) also takes groups of a multiple of
the channels a KPU RAM line holds (so that its copies concatenate in place), its layers and weights
within STACK_KPU_BYTES of kmodel, and a group's copies within KPU RAM (`_stack_kpu_ram`); a
`copies_kpu` (25 copies, a 1x1 combine: 25 instead of 81 weight bytes per channel pair, but 26
instead of 10 KPU layers of ~768 B a group, so rarely fewer bytes in all) the same. A `fan_kpu` (the
nine copies of a group made by one KPU layer: 2 layers a group) takes groups of FAN_KPU_LINES lines,
only beyond STACK_KPU_BYTES. A `phases_kpu` (stride 2: the input's four stride phases picked
by KPU layers, the polyphase `stack` without its CPU pad, slices and uploads) takes the groups that
`stack` would, of at least 2 channels, each a multiple of the channels a line holds at x's width and
at the phases' (`_line`), its phases and output at the phases' size in KPU RAM. A model may give
its convs MODEL_KPU_BYTES more between them for such stacks (`allot`: each conv's ladder of decisions within rising caps, `_ladder`, climbed step by step,
the most estimated time saved per extra byte first); kcc.pipeline takes that back from a model it puts
over the device RAM budget.
Each candidate is legalized on its own (a few-node graph) and must land wholly on the KPU, and is
costed in estimated K210 cycles (`estimate_cycles`: every node the kmodel will hold for it, priced as
`kcc info --estimate` prices them, kcc.latency with kcc.target.k210's costs: KPU layers, uploads and
copies out, the CPU's quantize, views, pads, adds), the float conv on the CPU too, each in its place
in the model (`Where`: a float or uint8 input, KPU or float readers). A conv is decomposed only when
some form is estimated faster than the float conv on the CPU. `--decompose fast` takes the fastest
form; `--decompose accurate` (the default; `off` never decomposes) takes the fastest form that rounds
no more than the CPU conv
(`extra_roundings`): a
`stack`, reading a float input of the CPU (a PReLU, an add) with its rounding residual
(`RESIDUAL_GAIN`; twice the input channels, within the same limits). The CPU conv reads that input
unrounded, and a `sum` or `stack_dw` rounds each partial sum over its own range, after a clamp several
times the output's. Measured on BlazePalm: its 256-channel 5x5s summed with the residual cost 0.35 dB
of output SQNR. A stack read in float on the CPU (BlazePalm's stem, before its PReLU), where the
float conv would not round at all, computes its output in four parts: y in [-t, t] on two fine grids
and the tails on two more, t chosen from the calibration samples (`bulk_thresholds`); or, without
samples, in two halves (y <= 0, y >= 0).
A conv reading a PReLU that kcc.passes.prelu_stream will keep in KPU RAM (`streamed_prelus`, asked
before any rewrite: BlazePalm's blocks) reads 8-bit codes, as from a KPU layer: no residual, and
priced with a uint8 input (`Where.float_input` False).
The decision (`Decision`, one per conv legalize_kpu would leave on the CPU, in ctx.decisions), and
its estimate against the float conv on the CPU, go into the output node's note; legalize_kpu adds
the reason of a conv that stays (`Decision.cpu_note`) to its CPU placement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.options import CompileOptions
from kcc.passes import kernel_plans as P
from kcc.passes.blaze_blocks import streamed_prelus
from kcc.passes.kernel_cost import Where, alone, kmodel_bytes, on_kpu, surroundings
from kcc.passes.kernel_forms import KPU_MADE, Form, emit, plan_terms
from kcc.passes.manager import CompileContext
from kcc.target.k210 import DEFAULT_MHZ, KPU_RAM_SIZE

#: kmodel bytes a whole model may spend, beyond what each conv may take (kernel_plans.STACK_KPU_BYTES),
#: on stacks made in KPU RAM that need more (`allot`): the device RAM spent on speed, taken back by
#: kcc.pipeline from a model it puts over CompileOptions.ram_budget (`--ram-budget`; default the bare
#: SDK's 5.5 MiB of kmodel and working memory)
MODEL_KPU_BYTES = 3 * 1024 * 1024

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

    @property
    def cpu_note(self) -> str | None:
        """What the CPU placement of a conv kept on the CPU adds to legalize_kpu's reason."""
        return f"not decomposed: {self.reason}" if self.status is Status.KEPT else None


def extra_roundings(n: Node, plan: Form, float_input: bool, read_in_float: bool = False) -> int:
    """Roundings a decomposition of conv `n` adds to those of the float conv on the CPU, which reads
    its (8-bit or float) input as it is: one for the partial sums of a multi-term `sum` / `stack_dw`
    (each is rounded to 8 bits over its own, unclamped range), one for a float input read without
    its residual, one for an output read in float (`_read_in_float`) not computed in parts
    (`Form.halves`). An output a KPU layer reads is rounded to 8 bits either way."""
    partial = plan.combine not in ("stack", "fan_kpu", *KPU_MADE) and len(plan_terms(n, plan) or ()) > 1
    return int(partial) + int(float_input and not plan.residual) + int(read_in_float and not plan.halves)


def choose(n: Node, opts: CompileOptions = CompileOptions(), residual: bool = True, halves: bool = False,
           bulk: float = 0.0, at: Where | None = None, cap: int | None = None,
           memo: dict | None = None, ram: int = KPU_RAM_SIZE) -> Decision:
    """How to put conv `n` on the KPU if legalize_kpu would not take it as it is: among the
    decompositions that legalize wholly onto the KPU and are estimated faster than the float conv on
    the CPU, the fastest that adds no rounding (`extra_roundings`). A float input (`_cpu_float`) may
    be read with its rounding residual (`residual` allows that); `halves` computes a stack's output in
    two halves (four parts with a `bulk` threshold). Every estimate, the CPU conv's too, counts
    what the conv's surroundings `at` add (`Where`; by default, from n's input alone). A stack made
    in KPU RAM takes at most `cap` bytes of kmodel (None: STACK_KPU_BYTES) and `ram` of KPU RAM. `memo`
    keeps each form's estimate for the next call on the same conv, input and surroundings."""
    op: O.Conv2D = n.op
    x, w, b = n.inputs
    if not (w.is_constant and b.is_constant):
        return Decision(n.name, Status.KEPT, None, 0.0, 0.0, "weights are not constant")
    if op.dilation != (1, 1):
        return Decision(n.name, Status.KEPT, None, 0.0, 0.0, f"dilation {op.dilation}")
    c, oc = x.shape[1], w.shape[0]
    if op.groups not in (1, c) or (op.groups == c > 1 and oc != c):
        return Decision(n.name, Status.KEPT, None, 0.0, 0.0, f"groups {op.groups} (KPU: 1 or depthwise)")
    at = at or surroundings(n, {}, set(), opts)
    fits, cpu = on_kpu(alone(n, None), opts, at)
    if fits:
        return Decision(n.name, Status.ON_KPU, None, cpu, cpu, "on the KPU as it is")
    if opts.decompose == "off":
        return Decision(n.name, Status.KEPT, None, cpu, cpu, "--decompose off")
    float_input = residual and _cpu_float(x)
    forms: list[tuple[int, float, Form]] = []  # (extra roundings, cycles, plan) of what lands on the KPU
    landed = set()  # stacks that fit in some channel grouping: smaller groups only add layers
    for plan in P.plans(n, float_input, halves, bulk, cap, ram):
        # stack_kpu: the groups whose copies concatenate in place are another form (_stack_kpu_plans)
        form = (plan.split, plan.z, plan.combine, plan.residual, plan.halves, P.lines_apart(n, plan))
        if form in landed:
            continue
        key = (id(n), id(x), at, plan)
        if memo is None or key not in memo:
            single = alone(n, plan)
            estimate = None if single is None else on_kpu(single, opts, at)
            if memo is None:
                memo = {}
            memo[key] = estimate
        if memo[key] is None:
            continue
        fits, cycles = memo[key]
        if fits:
            landed.add(form)
            forms.append((extra_roundings(n, plan, float_input, halves), cycles, plan))
    ms = DEFAULT_MHZ * 1e3
    if not forms:
        return Decision(n.name, Status.NO_FORM, None, cpu, cpu, "no decomposition lands on the KPU")
    fastest = min(forms, key=lambda f: f[1])
    faster = f"fastest: {fastest[2].describe()}, ~{fastest[1] / ms:.1f} ms vs ~{cpu / ms:.1f} ms on the CPU"
    if fastest[1] >= cpu:
        return Decision(n.name, Status.KEPT, None, cpu, cpu, f"every KPU form is estimated slower ({faster})")
    exact = forms if opts.decompose == "fast" else [f for f in forms if f[0] == 0]
    if not exact:
        return Decision(n.name, Status.KEPT, None, cpu, cpu,
                        f"every KPU form rounds more than the CPU conv ({faster})")
    best = min(exact, key=lambda f: f[1])
    if best[1] >= cpu:  # BlazePalm's 256-channel 5x5s: the views cost the CPU more
        return Decision(n.name, Status.KEPT, None, cpu, cpu,
                        f"the KPU forms that round no more than the CPU conv are estimated slower "
                        f"({best[2].describe()}: ~{best[1] / ms:.1f} ms), "
                        f"the faster ones round more ({faster})")
    return Decision(n.name, Status.DECOMPOSED, best[2], best[1], cpu, "decomposed")


def _read_in_float(n: Node, users: dict, outputs: set[int]) -> bool:
    """Conv n has no clamp and every reader of its output is a float op of the CPU (a PReLU, an
    element-wise op) or the model's output: there the float conv's output is never rounded, while a
    KPU layer's is, to 8 bits over its whole range. BlazePalm's stem (pre-PReLU, [-6.8, 7.1])."""
    readers = users.get(n, [])
    return (n.op.act == O.NO_CLAMP and (bool(readers) or id(n) in outputs)
            and all(isinstance(u.op, (O.PRelu, O.Binary)) for u in readers))


#: calibration samples the output statistics of a stack read in float come from
BULK_SAMPLES = 8


def float_read_convs(g: Graph, opts: CompileOptions = CompileOptions()) -> list[Node]:
    """Convs legalize_kpu would leave on the CPU whose output, if a decomposition puts them on the
    KPU, is read in float (`_read_in_float`): the ones `bulk_thresholds` measures."""
    if opts.target == "cpu" or opts.decompose == "off":
        return []
    users, outputs = g.users(), {id(o) for o in g.outputs}
    return [n for n in g.nodes if isinstance(n.op, O.Conv2D) and _read_in_float(n, users, outputs)
            and not on_kpu(alone(n, None), opts)[0]]


def bulk_threshold(y: np.ndarray) -> float:
    """t for a four-part output of y: the |y| quantile that minimizes the mean squared rounding step
    over y's values (t / 255 inside [-t, t], (max |y| on that side - t) / 255 outside), or 0 when two
    halves do better. BlazePalm's stem: y in [-6.8, 7.1], std 1.0."""
    v = y.astype(np.float64).ravel()
    lo, hi = max(-v.min(), 0.0), max(v.max(), 0.0)
    side = np.where(v < 0, lo, hi)
    best, best_t = float(np.mean(side ** 2)), 0.0  # two halves: one grid per sign
    for t in np.quantile(np.abs(v), (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)):
        if not 0.0 < t < min(lo, hi):
            continue
        cost = float(np.mean(np.where(np.abs(v) <= t, t, side - t) ** 2))
        if cost < best:
            best, best_t = cost, float(t)
    return best_t


def bulk_thresholds(g: Graph, samples: list, opts: CompileOptions = CompileOptions()) -> dict[str, float]:
    """`bulk_threshold` of every conv of `float_read_convs(g, opts)`, from one float pass over
    `samples` (none without such convs)."""
    convs = {id(n): n.name for n in float_read_convs(g, opts)}
    if not convs:
        return {}
    seen: dict[str, list[np.ndarray]] = {name: [] for name in convs.values()}
    for sample in samples:
        run(g, sample, lambda n, v: seen[convs[id(n)]].append(v) if id(n) in convs else None)
    return {name: bulk_threshold(np.concatenate([v.ravel() for v in vs])) for name, vs in seen.items() if vs}


def _cpu_float(x: Node) -> bool:
    """x (through data movement) is computed in float on the CPU whatever legalize does: a PReLU or
    an element-wise op (a conv may land on the KPU, the graph input is the pixels' own grid)."""
    while isinstance(x.op, (O.Pad, O.StridedSlice, O.Reshape, O.Transpose)):
        x = x.inputs[0]
    return isinstance(x.op, (O.PRelu, O.Binary))


def rewrite(g: Graph, n: Node, plan: Form, note: str = "") -> Node | None:
    """Replace conv `n` of `g` by its decomposition under `plan`; the new output node takes n's name."""
    new = emit(lambda op, ins, name: g.insert_before(n, op, ins, name), n, n.inputs[0], plan)
    if new is None:
        return None
    new.note = note
    g.substitute(n, new, "/decomposed")
    return new


def allot(candidates: list[tuple[Node, Decision, list[tuple[int, Decision]]]], opts: CompileOptions,
          budget: int = MODEL_KPU_BYTES) -> tuple[dict[str, int], int]:
    """Which faster form beyond STACK_KPU_BYTES (a stack made in KPU RAM) each conv takes: each
    candidate is (conv, decision within STACK_KPU_BYTES, its ladder: (cap, decision within cap), caps
    rising, each decision faster than the one before, `_ladder`). Step by step, the step up some
    conv's ladder that saves the most estimated time per extra kmodel byte (`kmodel_bytes`, the CPU
    conv's float weights too) while the extra bytes of all stay within `budget` (one that needs no
    more bytes is always taken): the time a budget buys spread over every conv that can use it (a
    `fan_kpu` in groups of one line for each wide 5x5 rather than groups of four lines for one of
    them). Returns the cap each upgraded conv is decided with, and the extra bytes they take."""
    rungs = []  # per candidate: [(extra bytes, cycles)] from its decision within STACK_KPU_BYTES up
    for n, small, ladder in candidates:
        base = kmodel_bytes(n, small.plan, opts)
        rungs.append([(0, small.cycles)] + [(kmodel_bytes(n, d.plan, opts) - base, d.cycles) for _, d in ladder])
    at = [0] * len(candidates)  # each candidate's rung
    spent = 0
    while True:
        best = None  # (time saved per byte, candidate, rung)
        for i, steps in enumerate(rungs):
            extra, cycles = steps[at[i]]
            for k in range(at[i] + 1, len(steps)):
                more = max(steps[k][0], 0) - max(extra, 0)
                if spent + more > budget or steps[k][1] >= cycles:
                    continue
                gain = (cycles - steps[k][1]) / max(more, 1)
                if best is None or gain > best[0]:
                    best = (gain, i, k)
        if best is None:
            break
        _, i, k = best
        spent += max(rungs[i][k][0], 0) - max(rungs[i][at[i]][0], 0)
        at[i] = k
    return {n.name: ladder[at[i] - 1][0] for i, (n, _, ladder) in enumerate(candidates) if at[i]}, spent




def _ladder(n: Node, small: Decision, beyond: set[Form], decide) -> list[tuple[int, Decision]]:
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


def _shed(convs: list[Node], final: dict[int, Decision], need: int, opts: CompileOptions,
          measured: dict[str, int]) -> tuple[dict[str, str], bool]:
    """The decomposed convs to keep on the CPU so that `need` bytes of kmodel go back to the device RAM
    budget (kcc.pipeline's retry), by name with their reason: the least time saved per byte of kmodel
    their form adds over the CPU conv's first (the bytes its nodes took in the try before, `measured`,
    else kernel_cost.kmodel_bytes' estimate); and whether any decomposition that adds bytes is left.
    Nothing is shed without a need (and no bytes are counted)."""
    if need <= 0:
        return {}, any(d.plan is not None for d in final.values())
    ms = DEFAULT_MHZ * 1e3
    worth = []
    for n in convs:
        d = final[id(n)]
        if d.plan is not None:
            extra = measured.get(n.name) or kmodel_bytes(n, d.plan, opts)
            extra -= kmodel_bytes(n, None, opts)
            if extra > 0:
                worth.append(((d.cpu_cycles - d.cycles) / extra, n.name, extra, d))
    shed, given = {}, 0
    for _, name, extra, d in sorted(worth):
        if given >= need:
            break
        given += extra
        shed[name] = (f"device RAM: its form ({d.plan.describe()}) adds ~{extra} B of kmodel to save "
                      f"~{(d.cpu_cycles - d.cycles) / ms:.1f} ms, the least time per byte of the model's "
                      f"decompositions, and the model is over its device RAM budget")
    return shed, len(shed) < len(worth)


def decompose_kernels(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Rewrite every Conv2D that legalize_kpu would leave on the CPU and that some decomposition
    puts on the KPU; ctx.decisions receives one `Decision` per conv legalize_kpu would leave on the
    CPU: its plan, or None and why. With ctx.own_grids every stacked input stays on 8 bits and every
    output one rounding (a pre-quantized model computed as TFLite does); otherwise a float input
    carries its rounding residual and a stack read in float on the CPU (`_read_in_float`) computes
    its output in two halves, or in four parts with a threshold measured on the first BULK_SAMPLES
    of ctx.samples, when there are samples (`bulk_thresholds`). Each conv's stack made in KPU RAM
    takes at most STACK_KPU_BYTES of kmodel, but those `allot` grants ctx.kpu_form_budget
    (MODEL_KPU_BYTES unless set) more between them, decided on the graph as it comes, before any
    rewrite; ctx.kpu_form_spent receives what they take. With ctx.form_shed (kcc.pipeline's retry of
    a model over its device RAM budget) the forms saving the least time per byte of kmodel stay on the
    CPU until that many bytes are given back (`_shed`)."""
    ctx = ctx or CompileContext()
    opts = ctx.options
    if opts.target == "cpu" or opts.decompose == "off":
        return g
    residual = not ctx.own_grids
    measured = residual and ctx.samples is not None
    bulk = bulk_thresholds(g, ctx.samples[:BULK_SAMPLES], opts) if measured else {}
    users, outputs = g.users(), {id(o) for o in g.outputs}
    convs = [n for n in g.nodes if isinstance(n.op, O.Conv2D)]

    memo: dict = {}  # each form legalized and priced once

    streamed = streamed_prelus(g, opts)  # the PReLUs kcc.passes.prelu_stream keeps in KPU RAM: 8-bit inputs
    ctx.stream_adds = set(streamed.values())

    def decide(n: Node, cap: int) -> Decision:
        at = surroundings(n, users, outputs, opts)
        codes = id(n.inputs[0]) in streamed
        if codes:
            at = Where(False, at.kpu_readers)
        return choose(n, opts, residual and not codes, residual and _read_in_float(n, users, outputs),
                      bulk.get(n.name, 0.0), at, cap, memo, ram(n))

    def ram(n: Node) -> int:  # KPU RAM its form may fill: less what kcc.pipeline's retry found alive beside it
        return KPU_RAM_SIZE - ctx.kpu_ram_reserve.get(n.name, 0)

    budget = MODEL_KPU_BYTES if ctx.kpu_form_budget is None else ctx.kpu_form_budget
    big_cap = P.STACK_KPU_BYTES + budget
    first: dict[int, tuple[Node, Decision]] = {}  # per conv: its input, its decision within STACK_KPU_BYTES
    candidates = []
    for n in convs:
        d = decide(n, P.STACK_KPU_BYTES)
        first[id(n)] = (n.inputs[0], d)
        if d.status is Status.ON_KPU or not d.cpu_cycles or not budget:
            continue
        x = n.inputs[0]
        residual_in = residual and _cpu_float(x) and id(x) not in streamed
        beyond = set(P.plans(n, residual_in, True, 0.0, big_cap, ram(n))) - set(P.plans(n, residual_in, True, 0.0, ram=ram(n)))
        ladder = _ladder(n, d, beyond, decide) if beyond else []  # empty: no stack needs more than STACK_KPU_BYTES
        if ladder:
            candidates.append((n, d, ladder))
    taken, ctx.kpu_form_spent = allot(candidates, opts, budget)
    final = {id(n): decide(n, taken[n.name]) if n.name in taken else first[id(n)][1] for n in convs}
    shed, ctx.form_sheddable = _shed(convs, final, ctx.form_shed, opts, ctx.form_bytes)
    for n in convs:
        x, d = first[id(n)][0], final[id(n)]
        if n.name in shed:
            ctx.decisions.append(Decision(n.name, Status.KEPT, None, d.cpu_cycles, d.cpu_cycles, shed[n.name]))
            continue
        if n.inputs[0] is not x:  # an earlier rewrite changed its input
            d = decide(n, taken.get(n.name, P.STACK_KPU_BYTES))
        if d.status is not Status.ON_KPU:
            ctx.decisions.append(d)
        if d.plan is None:
            continue
        kh, kw = n.inputs[1].shape[2:]
        ms = DEFAULT_MHZ * 1e3
        rewrite(g, n, d.plan, f"{kh}x{kw}{' depthwise' if n.op.groups > 1 else ''} s{n.op.stride[0]} as "
                              f"{d.plan.describe()}: ~{d.cycles / ms:.2f} ms vs ~{d.cpu_cycles / ms:.2f} ms "
                              f"on the CPU (estimates)")
    g.remove_dead()
    return g
