"""part_groups: a float sum of KPU parts, and the per-channel op after it, in output-channel groups
(issue #16: device RAM is what bounds BlazePalm's KPU forms).

A conv whose float output the CPU reads keeps more than 8 bits by computing it in parts, each a KPU
layer over the same views with its own bias and clamp (kcc.passes.kernel_forms' halves: y on two
fine grids in [-t, t] and the tails on two more), which the CPU dequantizes and adds. BlazePalm's
stem does so at 96x96x32, then its PReLU: each dequantized part and each partial sum is a float map
of 1.18 MB, and two of them are alive at every step from the second part to the PReLU's end, the
model's peak of working memory (2.65 MB; after the stem no step holds 1.5 MB). Working memory is
device RAM, which decides how many of its 5x5 convs get KPU forms (kcc.passes.kernel_budget).

Every op of the chain is per output channel, so the chain runs in groups of output channels, one
after the other: per group its parts (the same layers restricted to the group's weight rows and
bias), their sum and the PReLU (its slopes' group), each group's result written into its channel
range of the output in place (a concatenation, kcc.emit.storage). Alive at once: the output, and one
group's temporaries. The same values: each part layer computes the same outputs channel by channel,
so only the calibration of each group's parts, on their own channels' ranges, differs.

Taken where the sum's float map is over GROUP_BYTES; groups of GROUP_BYTES of float map each, or,
when the chain's result is read in channel slices (a decomposed depthwise conv's channel groups,
kcc.passes.kernel_forms), the slices' own groups: each slice is then its group, and what reads it
and nothing of the other groups (that conv's group: its copies, the input's rounding residual, its
stacked layer) runs right after it (`_depth_first`). BlazePalm's stem PReLU is then never a whole
float map (1.18 MB): each group's is quantized by its readers as soon as it is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_range, channel_values, copy_rewriting

if TYPE_CHECKING:
    from kcc.passes.manager import CompileContext

#: a sum of parts over this many bytes of float map runs in groups of about this size
GROUP_BYTES = 160 * 1024


def _parts(s: Node, users: dict, outputs: set[int]) -> list[Node] | None:
    """The parts of float sum s: Conv2D layers over one input with one set of weights, each read by
    the chain alone, the adds of the chain too (s itself may be read by anything); else None."""
    parts: list[Node] = []
    adds: list[Node] = []

    def walk(v: Node) -> bool:
        if isinstance(v.op, O.Binary) and v.op.op == "add" and v.op.act == O.NO_CLAMP and len(v.inputs) == 2:
            adds.append(v)
            return all(walk(i) for i in v.inputs)
        parts.append(v)
        return isinstance(v.op, O.Conv2D) and v.op.groups == 1 and v.inputs[1].is_constant and v.inputs[2].is_constant

    if not walk(s) or len(parts) < 2:
        return None
    x, w = parts[0].inputs[0], parts[0].inputs[1]
    for v in (*parts, *adds[1:]):
        if id(v) in outputs or len(users[v]) != 1:
            return None
    same = all(p.inputs[0] is x and (p.inputs[1] is w or np.array_equal(p.inputs[1].data, w.data)) for p in parts)
    return parts if same and s.shape == parts[0].shape and s.type.rank == 4 else None


def _signed(parts: list[Node]) -> list[Node] | None:
    """The parts, those clamped to y <= 0 first, when each is clamped to one side of 0 and both sides
    have some (kernel_forms' halves): then at most one side is non-zero at a pixel, so
    PReLU(sum) = alpha * (sum of the parts <= 0) + (sum of the parts >= 0), on the rounded parts too
    (0 is on every part's grid): one per-channel product instead of the PReLU's two."""
    low = [p for p in parts if p.op.act[1] <= 0.0]
    high = [p for p in parts if p.op.act[0] >= 0.0 and p.op.act[1] > 0.0]
    return low + high if low and high and len(low) + len(high) == len(parts) else None


def _slice_cuts(r: Node, users: dict) -> list[int] | None:
    """The channel bounds of r's readers that are whole-map channel slices, when they tile r's
    channels (each channel in exactly one slice); else None."""
    spans = sorted(rng for u in users[r] if (rng := channel_range(u)) is not None)
    if not spans or spans[0][0] != 0 or spans[-1][1] != r.shape[1] or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        return None
    return [a for a, _ in spans] + [spans[-1][1]]


def _depth_first(g: Graph, groups: list[Node]) -> None:
    """Move what reads one group's result and nothing made after it but its own readers (constants
    aside) right after that group, in graph order: the group's float map then dies there."""
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    group_of = {id(v): i for i, v in enumerate(groups)}
    owner = dict(group_of)  # node -> the one group it reads (itself for a group)
    moved: list[list[Node]] = [[] for _ in groups]
    for n in g.nodes[pos[id(groups[0])]:]:
        if id(n) in group_of:
            continue
        tags = {owner.get(id(i), -1) for i in n.inputs if not i.is_constant and pos[id(i)] >= pos[id(groups[0])]}
        if len(tags) != 1 or -1 in tags:
            continue
        k = tags.pop()
        if all(i.is_constant or owner.get(id(i)) == k or pos[id(i)] < pos[id(groups[k])] for i in n.inputs):
            owner[id(n)] = k
            moved[k].append(n)
    taken = {id(n) for ms in moved for n in ms}
    order, done = [], set()

    def emit(n: Node) -> None:
        for i in n.inputs:  # a constant placed later in the graph comes along
            if i.is_constant and id(i) not in done:
                emit(i)
        if id(n) not in done:
            done.add(id(n))
            order.append(n)

    for n in g.nodes:
        if id(n) in taken or id(n) in done:
            continue
        emit(n)
        for m in moved[group_of[id(n)]] if id(n) in group_of else ():
            emit(m)
    g.nodes[:] = order


def part_groups(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Run each float sum of parts over GROUP_BYTES (with the PReLU that alone reads it) in groups of
    output channels (module docstring); needs nothing of `ctx`."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    # the chain's last node -> (sum, parts, slopes, group bounds); a slice that is a group -> (last, group)
    plans: dict[int, tuple[Node, list[Node], np.ndarray | None, list[int]]] = {}
    slices: dict[int, tuple[Node, int]] = {}
    inner: set[int] = set()  # adds inside a chain taken (whole chains only, from the last add back)
    for s in reversed(g.nodes):
        if (not (isinstance(s.op, O.Binary) and s.op.op == "add") or s.type.nbytes <= GROUP_BYTES
                or id(s) in inner):
            continue
        parts = _parts(s, users, outputs)
        if parts is None:
            continue
        stack = list(s.inputs)
        while stack:
            v = stack.pop()
            if isinstance(v.op, O.Binary):
                inner.add(id(v))
                stack.extend(v.inputs)
        readers = users[s]
        r = readers[0] if len(readers) == 1 and id(s) not in outputs else None
        slopes = channel_values(r.inputs[0], r.inputs[1]) if r is not None and isinstance(r.op, O.PRelu) else None
        last = r if slopes is not None else s
        _, c, h, w = s.shape
        step = max(1, GROUP_BYTES // (h * w * 4))
        cuts = None if id(last) in outputs else _slice_cuts(last, users)
        plans[id(last)] = (s, parts, slopes, cuts or [*range(0, c, step), c])
        for u in users[last] if cuts else ():
            if (rng := channel_range(u)) is not None:
                slices[id(u)] = (last, cuts.index(rng[0]))
    if not plans:
        return g
    out = Graph()
    mapping: dict[int, Node] = {}
    made: dict[int, list[Node]] = {}  # a chain's last node -> its groups in `out`

    def rewrite(n: Node) -> Node | None:
        if id(n) in slices:
            last, k = slices[id(n)]
            return made[id(last)][k]
        if id(n) not in plans:
            return None
        s, parts, slopes, cuts = plans[id(n)]
        x = mapping[id(parts[0].inputs[0])]
        wd = parts[0].inputs[1].data
        groups = made.setdefault(id(n), [])
        signed = slopes is not None and _signed(parts)
        for o0, o1 in zip(cuts, cuts[1:]):
            tag = f"/o{o0}"
            wg = out.constant(np.ascontiguousarray(wd[o0:o1]), parts[0].inputs[1].name + tag)
            a = None if slopes is None else out.constant(slopes[o0:o1].reshape(1, o1 - o0, 1, 1), n.inputs[1].name + tag)
            total, ordered = None, signed or parts
            for i, p in enumerate(ordered):
                bg = out.constant(np.ascontiguousarray(p.inputs[2].data[o0:o1]), p.inputs[2].name + tag)
                y = out.add(p.op, (x, wg, bg), p.name + tag)
                name = n.name + tag if signed and i == len(ordered) - 1 else s.name + f"/sum{len(groups)}" + tag
                total = y if total is None else out.add(O.Binary("add"), (total, y), name)
                if signed and ordered[i].op.act[1] <= 0.0 <= ordered[i + 1].op.act[0]:  # the parts <= 0 summed
                    total = out.add(O.Binary("mul"), (total, a), n.name + "/negative" + tag)  # alpha * min(y, 0)
            if slopes is not None and not signed:
                total = out.add(O.PRelu(), (total, a), n.name + tag)
            groups.append(total)
        return out.add(O.Concat(1), tuple(groups), n.name)

    out = copy_rewriting(g, out, mapping, rewrite)
    for last in {id(last) for last, _ in slices.values()}:
        _depth_first(out, made[last])
    return out
