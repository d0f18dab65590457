"""split_channels: a layer too big for one KPU layer, as several KPU layers over channel ranges (#16 item 4).

One KPU layer holds its whole input and output map in the 2 MiB of KPU RAM and has 10-bit channel
fields (at most 1024 input and output channels, kmodel_v4.md §9.3), and loads its weights in at most 64
loads (legalize_kpu). A conv that breaks one of these limits is cut along channels, exactly:

    depthwise  y[c0:c1] = dw(x[c0:c1], w[c0:c1], b[c0:c1])        each group reads its own channels
    conv       y[o0:o1] = conv(x, w[o0:o1], b[o0:o1])              each group reads the whole input
    matmul     y[:, o0:o1] = x @ w[:, o0:o1] + b[o0:o1]            (a fully-connected layer, the same)

and the groups' outputs are concatenated along channels. Every group is an ordinary conv that
legalize_kpu then places like any other (pads, stride-2 picks, dilation by space-to-batch); no
arithmetic changes, so each group is bit-exact as a KPU layer and the float values are unchanged.
The number of groups is the smallest that puts one group (the largest) on the KPU, tried by
legalizing the group alone (eliminate_dilated_conv, then legalize_kpu, as the pipeline will).

The input channels of a depthwise group are a channel slice of its input. When that input is a plain
conv read by nothing else, the slice is pushed into it: the producer is cut into the same channel
groups (its weights' rows), so each depthwise group reads a producer group's output straight from
KPU RAM instead of a CPU slice of the whole map (an inverted residual block's expansion conv).
Depthwise layers are cut first, so such a producer takes their groups instead of its own, and each
producer group is made just before its depthwise group. The groups are sized for what stays in KPU
RAM beside each one (`chain`): the producer's input, read by every producer group, and the
depthwise output, one buffer its groups write in place (MobileNetV2 at 288x288 and 320x320 failed
the KPU RAM allocation with groups that fit one at a time).

A channel slice that falls inside one part of a concatenation (a wide conv cut into groups feeding
a wide depthwise cut into the same groups) reads that part.

The concatenation is an ordinary `Concat`, computed in place in KPU RAM where kcc.quant can.

A depthwise layer that would stay on the CPU for its weights' range alone (--weights-quantize-threshold,
legalize_kpu) is cut the same way, exactly, by the range of each channel (`plan_range_split`): the
channels within the threshold make one KPU layer and only the others run in float on the CPU. So that
the KPU channels are one range, the producer (a plain conv read by the layer alone) and the readers
(plain convs) take the layer's channels in the order [within, over]: the producer's weight rows and the
readers' weight columns are permuted, which changes no reader's value. Where they cannot, each run of
KPU channels is a layer of its own, if that still pays. The wide channels then run on the KPU too, as
a coarse layer and a correction layer (kcc.passes.fine_weights), planned on the calibration samples'
values of the layer's input (one float run, `fine_weights.wide_inputs`); where that cannot be (no samples, a 5x5),
they run in float on the CPU, and kcc.quant uploads that part's output into its channel range of the
KPU RAM buffer the KPU part writes (kcc.quant.quantize).

A conv over more than 1024 *input* channels is not split here: the KPU cannot add partial sums of
two layers exactly (each layer rounds to 8 bits). A fully-connected layer over more inputs runs as a
uint8 matmul on the CPU instead (kcc.quant.quantize).
"""

from __future__ import annotations

import math

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_range, depthwise_conv
from kcc.options import CompileOptions
from kcc.passes import fine_weights, gap_pick, row_pick
from kcc.passes.dilated_conv import eliminate_dilated_conv
from kcc.passes.kpu_live import chain, group_input_bytes
from kcc.passes.kpu_pools import fused_pool
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext
from kcc.passes.rotate180 import rotate180
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    KPU_RAM_SIZE,
    MAX_CHANNELS,
    cpu_cycles,
    kpu_bytes,
    kpu_layer_cost,
    kpu_map_cycles,
    upload_cycles,
)
from kcc.target.quant_rules import channels_over_threshold

