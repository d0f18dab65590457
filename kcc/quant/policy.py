"""Which range each tensor gets: the calibration policy on top of the raw statistics.

`no_clip` uses min/max everywhere. `l2` (histogram threshold search, kpu_semantics.md §4.2) is
applied only where clipping is known to help, the outputs of KPU layers that end in a ReLU-family
clamp; every other tensor keeps its full range:
* the graph input: its range is the data's own (pixels); what is clipped there is lost for good;
* tensors the model outputs are computed from (through CPU ops only): clipping saturates exactly
  the large logits/scores a decision rests on;
* signed layer outputs and pre-activations (no ReLU): their tails carry the evidence of detection
  heads and leaky branches (ulffd_landmark with l2 everywhere: cosine 0.995 -> 0.978).
And a clamp that saturates (ReLU6 outputs reaching 6) keeps its bound: the spike of mass exactly at
the bound is worth more than the left-edge histogram estimate suggests, and for models trained
with quantization the activations' grid is [0, 6] exactly.
Logits feeding a softmax get `kcc.quant.logits`' range in both modes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import averages_codes, keeps_grid, moves_codes
from kcc.ir.graph import Graph, Node, channel_range
from kcc.passes.manager import CompileContext
from kcc.passes.prelu_tables import uint8_prelu
from kcc.progress import counted
from kcc.quant.calibrate import (
    Observer,
    Samples,
    calibrate,
    input_range_override,
    input_views,
    load_samples,
    view_source,
)
from kcc.quant.calibration_view import calibration_view
from kcc.quant.domains import copies_of, moves_values
from kcc.quant.logits import logit_ranges, softmax_logits
from kcc.quant.params import GridRange, QuantParam, range_param
from kcc.quant.prequantized import prequantized_ranges
from kcc.quant.weight_rounding import InputMoments
from kcc.target.quant_rules import shared_zero_point

Range = tuple[float, float]


def _relu_clamped(n: Node) -> bool:
    return isinstance(n.op, KO.FloatKpuConv) and n.op.fn is None and n.op.act[0] >= 0


def output_sources(g: Graph) -> set[str]:
    """KPU layers (and graph inputs) whose values reach a graph output through CPU ops only."""
    found: set[str] = set()
    stack, seen = list(g.outputs), set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n.op, (KO.FloatKpuConv, O.Input)):
            found.add(n.name)
            continue
        stack.extend(i for i in n.inputs if not i.is_constant)
    return found


def choose_ranges(view: Graph, samples: Samples, points: Sequence[Node], method: str,
                  moments: Observer | None = None, shared: Sequence[Sequence[str]] = ()) -> dict[str, Range]:
    """Ranges for every point of `view` (kcc.quant.calibration_view.calibration_view of the legalized graph,
    whose pre-activation outputs count as outputs and users here too); `moments` observes the first
    pass over the samples too; each group of names in `shared` gets one grid (share_phase_grids)."""
    g = view
    full = calibrate(view, samples, points, "no_clip", also=moments)
    ranges = dict(full)
    if method != "no_clip":
        keep = output_sources(g)
        clip = [p for p in points if _relu_clamped(p) and p.name not in keep]
        if clip:
            clipped = calibrate(view, samples, clip, method)
            for p in clip:
                lo, hi = clipped[p.name]
                bound = p.op.act[1]
                if full[p.name][1] >= bound:  # a saturating clamp keeps its bound
                    hi = bound
                ranges[p.name] = (lo, hi)
    ranges.update(logit_ranges(view, samples, softmax_logits(g)))
    share_phase_grids(shared, ranges)
    share_part_grids(g, ranges)
    share_view_grids(points, ranges, g.users())
    share_table_grids(g, ranges)
    share_batch_zero_points(g, ranges)
    residual_term_ranges(g, ranges)
    return share_concat_grids(g, ranges)


def calibrate_ranges(g: Graph, ctx: CompileContext) -> Graph:
    """Stage: ctx.ranges, the range of every tensor `quantize` needs, of the legalized float graph `g`
    (ctx.float_graph): measured on ctx.samples (kpu_semantics.md §4.2), with the KPU layers' input
    statistics in ctx.moments from the same pass, or a pre-quantized model's own grids
    (ctx.own_grids, kcc.quant.prequantized). The graph is observed, never edited (calibration_view);
    ctx.pre_activations links each layer with a fused activation to its pre-activation range."""
    options, log = ctx.options, ctx.log
    ctx.float_graph = g
    for note in ctx.quantization.notes() if ctx.quantization is not None else ():
        log(f"   warning: {note}")
    cv = calibration_view(g)
    ctx.pre_activations = cv.pre_activations
    if ctx.own_grids:
        ctx.ranges = copy_grids(cv.graph, prequantized_ranges(cv, ctx.quantization, options, log))
        return g
    load_samples(g, ctx)
    samples = ctx.samples
    ctx.moments = InputMoments(g)
    view, points = cv.graph, cv.points
    n_samples = len(samples)
    if ctx.progress is not None:
        samples = counted(samples, ctx.progress)  # one bar per pass over the data
    ranges = choose_ranges(view, samples, points, options.calibrate_method, ctx.moments, ctx.phase_classes)
    if options.input_mean is not None or options.input_std is not None:
        # the stated input grid (e.g. the camera's pixels) also holds for views of the input that a
        # KPU layer reads (a pre-padded or decomposed stem): they must not round the pixels again
        ranges[g.inputs[0].name] = fixed = input_range_override(options.mean, options.std)
        if fixed[0] <= 0.0 <= fixed[1]:
            for p in input_views(points, g.inputs[0]):
                ranges[p.name] = fixed
    log(f"   {n_samples} sample(s), {len(points)} tensors, method {options.calibrate_method}")
    band_edge_grids(view, ranges)
    ctx.ranges = copy_grids(view, ranges)
    return g


def band_edge_grids(g: Graph, ranges: dict[str, Range]) -> None:
    """A layer on row bands (kcc.passes.row_bands, row_pick) recomputes the rows at the band edges from
    rows of its input x: those are read on the grid x's bands are read on (x is quantized once), and
    an edge layer whose rows are copied over the bulk's is on the bulk's grid, so that the copies move
    its codes exactly (copy_grids, after)."""
    for r in g.nodes:
        if not isinstance(r.op, KO.KpuRowPatch):
            continue
        bulk = r.inputs[0]
        bands = bulk.inputs[0]
        for part in r.inputs[1:]:
            if moves_codes(part) and bulk.name in ranges:  # a copy of an edge layer's good rows
                part = view_source(part.inputs[0])
                ranges[part.name] = ranges[bulk.name]
            rows = part.inputs[0]
            if isinstance(rows.op, O.StridedSlice) and view_source(rows) is view_source(bands) and bands.name in ranges:
                ranges[rows.name] = ranges[bands.name]


def share_phase_grids(groups: Sequence[Sequence[str]], ranges: dict[str, Range]) -> None:
    """The phase classes of one tensor (kcc.passes.phase_dilated, ctx.phase_classes) hold its pixels:
    one grid for all of them, the union of their ranges, as the full map would have. Their codes are
    then packed, sliced into finer phases or merged as they are, instead of each class rounded again
    on a common grid on the CPU. The same for the parts one stacked layer reads (kcc.passes.parts_stack:
    each stretched to one reach, so that one grid holds them all at each one's own resolution)."""
    for group in groups:
        names = [name for name in group if name in ranges]
        if len(names) > 1:
            union = (min(ranges[name][0] for name in names), max(ranges[name][1] for name in names))
            for name in names:
                ranges[name] = union


def share_part_grids(g: Graph, ranges: dict[str, Range]) -> None:
    """The float channel groups of a concatenation that KPU layers (and rounding residuals) read group
    by group (kcc.passes.part_groups: BlazePalm's stem PReLU, read by its first 5x5's channel groups
    and, whole, by the first block's add) get one grid, the union of their ranges and the
    concatenation's: each group is then quantized once, for all its readers, as soon as it is made,
    as the channel slices of one tensor were (`share_view_grids`)."""
    users = g.users()

    def part(p: Node, n: Node) -> bool:
        return (p.name in ranges and not isinstance(p.op, KO.FloatKpuConv) and p.dtype == n.dtype
                and any(u is not n for u in users[p])
                and all(u is n or isinstance(u.op, (KO.FloatKpuConv, KO.QuantResidual)) for u in users[p]))

    for n in g.nodes:
        if isinstance(n.op, O.Concat) and n.op.axis == 1 and n.name in ranges and all(part(p, n) for p in n.inputs):
            both = (*n.inputs, n)
            union = (min(ranges[v.name][0] for v in both), max(ranges[v.name][1] for v in both))
            for v in both:
                ranges[v.name] = union


def share_table_grids(g: Graph, ranges: dict[str, Range]) -> None:
    """The tables of a channel group that KPU layers read as one map (kcc.passes.prelu_tables: a
    decomposed depthwise's channel groups reading a PReLU that runs a table a channel) write their
    codes on one grid, the union of their ranges: the group is then the concatenation of their codes,
    not a slice of their dequantized map quantized again; a map that a KPU layer alone reads whole is
    one such group, on the layer's one grid. The tables of no such group keep a grid each (a residual
    stream's channels differ in range by orders of magnitude, docs/measurements.md §24); the float
    map an add reads is every table's codes dequantized, channel by channel."""
    users = g.users()
    for n in g.nodes:
        if not (isinstance(n.op, O.Concat) and n.op.axis == 1 and _read_as_codes(n, users)
                and all(uint8_prelu(p) and p.name in ranges for p in n.inputs)):
            continue
        both = [*n.inputs, n] if n.name in ranges else list(n.inputs)
        union = (min(ranges[v.name][0] for v in both), max(ranges[v.name][1] for v in both))
        for v in both:
            ranges[v.name] = union


def _read_as_codes(n: Node, users: dict[Node, list[Node]]) -> bool:
    """Every reader of n is a KPU layer (or the batches of one, a KpuBatchStack, or a part of the
    buffer one reads, a KpuStack), or data movement whose readers all are."""
    return bool(users[n]) and all(
        isinstance(u.op, (KO.FloatKpuConv, KO.KpuBatchStack, KO.KpuStack)) or (moves_values(u) and _read_as_codes(u, users))
        for u in users[n])


def share_batch_zero_points(g: Graph, ranges: dict[str, Range]) -> None:
    """The groups of a KpuBatchStack (a decomposed 5x5's channel groups as the batches of one fan
    layer, kcc.passes.kernel_forms) keep a scale each but take one zero point, the one that widens
    their steps least in mean square: the fan pads every batch with one code. A group that is a
    concatenation of tables' codes (share_table_grids) moves its tables' grid with it. Measured on
    BlazePalm's float model, per stage, 2 to 4e-5 of cosine (docs/measurements.md §29)."""
    for n in g.nodes:
        if not isinstance(n.op, KO.KpuBatchStack) or not all(p.name in ranges for p in n.inputs):
            continue
        zero, levels = shared_zero_point(np.array([ranges[p.name][0] for p in n.inputs]),
                                         np.array([ranges[p.name][1] for p in n.inputs]))
        for p, scale in zip(n.inputs, levels):
            q = QuantParam(zero, float(np.float32(scale)))
            grid = GridRange(*q.real_range, q)
            ranges[p.name] = grid
            if isinstance(p.op, O.Concat) and all(uint8_prelu(t) and t.name in ranges for t in p.inputs):
                for t in p.inputs:  # the tables write the group's codes
                    ranges[t.name] = grid


def share_view_grids(points: Sequence[Node], ranges: dict[str, Range], users: dict[Node, list[Node]]) -> None:
    """Views (crops, zero pads) of one float tensor that KPU layers read, and of its rounding
    residual (kcc.ir.kpu_ops.QuantResidual), get one grid, the union of their ranges: the tensor is
    quantized once and the views are cut from its uint8 codes (kcc.quant.quantize), and the residual
    is taken on the grid its twin terms read x on (a residual's own range, 0 in float, says nothing).

    Where every view is of one of disjoint channel slices of the tensor (a decomposed depthwise conv's
    channel groups, kcc.passes.kernel_forms `_group_source`), each slice is quantized on its own
    (quantize: a slice that drops channels is quantized after) and gets the union of its own views'
    ranges only. A residual stream's channels differ in range by orders of magnitude: BlazePalm's
    5x5s, reading their float inputs as 8-bit codes on one grid each, cost its outputs 2.6e-3 of
    cosine in all, on one grid per group of 4 channels 2.6e-4 (docs/measurements.md §24). Not where
    the slices are averaged on their grid (kcc.ir.code_moves.averages_codes: an upsampling's mean layers
    in channel groups, kcc.passes.kpu_pools), whose outputs make one map again."""
    groups: dict[int, list[Node]] = {}
    for p in points:
        src = view_source(p)
        if isinstance(src.op, KO.QuantResidual):
            src = view_source(src.inputs[0])
        if p is src and not any(isinstance(u.op, KO.FloatKpuConv) for u in users[p]):
            continue  # no KPU layer reads the tensor whole: its views' grids are theirs alone
        if not isinstance(src.op, (KO.FloatKpuConv, O.Input)) and p.name in ranges:
            groups.setdefault(id(src), []).append(p)
    for views in groups.values():
        kept = all(users[v] and all(averages_codes(u) for u in users[v]) for v in views)
        for part in [views] if kept else _slice_groups(views):
            lo = min(ranges[v.name][0] for v in part)
            hi = max(ranges[v.name][1] for v in part)
            for v in part:
                ranges[v.name] = (lo, hi)


def _slice_groups(views: list[Node]) -> list[list[Node]]:
    """`views` (of one float tensor, share_view_grids) by the channel slice each is a view of, when
    each is of one and the slices are disjoint; else all of them as one group."""
    by_slice: dict[int, list[Node]] = {}
    slices: dict[int, tuple[int, int]] = {}
    for v in views:
        s = _channel_slice(v)
        if s is None:
            return [views]
        by_slice.setdefault(id(s), []).append(v)
        slices[id(s)] = channel_range(s)
    spans = sorted(slices.values())
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return [views]
    return list(by_slice.values())


def _channel_slice(v: Node) -> Node | None:
    """The channel slice (`channel_range`) of a float tensor that view v moves around (through data
    movement and a rounding residual, as view_source goes), or None."""
    n = v
    while True:
        if channel_range(n) is not None and not isinstance(view_source(n.inputs[0]).op, KO.QuantResidual):
            return n
        if not (isinstance(n.op, KO.QuantResidual) or n is not view_source(n)):  # no view op
            return None
        n = n.inputs[0]


def residual_term_ranges(g: Graph, ranges: dict[str, Range]) -> None:
    """A KPU layer reading only a rounding residual (a summed decomposed conv's twin term,
    kcc.passes.decompose_kernels) computes 0 in float, so its calibrated range says nothing: its
    range is the bound instead. The residual is at most gain/2 steps of the grid its input is read
    on (share_view_grids), times the channel's sum of |w|."""
    for n in g.nodes:
        if not isinstance(n.op, KO.FloatKpuConv):
            continue
        x, w = n.inputs[0], n.inputs[1].data
        src = view_source(x)
        if isinstance(src.op, KO.QuantResidual) and x.name in ranges:
            bound = float(np.abs(w).reshape(w.shape[0], -1).sum(axis=1).max()) * src.op.gain / (2 * range_param(ranges[x.name]).scale)
            ranges[n.name] = (-bound, bound)


def copy_grids(g: Graph, ranges: dict[str, Range]) -> dict[str, Range]:
    """A KPU layer that copies its input shifted (kcc.ir.code_moves.moves_codes: a `stack_kpu` view or
    a `fan_kpu` fan, kcc.passes.kernel_forms), or averages it (`averages_codes`), gets its input's
    range (a KPU layer's, for a channel slice of its output, which moves its codes:
    kcc.quant.quantize), the very object, so its grid is its input's and
    it moves the codes exactly (kcc.quant.kpu_params' clamp path: out = z + (x - z), the border its
    pad value, the input's zero point); its calibrated range (the copy drops a row and a column of x
    and adds zeros) would round every value again. The copies' concatenations then take that grid
    too (`share_concat_grids`, run again). Last: after any override of the input's range."""
    changed = False
    for n in g.nodes:
        if not n.inputs or not keeps_grid(n):
            continue
        x = src = n.inputs[0]
        while isinstance(src.op, (O.Pad, O.StridedSlice, O.Reshape, O.Transpose, KO.KpuRowPatch)):
            src = src.inputs[0]  # (a map with rows written over in place is on its layer's grid)
        if isinstance(src.op, KO.FloatKpuConv):  # a view of a KPU layer's output moves its codes
            x = src
        if x.name in ranges:
            ranges[n.name] = ranges[x.name]
            changed = True
    return share_concat_grids(g, ranges) if changed else ranges


#: how much wider than its own a KPU layer's grid may become for a concatenation it is part of, when
#: other KPU layers read it too (`share_concat_grids`)
SHARED_GRID_WIDENING = 2.0


def share_concat_grids(g: Graph, ranges: dict[str, Range]) -> dict[str, Range]:
    """KPU layers whose outputs are only concatenated along channels, for a KPU layer to read (the
    channel groups of a decomposed depthwise, kcc.passes.decompose_kernels), get the grid of the
    concatenation, the union of their ranges: it then copies their uint8 codes (kcc.quant.quantize)
    instead of dequantizing each group and rounding every value again on its own grid. A
    concatenation read in float (a graph output) keeps its parts' own, finer grids."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}

    def layer(p: Node, user: Node) -> Node | None:
        """The KPU layer p is (a crop or other data movement of), if user is its only reader besides
        other parts of the concatenation user (kcc.passes.fine_weights: x and the layer A reading it)
        and KPU layers, which read any grid (an FPN's lateral map, read by the next stage too; see
        `widened`)."""
        if id(p) in outputs or any(u is not user and not any(u is q for q in user.inputs)
                                   and not isinstance(u.op, KO.FloatKpuConv) for u in users[p]):
            return None
        if moves_values(p) or copies_of(p) is not None:  # (an upsampling too: kcc.quant.quantize runs it on codes)
            return layer(p.inputs[0], p)
        return p if isinstance(p.op, KO.FloatKpuConv) and p.name in ranges else None

    def leads_to(u: Node, n: Node) -> bool:  # u is n, or moves values into n alone (layer's chain)
        while u is not n:
            if not (moves_values(u) or copies_of(u) is not None) or id(u) in outputs or len({id(v) for v in users[u]}) != 1:
                return False
            u = users[u][0]
        return True

    def cpu_conv(p: Node, user: Node) -> Node | None:
        """p, a float conv on the CPU read by user alone: quantized on the concatenation's grid, it is
        uploaded into its channel range of the KPU RAM buffer (kcc.quant.kpu_ram.kpu_concat_problem)."""
        if copies_of(p) is not None and id(p) not in outputs and all(u is user for u in users[p]):  # copies: quantized once
            return cpu_conv(p.inputs[0], p)
        ok = (isinstance(p.op, O.Conv2D) and id(p) not in outputs and all(u is user for u in users[p])
              and p.name in ranges)
        return p if ok else None

    def copied(p: Node) -> list[Node] | None:
        """The KPU layers that copy p moves the codes of, if p alone reads them: a pick layer's
        full-resolution conv (kcc.passes.row_pick, one per channel group of a wide stride-2 conv),
        which must be on the concatenation's grid too for its pick to be (copy_grids); in row bands,
        the conv whose map the pick reads with rows written over (kcc.ir.kpu_ops.KpuRowPatch); over a
        gap (kcc.passes.gap_pick), the stride-1 layers written into the gap map."""
        x, reader = p.inputs[0], p
        if isinstance(x.op, KO.KpuRowPatch) and users[x] == [p]:  # its rows rewritten in place: row bands
            x, reader = x.inputs[0], x
        if isinstance(x.op, O.Pad) and x.op.value == 0.0 and users[x] == [p]:  # a gap map
            x, reader = x.inputs[0], x
        layers = [x]
        if isinstance(x.op, O.Concat) and users[x] == [reader]:  # one stride-1 layer per line group
            layers, reader = list(x.inputs), x
        ok = moves_codes(p) and all(isinstance(v.op, KO.FloatKpuConv) and v.name in ranges and users[v] == [reader]
                                    and id(v) not in outputs for v in layers)
        return layers if ok else None

    def widened(p: Node, n: Node, union: tuple[float, float]) -> bool:
        """KPU layer p, read by other KPU layers too, would lose more than a bit of resolution for
        them on the union grid (its width over SHARED_GRID_WIDENING times p's own): n stays a CPU
        concatenation, its parts quantized again on its grid, and they keep p's."""
        others = [u for u in users[p] if not leads_to(u, n) and not any(u is q for q in n.inputs)]
        lo, hi = ranges[p.name]
        return bool(others) and (union[1] - union[0]) > SHARED_GRID_WIDENING * (max(hi, 0) - min(lo, 0))

    for n in g.nodes:
        if not (isinstance(n.op, O.Concat) and n.op.axis == 1 and n.name in ranges):
            continue
        parts = [layer(p, n) for p in n.inputs]
        if any(parts):  # the CPU convs among KPU layers (a depthwise layer cut by its weights' ranges)
            parts = [q or cpu_conv(p, n) for p, q in zip(n.inputs, parts)]
        if not all(parts):
            continue
        found = [copied(p) for p in parts]
        sources = [v for layers in found if layers is not None for v in layers] if all(found) else []
        lo = min(ranges[p.name][0] for p in (*parts, *sources))
        hi = max(ranges[p.name][1] for p in (*parts, *sources))
        same = all(ranges[p.name] is ranges[parts[0].name] for p in (*parts, *sources))  # one grid already
        union = ranges[parts[0].name] if same else (lo, hi)
        if any(widened(p, n, union) for p in parts):
            continue
        for p in (*parts, *sources, n):
            ranges[p.name] = union
    return ranges
