"""parts_stack: a conv computed in parts, read by a KPU stack through its parts (issue #16).

A conv whose float output the CPU reads is computed in parts clamped to either side of 0
(kcc.passes.kernel_forms' halves and bulk: y = P1 + P2 + P3 + P4), which the CPU dequantizes and
adds; its PReLU is then alpha * (the parts <= 0) + (the parts >= 0) (kcc.passes.part_groups
`_signed`). Where that result is read by a depthwise `stack_kpu` with its rounding residual
(BlazePalm's stem and first 5x5), the CPU copies out, dequantizes and adds the four parts, multiplies,
quantizes the result and its residual and uploads both: ~60 ms a group of 6 channels at 96x96, ~325
ms in all, against ~1.5 ms of KPU compute (docs/measurements.md §25).

Every step between the parts and the stack is linear: the group's value is G = sum_k c_k * P_k
(c_k = alpha for a part <= 0, 1 for a part >= 0, per channel), a shifted copy of G is the same sum
of shifted copies of the parts (each pads with 0), and the depthwise stack scales each input
channel's weights by c_k exactly. So the stack reads the parts where the KPU made them:

    before: P_k -> (CPU) sum, alpha -> G -> quantize, residual -> upload -> 9 + 9 shifts -> stacked conv
    after:  P_k -> fan_k (one 3x3 KPU layer, P_k's nine shifted copies) -> stacked conv over the 4 x 9
            copies, weights w * c_k                                        (all in KPU RAM)

finer than the codes and residual it replaces (no rounding of G before the stack). Whatever else
reads G (the first block's skip) reads G' = one 1x1 KPU layer [c_1 I, ..., c_4 I] over the parts,
rounded once on G's grid, as the codes were. A part's 4 x 9 copies take 40 maps of KPU RAM a
channel, so the group is cut into sub-groups whose copies take at most half of KPU RAM (the other
half: what stays alive across them, the stack's and G's outputs); BlazePalm's stem, at 96x96 (12
KiB a channel), goes in sub-groups of 2 channels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_values, copy_rewriting
from kcc.options import CompileOptions
from kcc.passes.kernel_forms import fan_weights
from kcc.target.k210 import KPU_RAM_SIZE, kpu_bytes
from kcc.target.quant_rules import widest_weight_range

if TYPE_CHECKING:
    from kcc.passes.manager import CompileContext

F32 = np.float32
#: calibration samples the parts' reach is measured on (one grid for them all, `_one_grid`)
SAMPLES = 8
#: maps of KPU RAM a sub-group's channel takes: 4 parts and their 4 x 9 shifted copies
MAPS_PER_CHANNEL = 40


def _terms(v: Node, users: dict, x: list) -> dict[int, tuple[Node, np.ndarray]] | None:
    """G as {id(part): (part, per-channel coefficient)}: adds of parts, a per-channel product of some
    of them; every part a Conv2D over one input x (x[0]) with constant weights, every node of the
    chain read by the chain alone (checked by the caller for G itself)."""
    c = v.shape[1]
    if isinstance(v.op, O.Binary) and v.op.act == O.NO_CLAMP and len(v.inputs) == 2:
        if v.op.op == "add":
            terms: dict[int, tuple[Node, np.ndarray]] = {}
            for i in v.inputs:
                sub = _terms(i, users, x) if len(users[i]) == 1 else None
                if sub is None:
                    return None
                for k, (p, coef) in sub.items():
                    terms[k] = (p, terms[k][1] + coef) if k in terms else (p, coef)
            return terms
        if v.op.op == "mul":
            for t, s in (v.inputs, v.inputs[::-1]):
                slopes = channel_values(t, s)
                if slopes is not None and not t.is_constant and len(users[t]) == 1:
                    sub = _terms(t, users, x)
                    return None if sub is None else {k: (p, coef * slopes) for k, (p, coef) in sub.items()}
        return None
    if (isinstance(v.op, O.Conv2D) and v.op.groups == 1 and v.inputs[1].is_constant and v.inputs[2].is_constant
            and (not x or v.inputs[0] is x[0])):
        x[:] = [v.inputs[0]]
        return {id(v): (v, np.ones(c, F32))}
    return None


def _shift(s: Node, src: Node) -> tuple[int, int] | None:
    """(cy, cx) when s copies src shifted (a depthwise 3x3, padding 1, one tap of 1 per channel at
    (1 + cy, 1 + cx), zero bias), else None."""
    op = s.op
    if not (isinstance(op, O.Conv2D) and s.inputs[0] is src and op.groups == src.shape[1] == s.shape[1]
            and op.stride == (1, 1) and op.padding == ((1, 1), (1, 1)) and op.act == O.NO_CLAMP
            and s.inputs[1].is_constant and s.inputs[2].is_constant and not np.any(s.inputs[2].data)):
        return None
    w = s.inputs[1].data
    if w.shape[1:] != (1, 3, 3) or np.count_nonzero(w) != w.shape[0]:
        return None
    cy, cx = np.unravel_index(int(np.argmax(w[0, 0])), (3, 3))
    return (int(cy) - 1, int(cx) - 1) if np.all(w[:, 0, cy, cx] == 1.0) else None


def _match(gv: Node, users: dict, outputs: set[int]):
    """(parts, coefficients, shifts, stacked conv, other readers of G) when G is read by a residual
    stack_kpu as kernel_forms builds it, else None."""
    if id(gv) in outputs or gv.type.rank != 4 or gv.shape[0] != 1:
        return None
    x: list = []
    terms = _terms(gv, users, x) if isinstance(gv.op, O.Binary) else None
    if terms is None or len(terms) < 2:
        return None
    readers = users[gv]
    res = [u for u in readers if isinstance(u.op, KO.QuantResidual)]
    if len(res) != 1 or id(res[0]) in outputs:
        return None
    shift_of = {id(u): sh for u in readers if (sh := _shift(u, gv)) is not None}
    shifts_g = [u for u in readers if id(u) in shift_of]
    stk = users[shifts_g[0]][0] if shifts_g and len(users[shifts_g[0]]) == 1 else None
    if stk is None or not isinstance(stk.op, O.Concat) or stk.op.axis != 1 or len(users[stk]) != 1:
        return None
    j = len(shifts_g)
    ins = stk.inputs
    if len(ins) != 2 * j or {id(s) for s in ins[j:]} != set(shift_of):
        return None
    shifts = [shift_of[id(s)] for s in ins[j:]]
    if [_shift(s, res[0]) for s in ins[:j]] != shifts:
        return None
    if any(len(users[s]) != 1 for s in ins) or len(users[res[0]]) != j:
        return None
    sc = users[stk][0]
    g = gv.shape[1]
    if not (isinstance(sc.op, O.Conv2D) and sc.op.groups == 1 and sc.inputs[1].is_constant
            and sc.inputs[2].is_constant and sc.inputs[1].shape[:2] == (sc.shape[1], 2 * j * g) and sc.shape[1] == g):
        return None
    others = [u for u in readers if u is not res[0] and id(u) not in shift_of]
    parts = [p for p, _ in terms.values()]
    return parts, [coef for _, coef in terms.values()], shifts, sc, others


def _peaks(g: Graph, parts: list[Node], samples: list) -> dict[int, np.ndarray]:
    """max |P| of each part's channels over `samples`: the graph evaluated up to its last part only."""
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    prefix = Graph(nodes=g.nodes[:max(pos[id(p)] for p in parts) + 1], outputs=list(parts))
    peak = {id(p): np.zeros(p.shape[1]) for p in parts}
    for sample in samples:
        for p, v in zip(parts, run(prefix, sample)):
            peak[id(p)] = np.maximum(peak[id(p)], np.abs(v).max(axis=(0, 2, 3)))
    return peak