#: most groups a layer is cut into: each costs a KPU layer (~25 us) and a copy of its output
MAX_GROUPS = 16
#: group sizes are multiples of this: a KPU RAM line holds up to 4 channels of a narrow map
#: (kpu_semantics.md §2), so a group of a multiple of 4 channels wastes no line
CHANNEL_ALIGN = 4
#: what legalize_kpu says about a layer too big for one KPU layer: only these are cut
SIZE_REASONS = ("KPU RAM:", "channels >", "weight loads >", "more than")
#: what legalize_kpu says about a map over a KPU layer's limits (rows, columns, pixels)
MAP_REASONS = ("KPU input", "KPU output map")
#: what legalize_kpu says about weights too wide for the KPU: their depthwise channels are cut apart
RANGE_REASON = "weights range"


def _ranges(total: int, groups: int) -> list[tuple[int, int]]:
    """`groups` consecutive channel ranges covering `total`, equal but for the last, sizes aligned."""
    size = math.ceil(total / groups)
    size = min(total, math.ceil(size / CHANNEL_ALIGN) * CHANNEL_ALIGN)
    return [(lo, min(total, lo + size)) for lo in range(0, total, size)]


def _group_graph(n: Node, lo: int, hi: int, chans: list[int] | None = None, pool: O.Pool2D | None = None) -> Graph:
    """Channel group [lo, hi) of conv / matmul n (or its channels `chans`, in that order) as a graph of
    its own: input -> group -> output, or -> `pool` -> output (the pool legalize_kpu fuses into n)."""
    g = Graph()
    x = n.inputs[0]
    w, b = n.inputs[1].data, n.inputs[2].data
    if chans is not None:  # the channels as one group [0, len)
        w, b = w[chans], b[chans]
        lo, hi = 0, len(chans)
    else:
        w, b = w[..., lo:hi] if isinstance(n.op, O.MatMul) else w[lo:hi], b[lo:hi]
        lo, hi = 0, hi - lo
    if isinstance(n.op, O.MatMul):
        xi = g.input(0, x.shape)
        y = g.add(n.op, (xi, g.constant(w), g.constant(b)), n.name)
        # a reader, so that legalize_kpu does not take the group for a small output head (which it
        # leaves in float); only the group's own placement counts (_placed)
        ones = g.constant(np.ones((hi - lo, 1), np.float32))
        g.outputs = [g.add(O.MatMul(), (y, ones, g.constant(np.zeros(1, np.float32))), n.name + "/reader")]
        return g
    else:
        shape = (x.shape[0], hi - lo, *x.shape[2:]) if depthwise_conv(n) else x.shape
        xi = g.input(0, shape)
        op = O.Conv2D(n.op.stride, n.op.padding, n.op.dilation, hi - lo, n.op.act) if depthwise_conv(n) else n.op
        y = g.add(op, (xi, g.constant(w), g.constant(b)), n.name)
    g.outputs = [y if pool is None else g.add(pool, (y,), n.name + "/pool")]
    return g


def _placed(g: Graph, opts: CompileOptions, name: str) -> tuple[bool, str]:
    """Whether legalize_kpu puts layer `name` of graph g on the KPU, and else why not."""
    ctx = CompileContext(opts)
    legalize_kpu(eliminate_dilated_conv(g, ctx), ctx)
    own = [p for p in ctx.placements if p.node == name or p.node == name + "/conv"]  # dilated: its inner conv
    off = [p.reason for p in own if not p.on_kpu]
    return bool(own) and not off, off[0] if off else ""


