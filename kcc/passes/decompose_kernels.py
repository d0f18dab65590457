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
its convs MODEL_KPU_BYTES more between them for such stacks (`allot`: each conv's ladder of decisions within rising caps, `ladder`, climbed step by step,
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

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.options import CompileOptions
from kcc.passes import kernel_plans as P
from kcc.passes.blaze_blocks import streamed_prelus
from kcc.passes.kernel_budget import (
    CODES_REASON,
    MODEL_KPU_BYTES,
    CodesCosts,
    Decision,
    Status,
    allot,
    ladder,
    within_room,
)
from kcc.passes.kernel_cost import Where, alone, kmodel_bytes, on_kpu, surroundings
from kcc.passes.kernel_forms import KPU_MADE, Form, emit, plan_terms
from kcc.passes.manager import CompileContext
from kcc.target.k210 import DEFAULT_MHZ, KPU_RAM_SIZE
from kcc.target.quant_rules import zero_point_growth


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


#: the most one zero point may widen the mean squared step of a decomposed depthwise's channel groups
#: (their ranges over BULK_SAMPLES samples) for the groups to share one fan layer as its batches
#: (kcc.passes.kernel_forms `_batched_fan`, kcc.quant.policy.share_batch_zero_points): 4, one bit of
#: their resolution in mean square. Measured (kcc.target.quant_rules.zero_point_growth): BlazePalm's 13
#: fan_kpu 5x5s 1.46 to 2.02, at no cost to its outputs (docs/measurements.md §29); two groups that
#: need opposite zero points ([0, h] and [-l, 0]) reach 4.
BATCH_STEP_GROWTH = 4.0


def batch_growths(g: Graph, groups: dict[int, int], samples: list) -> dict[int, float]:
    """Per conv id of `groups` (conv id -> channels a group): how much one zero point widens its input's
    groups' mean squared step (kcc.target.quant_rules.zero_point_growth), their ranges from one float
    pass over `samples`."""
    convs = {id(n): n for n in g.nodes if id(n) in groups}
    xs = {id(n.inputs[0]) for n in convs.values()}
    lo: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}

    def see(n: Node, v: np.ndarray) -> None:
        if id(n) in xs and v.ndim == 4:
            a, b = v.min(axis=(0, 2, 3)), v.max(axis=(0, 2, 3))
            lo[id(n)] = np.minimum(lo.get(id(n), a), a)
            hi[id(n)] = np.maximum(hi.get(id(n), b), b)

    for sample in samples:
        run(g, sample, see)
    out = {}
    for k, n in convs.items():
        x, size = id(n.inputs[0]), groups[k]
        if x in lo and lo[x].size % size == 0:
            out[k] = zero_point_growth(lo[x].reshape(-1, size).min(1), hi[x].reshape(-1, size).max(1))
    return out


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