def _one_grid(p: Node, peak: float, top: float, limit: float) -> tuple[float, O.Conv2D]:
    """(f, p's op with its clamp times f), f = sign * gain turning part p into f * p in [0, top]: a
    part <= 0 turned over, each stretched to the largest part's reach. Its codes then share one grid
    with zero point 0 (the stack's input, whose pad value is real 0) at the resolution of its own."""
    lo, hi = p.op.act
    sign = -1.0 if hi <= 0.0 else 1.0
    gain = top / peak if peak > 0.0 else 1.0
    # within --weights-quantize-threshold, or legalize leaves the part to the CPU (a tiny tail)
    gain = max(1.0, min(gain, limit / max(widest_weight_range(p.inputs[1].data), 1e-12)))
    f = sign * gain
    act = tuple(v + 0.0 for v in sorted((lo * f, hi * f)))  # (+ 0.0: no -0 bound)
    return f, O.Conv2D(p.op.stride, p.op.padding, p.op.dilation, p.op.groups, act)


def sub_group(g: int, h: int, w: int) -> int:
    """Channels of a sub-group: the most whose MAPS_PER_CHANNEL maps take at most half of KPU RAM."""
    per = kpu_bytes((1, MAPS_PER_CHANNEL, h, w))
    return max(1, min(g, (KPU_RAM_SIZE // 2) // per))


def parts_stack(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Feed each residual stack reading a sum of parts from the parts themselves (module docstring),
    each sub-group's parts stretched to one reach on its own channels (docs/measurements.md §25). The
    reaches are measured on up to SAMPLES of ctx.samples, whose phase_classes gets each sub-group's
    one grid; without ctx, the parts keep their scale."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    found = {id(n): m for n in g.nodes if (m := _match(n, users, outputs)) is not None}
    if not found:
        return g
    every = [p for m in found.values() for p in m[0]]
    samples = (ctx.samples or [])[:SAMPLES] if ctx is not None else []
    peaks = _peaks(g, every, samples) if samples else {}
    classes = ctx.phase_classes if ctx is not None else []
    limit = (ctx.options if ctx is not None else CompileOptions()).weights_quantize_threshold
    out = Graph()
    mapping: dict[int, Node] = {}
    stacked: dict[int, list[Node]] = {}  # old stacked conv -> its sub-groups' convs
    recombined: dict[int, list[Node]] = {}  # old G -> its sub-groups' G'

    def const(data: np.ndarray, name: str) -> Node:
        return out.constant(np.ascontiguousarray(data, dtype=F32), name)

    def build(gv: Node) -> Node:
        parts, coefs, shifts, sc, others = found[id(gv)]
        _, c, h, w = gv.shape

        x = mapping[id(parts[0].inputs[0])]
        j = len(shifts)
        ws = sc.inputs[1].data[:, j * c:]  # the non-residual half: input j * c + i is view j of channel i
        step = sub_group(c, h, w)
        convs, gs = [], []
        for s0 in range(0, c, step):
            s1 = min(c, s0 + step)
            n = s1 - s0
            tag = f"/p{s0}"
            # each sub-group's parts stretched to its widest one's reach on its own channels
            reach = [float(peaks[id(p)][s0:s1].max()) if id(p) in peaks else 0.0 for p in parts]
            scaled = [_one_grid(p, r, max(reach), limit) for p, r in zip(parts, reach)]
            subs = [out.add(op, (x, const(p.inputs[1].data[s0:s1] * np.float32(f), p.inputs[1].name + tag),
                                 const(p.inputs[2].data[s0:s1] * np.float32(f), p.inputs[2].name + tag)), p.name + tag)
                    for p, (f, op) in zip(parts, scaled)]
            grid = [v.name for v in subs]
            if others:  # G' on G's grid for G's other readers (one rounding, as G's codes were)
                both = out.add(O.Concat(1), tuple(subs), f"{gv.name}/parts{tag}")  # one KPU RAM buffer
                grid.append(both.name)
                wr = np.zeros((n, len(parts) * n, 1, 1), F32)
                for k, (coef, (f, _)) in enumerate(zip(coefs, scaled)):
                    wr[np.arange(n), k * n + np.arange(n), 0, 0] = coef[s0:s1] / np.float32(f)
                gs.append(out.add(O.Conv2D(), (both, const(wr, f"{gv.name}/w_recombine{tag}"),
                                               const(np.zeros(n), f"{gv.name}/zero{tag}")), f"{gv.name}{tag}"))
            wf, zf = const(fan_weights(n, shifts), f"{sc.name}/w_fan{tag}"), const(np.zeros(j * n), f"{sc.name}/zero_fan{tag}")
            fans = [out.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), (1, 1), 1), (v, wf, zf), f"{sc.name}/fan{k}{tag}")
                    for k, v in enumerate(subs)]
            wk = np.zeros((n, len(parts) * j * n, *ws.shape[2:]), F32)
            for k, (coef, (f, _)) in enumerate(zip(coefs, scaled)):  # G = sum coef / f * (f P)
                for v in range(j):
                    cols = ws[s0:s1, v * c + s0:v * c + s1]  # [n, n, kh, kw]: block-diagonal
                    wk[:, (k * j + v) * n:(k * j + v + 1) * n] = cols * (coef[s0:s1] / np.float32(f))[None, :, None, None]
            stack = out.add(O.Concat(1), tuple(fans), f"{sc.name}/stack{tag}")
            classes.append((*grid, *(v.name for v in fans), stack.name))  # one grid (kcc.quant.policy.share_phase_grids)
            convs.append(out.add(sc.op, (stack, const(wk, f"{sc.name}/w_parts{tag}"),
                                         const(sc.inputs[2].data[s0:s1], f"{sc.name}/bias{tag}")), f"{sc.name}{tag}"))
        stacked[id(sc)] = convs
        recombined[id(gv)] = gs
        if not gs:
            return out.add(gv.op, tuple(mapping[id(i)] for i in gv.inputs), gv.name, gv.note)
        return gs[0] if len(gs) == 1 else out.add(O.Concat(1), tuple(gs), gv.name)

    def rewrite(n: Node) -> Node | None:
        if id(n) in found:
            return build(n)
        if id(n) in stacked:
            convs = stacked[id(n)]
            return convs[0] if len(convs) == 1 else out.add(O.Concat(1), tuple(convs), n.name)
        if isinstance(n.op, O.Concat) and n.op.axis == 1 and any(id(i) in stacked or id(i) in recombined for i in n.inputs):
            flat = [v for i in n.inputs for v in (stacked.get(id(i)) or recombined.get(id(i)) or [mapping[id(i)]])]
            return out.add(n.op, tuple(flat), n.name, n.note)
        return None

    return copy_rewriting(g, out, mapping, rewrite)