def plan_groups(n: Node, opts: CompileOptions, unturned: Node | None = None,
                beside: int = 0, skip: bool = False, pool: O.Pool2D | None = None) -> list[tuple[int, int]] | None:
    """The channel ranges conv / matmul n is cut into, or None when it is not cut (module docstring).
    n is the layer as legalize_kpu will see it: in rotated coordinates if the model will be turned;
    `unturned` the layer itself (`pick_groups` asks it: a turn is decided again after the cut).
    `beside`: KPU RAM alive beside each group's input (`chain`); `skip`: a residual block's
    middle, cut also when it fits whole but not beside that (`chain`); `pool`: the pool fused into
    the whole layer (`fused_pool`; not into groups, whose concatenation it reads)."""
    if not (n.inputs[1].is_constant and n.inputs[2].is_constant):
        return None
    if isinstance(n.op, O.MatMul):
        k_in, total = n.inputs[1].shape
        if k_in > MAX_CHANNELS:
            return None
    elif isinstance(n.op, O.Conv2D):
        c, total = n.inputs[0].shape[1], n.inputs[1].shape[0]
        if n.op.groups != 1 and not depthwise_conv(n) or (n.op.groups == 1 and c > MAX_CHANNELS):
            return None
    else:
        return None
    fits, reason = _placed(_group_graph(n, 0, total, pool=pool), opts, n.name)
    if fits or reason.startswith(MAP_REASONS):  # served whole, or a pick pair in row bands may serve groups
        groups = pick_groups(unturned or n, beside) if isinstance(n.op, O.Conv2D) else None
        crowded = skip and beside + group_input_bytes(total, n, unturned or n) > KPU_RAM_SIZE
        if groups or (fits and not crowded):
            return groups
    if not (fits or any(r in reason for r in SIZE_REASONS)):
        return None
    for groups in range(max(2, math.ceil(total / MAX_CHANNELS)), MAX_GROUPS + 1):
        ranges = _ranges(total, groups)
        if len(ranges) < 2:
            return None
        lo, hi = ranges[0]  # the largest group
        if beside and beside + group_input_bytes(hi - lo, n, unturned or n) > KPU_RAM_SIZE:
            continue
        if _placed(_group_graph(n, lo, hi), opts, n.name)[0]:
            return ranges
    return None