def rewrite(g: Graph, n: Node, plan: Form, note: str = "", batch: bool = False) -> Node | None:
    """Replace conv `n` of `g` by its decomposition under `plan`; the new output node takes n's name.
    `batch`: n's input is a float of the CPU, whose channel groups a fan layer may take as batches."""
    new = emit(lambda op, ins, name: g.insert_before(n, op, ins, name), n, n.inputs[0], plan, batch)
    if new is None:
        return None
    new.note = note
    g.substitute(n, new, "/decomposed")
    return new


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
    rewrite; ctx.kpu_form_spent receives what they take, ctx.form_floor what the convs would take on
    the CPU. With ctx.form_room (kcc.pipeline's retry of a model over its device RAM budget) the convs
    share that many bytes instead, each starting on the CPU (kcc.passes.kernel_budget.within_room)."""
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

    def decide(n: Node, cap: int, codes: bool = False) -> Decision:
        """n's decision within `cap`; with `codes`, reading its float input as 8-bit codes (no residual)."""
        at = surroundings(n, users, outputs, opts)
        if id(n.inputs[0]) in streamed:
            at = Where(False, at.kpu_readers)
        codes = codes and residual_in(n)
        d = choose(n, opts, residual_in(n) and not codes and residual, residual and _read_in_float(n, users, outputs),
                   bulk.get(n.name, 0.0), at, cap, memo, ram(n))
        if codes and d.plan is not None:
            d = Decision(d.node, d.status, d.plan, d.cycles, d.cpu_cycles, CODES_REASON, True)
        return d

    def residual_in(n: Node) -> bool:  # n's input is a float of the CPU, read with its rounding residual
        return residual and id(n.inputs[0]) not in streamed and _cpu_float(n.inputs[0])

    def ram(n: Node) -> int:  # KPU RAM its form may fill: less what kcc.pipeline's retry found alive beside it
        return KPU_RAM_SIZE - ctx.kpu_ram_reserve.get(n.name, 0)

    def estimate(n: Node, plan: Form | None) -> int:  # kernel_cost.kmodel_bytes, once
        if (id(n), plan) not in estimates:
            estimates[id(n), plan] = kmodel_bytes(n, plan, opts)
        return estimates[id(n), plan]

    def size(n: Node, plan: Form | None, codes: bool = False) -> int:
        """Bytes of a choice as the kmodel counts them: as measured in a try before, else estimated."""
        measured = ctx.form_measured.get((n.name, plan, codes))
        return measured if measured is not None else int(estimate(n, plan) / ctx.form_scale)

    estimates: dict = {}
    budget = MODEL_KPU_BYTES if ctx.kpu_form_budget is None else ctx.kpu_form_budget
    big_cap = P.STACK_KPU_BYTES + budget
    first: dict[int, tuple[Node, Decision]] = {}  # per conv: its input, its decision within STACK_KPU_BYTES
    candidates = []
    for n in convs:
        d = decide(n, P.STACK_KPU_BYTES)
        first[id(n)] = (n.inputs[0], d)
        if d.status is Status.ON_KPU or not d.cpu_cycles or not budget or ctx.form_room is not None:
            continue
        beyond = set(P.plans(n, residual_in(n), True, 0.0, big_cap, ram(n))) - set(P.plans(n, residual_in(n), True, 0.0, ram=ram(n)))
        steps = ladder(n, d, beyond, decide) if beyond else []  # empty: no stack needs more than STACK_KPU_BYTES
        if steps:
            candidates.append((n, d, steps))
    ctx.form_floor = sum(estimate(n, None) for n in convs if first[id(n)][1].status is not Status.ON_KPU)
    if ctx.form_room is None:
        taken, ctx.kpu_form_spent = allot(candidates, opts, budget)
        final = {id(n): (decide(n, taken[n.name]) if n.name in taken else first[id(n)][1],
                         taken.get(n.name, P.STACK_KPU_BYTES)) for n in convs}
    else:  # kcc.pipeline's retry: every conv's form within the room the device RAM budget leaves them
        final = {id(n): (first[id(n)][1], P.STACK_KPU_BYTES) for n in convs}
        eligible = [n for n in convs if residual_in(n) and first[id(n)][1].status is not Status.ON_KPU]
        if ctx.form_costs is None and opts.decompose != "fast":  # the same graph every retry: measured once
            ctx.form_costs = CodesCosts(g, eligible, (ctx.samples or [])[:BULK_SAMPLES])
        costs = None if opts.decompose == "fast" else ctx.form_costs
        choices, ctx.room_rate = within_room(convs, first, ctx.form_room, decide, size, ram, residual_in, costs)
        final.update(choices)
        ctx.kpu_form_spent = sum(size(n, d.plan) - size(n, None) for n in convs
                                 if (d := final[id(n)][0]).plan is not None and d.status is not Status.ON_KPU)
    ctx.form_estimates = {n.name: estimate(n, final[id(n)][0].plan) for n in convs
                          if first[id(n)][1].status is not Status.ON_KPU}
    names = {id(n): n.name for n in convs}
    fans = {id(n): final[id(n)][0].plan.group for n in convs if (p := final[id(n)][0].plan) is not None
            and p.combine == "fan_kpu" and p.group and id(n.inputs[0]) not in streamed and _cpu_float(n.inputs[0])}
    todo = {k: size for k, size in fans.items() if (names[k], size) not in ctx.batch_growth}
    if todo:  # the same graph every retry: measured once
        measured = batch_growths(g, todo, (ctx.samples or [])[:BULK_SAMPLES])
        ctx.batch_growth.update({(names[k], todo[k]): v for k, v in measured.items()})
    growth = {k: ctx.batch_growth.get((names[k], size), np.inf) for k, size in fans.items()}
    for n in convs:
        x, (d, cap) = first[id(n)][0], final[id(n)]
        if n.inputs[0] is not x and (d.plan is not None or ctx.form_room is None):  # an earlier rewrite changed its input
            d = decide(n, cap, d.codes)
        if d.status is not Status.ON_KPU:
            ctx.decisions.append(d)
        if d.plan is None:
            continue
        kh, kw = n.inputs[1].shape[2:]
        ms = DEFAULT_MHZ * 1e3
        how = " reading its float input as 8-bit codes" if d.codes else ""
        rewrite(g, n, d.plan, f"{kh}x{kw}{' depthwise' if n.op.groups > 1 else ''} s{n.op.stride[0]} as "
                              f"{d.plan.describe()}{how}: ~{d.cycles / ms:.2f} ms vs ~{d.cpu_cycles / ms:.2f} ms "
                              f"on the CPU (estimates)", growth.get(id(n), np.inf) <= BATCH_STEP_GROWTH)
    g.remove_dead()
    return g