def pick_groups(n: Node, beside: int = 0) -> list[tuple[int, int]] | None:
    """The output-channel ranges of stride-2 conv n centred on odd rows (TFLite SAME on an even size)
    that kcc.passes.row_pick serves one range at a time but not whole: its full-resolution output Y
    does not fit KPU RAM beside the picked one (MobileNetV2's 224x224 stem: 1.75 MiB of Y, 0.44 of
    picked output). legalize_kpu would pre-pad its input on the CPU and crop or slice its output
    instead (the stem: ~160 ms of pad, copy-out, slice and upload). Each group's Y fits beside the
    conv's input and the whole picked output (its groups written in place, kcc.quant); taken when the
    groups' pick layers and extra layers cost less than that CPU work (kcc.target.k210's costs).
    `beside` (`chain`): a depthwise layer's producer cut into its groups keeps its own input and
    the picked output beside each group's input and full-resolution output instead."""
    op = n.op
    x = n.inputs[0]
    k = n.inputs[1].shape[2:]
    total = n.shape[1]
    depthwise = depthwise_conv(n)
    if k[0] != k[1]:
        return None
    if row_pick.pick_pool(x.shape, n.shape, op.padding, k[0], op.stride, depthwise) is None:
        return _gap_groups(n, beside)
    if row_pick.fits(x.shape, total) or (depthwise and isinstance(x.op, O.Input)):  # (the input: CPU slices)
        return None  # served whole, or not worth it (legalize_kpu's row_pick.serves)
    nb, _, h, w = x.shape
    picked = kpu_bytes((nb, total, h // 2, w // 2))
    for groups in range(2, MAX_GROUPS + 1):
        ranges = _ranges(total, groups)
        lo, hi = ranges[0]  # the largest group
        xg = (nb, hi - lo, h, w) if depthwise else x.shape
        held = beside + kpu_bytes(xg) if depthwise and beside else kpu_bytes(x.shape) + picked
        if not (row_pick.fits(xg, hi - lo) and held + kpu_bytes((nb, hi - lo, h, w)) <= KPU_RAM_SIZE):
            continue
        cost = (sum(row_pick.pick_cycles((nb, b - a if depthwise else x.shape[1], h, w), b - a) for a, b in ranges)
                + (len(ranges) - 1) * (kpu_layer_cost(0, 0) + 2 * CPU_NODE_CYCLES))
        return ranges if cost < row_pick.cpu_cycles_saved(x.shape, total, depthwise) else None
    return None


def _gap_groups(n: Node, beside: int) -> list[tuple[int, int]] | None:
    """The channel ranges of stride-2 depthwise n on an odd size that kcc.passes.gap_pick serves one
    range at a time but not whole (its full-size map, one row and column larger, does not fit KPU RAM
    beside its input and the picked output: MobileNet v1 1.0 at 241x241, 64 channels of 121x121),
    each range's map then beside the whole picked output (written in place) and, with `beside`
    (`chain`), its producer's input; taken when the groups' layers cost less than the
    full-size output's copy-out, slice and upload (gap_pick's fallback)."""
    op, x = n.op, n.inputs[0]
    plan = gap_pick.plan(x.shape, n.shape, op.padding, n.inputs[1].shape[2], op.stride, depthwise_conv(n))
    if plan is None or isinstance(x.op, O.Input) or gap_pick.pays(x.shape, n.shape, plan):
        return None
    nb, total, h, w = x.shape
    gap = lambda c: kpu_bytes((nb, c, h + plan.gap[0], w + plan.gap[1]))  # noqa: E731
    for groups in range(2, MAX_GROUPS + 1):
        ranges = _ranges(total, groups)
        lo, hi = ranges[0]  # the largest group
        own = kpu_bytes((nb, hi - lo, h, w)) + gap(hi - lo)
        if (beside or kpu_bytes(n.shape)) + own > KPU_RAM_SIZE:
            continue
        cost = (sum(gap_pick.layers_cycles((nb, b - a, h, w), plan) for a, b in ranges)
                + (len(ranges) - 1) * 2 * CPU_NODE_CYCLES)
        return ranges if cost < gap_pick.fallback_cycles(x.shape, n.shape) else None
    return None


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """The maximal ranges of equal consecutive flags."""
    ends = [k for k in range(1, len(flags)) if flags[k] != flags[k - 1]] + [len(flags)]
    return list(zip([0, *ends[:-1]], ends))


def _cpu_conv_cycles(n: Node, channels: int) -> float:
    """A float depthwise conv of `channels` of n's channels on the CPU (kcc.latency: conv2d_mac),
    with the dequantize of its uint8 input and the quantize and upload of its output for KPU readers."""
    (_, _, h, w), (_, _, oh, ow) = n.inputs[0].shape, n.shape
    k = n.inputs[1].shape[2] * n.inputs[1].shape[3]
    return (2 * CPU_NODE_CYCLES + upload_cycles((1, channels, oh, ow)) + channels * (
        cpu_cycles("conv2d_mac") * oh * ow * k + cpu_cycles("dequantize") * h * w + cpu_cycles("quantize") * oh * ow))


def _kpu_part_cycles(n: Node, channels: int, layers: int) -> float:
    """`channels` of depthwise n as `layers` KPU layers (k210.kpu_layer_cost), with the upload of their
    input: a bound, as the input may already be in KPU RAM (a KPU producer read by n alone)."""
    _, _, h, w = n.inputs[0].shape
    k = n.inputs[1].shape[2] * n.inputs[1].shape[3]
    compute = kpu_layer_cost(kpu_map_cycles(channels, h, w, channels, True), channels * k)
    return (compute + (layers - 1) * kpu_layer_cost(0, 0) + (layers - 1) * CPU_NODE_CYCLES
            + upload_cycles((1, channels, h, w)))


def _range_split_pays(n: Node, over: list[bool]) -> bool:
    """Whether depthwise n cut into the runs of `over` (the wide channels on the CPU, each run of the
    others a KPU layer) costs less than n in float on the CPU (kcc.target.k210's costs)."""
    runs = [r for r in _runs(over) if not over[r[0]]]
    within = sum(hi - lo for lo, hi in runs)
    split = _kpu_part_cycles(n, within, len(runs)) + _cpu_conv_cycles(n, len(over) - within)
    return split < _cpu_conv_cycles(n, len(over))


def plan_range_split(n: Node, opts: CompileOptions) -> list[bool] | None:
    """Per channel of depthwise n, whether it stays on the CPU, when n would stay there whole for its
    weights' range alone (--weights-quantize-threshold; kcc.passes.legalize_kpu): the channels within
    the threshold then make a KPU layer of their own and only the others run in float on the CPU.
    Depthwise channels are independent, so the split is exact. None when no such split pays off
    (kcc.target.k210's costs: the float conv of every channel against the KPU layer, its input's
    upload and the float conv of the wide channels)."""
    if not (depthwise_conv(n) and n.inputs[1].is_constant and n.inputs[2].is_constant):
        return None
    over = channels_over_threshold(n.inputs[1].data, opts.weights_quantize_threshold)
    if not any(over) or all(over):
        return None
    total = len(over)
    if not _range_only(n, opts):
        return None
    within = [c for c in range(total) if not over[c]]
    if not _placed(_group_graph(n, 0, 0, within), opts, n.name)[0]:
        return None
    kpu_first = [False] * len(within) + [True] * (total - len(within))  # one KPU layer (_permute_neighbours)
    return over if _range_split_pays(n, kpu_first) else None


def _range_only(n: Node, opts: CompileOptions) -> bool:
    """legalize_kpu leaves conv n (whole) on the CPU for its weights' range alone."""
    fits, reason = _placed(_group_graph(n, 0, n.shape[1]), opts, n.name)
    return not fits and reason.startswith(RANGE_REASON)


def _permutable(g: Graph, n: Node) -> bool:
    """Whether depthwise n's producer and readers can follow a permutation of its channels
    (`_permute_neighbours`): the producer a plain conv read by n alone, every reader a plain conv
    reading n as its input, neither n nor its producer a graph output."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    p, readers = n.inputs[0], users[n]

    def plain(c: Node) -> bool:
        return (isinstance(c.op, O.Conv2D) and c.op.groups == 1 and c.inputs[1].is_constant
                and c.inputs[2].is_constant)

    return (plain(p) and users[p] == [n] and id(p) not in outputs and id(n) not in outputs and bool(readers)
            and all(plain(r) and r.inputs[0] is n and n not in r.inputs[1:] for r in readers))


def _permute_neighbours(g: Graph, n: Node, order: list[int]) -> None:
    """Depthwise n's channels taken in `order` by its neighbours (`_permutable`): the producer's weight
    rows and bias, every reader's weight input columns; n itself is then cut with its weights in
    `order` (`_split`). The readers' values are unchanged."""
    p = n.inputs[0]
    w, b = p.inputs[1].data, p.inputs[2].data
    wc = g.insert_before(p, O.Constant(np.ascontiguousarray(w[order])), (), p.name + "/w_permuted")
    bc = g.insert_before(p, O.Constant(np.ascontiguousarray(b[order])), (), p.name + "/b_permuted")
    p.inputs = (p.inputs[0], wc, bc)
    for r in g.users()[n]:
        wr = r.inputs[1].data
        wc = g.insert_before(r, O.Constant(np.ascontiguousarray(wr[:, order])), (), r.name + "/w_permuted")
        r.inputs = (r.inputs[0], wc, r.inputs[2])


def _slice(g: Graph, anchor: Node, x: Node, lo: int, hi: int, name: str) -> Node:
    begin = (0, lo, *(0,) * (x.type.rank - 2))
    end = (x.shape[0], hi, *x.shape[2:])
    return g.insert_before(anchor, O.StridedSlice(begin, end, (1,) * x.type.rank), (x,), name)


def _split(g: Graph, n: Node, ranges: list[tuple[int, int]], order: list[int] | None = None,
           fine: dict[int, fine_weights.FinePlan] | None = None) -> Node:
    """n as its channel groups `ranges`, concatenated; of n's channels taken in `order` if given
    (a depthwise layer whose producer and readers were permuted alike, `_permute_neighbours`). The
    groups in `fine` (by index: weights over --weights-quantize-threshold) are kcc.passes.fine_weights
    pairs under their plans."""
    x, wn, bn = n.inputs
    w, b = wn.data, bn.data
    if order is not None:
        w, b = w[order], b[order]
    parts = []
    for k, (lo, hi) in enumerate(ranges):
        name = f"{n.name}/ch{lo}_{hi}"

        if fine and k in fine:  # wide depthwise channels: a coarse layer and its correction
            op = O.Conv2D(n.op.stride, n.op.padding, n.op.dilation, hi - lo, n.op.act)
            xs = _slice(g, n, x, lo, hi, name + "/in")
            parts.append(fine_weights.fine_pair(g, n, xs, w[lo:hi], b[lo:hi], op, name, fine[k]))
            continue
        bc = g.insert_before(n, O.Constant(np.ascontiguousarray(b[lo:hi])), (), name + "/b")
        if isinstance(n.op, O.MatMul):
            wc = g.insert_before(n, O.Constant(np.ascontiguousarray(w[:, lo:hi])), (), name + "/w")
            parts.append(g.insert_before(n, n.op, (x, wc, bc), name))
            continue
        wc = g.insert_before(n, O.Constant(np.ascontiguousarray(w[lo:hi])), (), name + "/w")
        if depthwise_conv(n):
            xs = _slice(g, n, x, lo, hi, name + "/in")
            op = O.Conv2D(n.op.stride, n.op.padding, n.op.dilation, hi - lo, n.op.act)
            parts.append(g.insert_before(n, op, (xs, wc, bc), name))
        else:
            parts.append(g.insert_before(n, n.op, (x, wc, bc), name))
    return g.insert_before(n, O.Concat(1), parts, n.name + "/concat")


def _slices_of_concats(g: Graph) -> None:
    """A channel slice inside one part of a channel concatenation reads that part (a conv cut into
    groups feeding a depthwise cut into the same groups: no CPU concatenation and slice between)."""
    for s in list(g.nodes):
        rng, cat = channel_range(s), s.inputs[0] if s.inputs else None
        if rng is None or not (isinstance(cat.op, O.Concat) and cat.op.axis == 1):
            continue
        at = 0
        for part in cat.inputs:
            lo, hi = rng[0] - at, rng[1] - at
            if 0 <= lo and hi <= part.shape[1]:
                new = part if (lo, hi) == (0, part.shape[1]) else _slice(g, s, part, lo, hi, s.name + "/part")
                g.replace_all_uses(s, new)
                break
            at += part.shape[1]


def _sliced_only(users: dict[Node, list[Node]], n: Node) -> bool:
    """Every reader of n is a channel slice (`_push_into_producers` cuts n into them)."""
    return bool(users[n]) and all(channel_range(s) is not None for s in users[n])


def _push_into_producers(g: Graph, concatenated: bool = False) -> int:
    """A plain conv whose every reader is a channel slice becomes one conv per slice (its weights'
    rows): no CPU slice, each group's output in KPU RAM for its reader. `concatenated`: only where a
    slice is part of a concatenation (CSP's or ShuffleNetV2's split: the part is then a KPU layer
    writing its range in KPU RAM; KPU layers read slices in place anyway). Returns how many."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    done = 0
    for p in list(g.nodes):
        if not (isinstance(p.op, O.Conv2D) and p.op.groups == 1 and p.inputs[1].is_constant
                and p.inputs[2].is_constant and id(p) not in outputs and users[p]):
            continue
        slices = users[p]
        if not all(channel_range(s) is not None for s in slices):
            continue
        if concatenated and not any(isinstance(u.op, O.Concat) for s in slices for u in users[s]):
            continue
        x, w, b = p.inputs[0], p.inputs[1].data, p.inputs[2].data
        for s in slices:
            lo, hi = channel_range(s)
            # just before its first reader, so that one group's output is read before the next is
            # made: only one group of p's output is alive in KPU RAM at a time (`chain`)
            at = min((u for u in users[s]), key=g.nodes.index, default=p)
            name = f"{p.name}/ch{lo}_{hi}"
            wc = g.insert_before(at, O.Constant(np.ascontiguousarray(w[lo:hi])), (), name + "/w")
            bc = g.insert_before(at, O.Constant(np.ascontiguousarray(b[lo:hi])), (), name + "/b")
            part = g.insert_before(at, p.op, (x, wc, bc), name)
            g.replace_all_uses(s, part)
        done += 1
    return done


def split_channels(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Cut every conv / fully-connected layer too big for one KPU layer into channel groups (module
    docstring); every other node is left as it is."""
    ctx = ctx or CompileContext()
    opts = ctx.options
    if opts.target == "cpu":
        return g
    # legalize_kpu turns the model by 180° when that frees its stride-2 layers (rotate180): a layer
    # is tried as it will be placed then, its SAME padding on the KPU's side (a group is cut from n
    # itself, which has the same shapes)
    turned = g if ctx.quantization is not None or ctx.own_grids else rotate180(g)
    seen = {n.name: n for n in turned.nodes} if turned is not g else {}
    turned_users = turned.users() if turned is not g else None
    cut = ranged = 0
    inputs = fine_weights.wide_inputs(g, opts.weights_quantize_threshold, ctx.samples)
    # depthwise layers first: a cut one's slices cut its producer into the same groups
    # (`_push_into_producers`, sized by `chain`), which then needs no groups of its own
    depthwise = {id(v) for v in g.nodes if isinstance(v.op, O.Conv2D) and depthwise_conv(v)}
    users = g.users()  # made again after each cut
    for n in [v for v in g.nodes if id(v) in depthwise] + [v for v in g.nodes if id(v) not in depthwise]:
        if isinstance(n.op, (O.Conv2D, O.MatMul)) and not _sliced_only(users, n):
            beside, skip = chain(users, n)
            placed = seen.get(n.name, n)
            pool = fused_pool(turned_users or users, placed, turned.outputs if turned_users else g.outputs)
            ranges = plan_groups(placed, opts, n, beside, skip, pool)
            if ranges is not None:
                g.substitute(n, _split(g, n, ranges), "/unsplit")
                n.inputs = ()  # retired: its producer's readers are the groups' slices alone
                users = g.users()
                cut += 1
                continue
            over = plan_range_split(seen.get(n.name, n), opts)
            if (over is None and id(n) in inputs and _range_only(seen.get(n.name, n), opts)
                    and fine_weights.whole_pair(g, n, inputs[id(n)], opts, ctx.log)):
                users = g.users()
                ranged += 1
                continue
            if over is not None:
                # the KPU channels as one range: n's neighbours take its channels in that order, if
                # they can; else every run of KPU channels is a layer of its own, if that still pays
                order = None
                if sum(not over[lo] for lo, _ in _runs(over)) > 1:
                    if _permutable(g, n):
                        order = [c for c in range(len(over)) if not over[c]] + [c for c in range(len(over)) if over[c]]
                        _permute_neighbours(g, n, order)
                        over = [over[c] for c in order]
                    elif not _range_split_pays(n, over):
                        continue
                runs = _runs(over)
                fine = fine_weights.run_plans(n, runs, over, order, inputs.get(id(n)))
                fined = {c for i in fine for c in range(*runs[i])}
                wide = [c if order is None else order[c] for c in range(len(over)) if over[c]]
                where = ("stay in float on the CPU" if not fined else
                         "run on the KPU with a correction layer (kcc.passes.fine_weights)" if len(fined) == len(wide)
                         else f"run on the KPU with a correction layer but {len(wide) - len(fined)} in float on the CPU")
                ctx.log(f"   '{n.name.split(';')[0]}': channel(s) {', '.join(map(str, wide))} of {len(over)} over "
                        f"--weights-quantize-threshold {where}, the other {len(over) - len(wide)} go to the KPU")
                g.substitute(n, _split(g, n, runs, order, fine), "/unsplit")
                users = g.users()
                ranged += 1
    if cut or ranged:
        _slices_of_concats(g)
        g.remove_dead()  # the cut layers no longer read their inputs
    if _push_into_producers(g, concatenated=not (cut or ranged)):  # also a model's split (CSP, ShuffleNetV2)
        g.remove_dead()
    if cut:
        ctx.log(f"   {cut} layer(s) split across channels to fit the KPU")
    return g
