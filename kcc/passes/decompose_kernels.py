"""decompose_kernels: a convolution the KPU rejects, as KPU-legal 3x3 convolutions of views of its input.

The KPU convolves 1x1 and 3x3 kernels only, over maps of at most 256 rows (legalize_kpu), so ncc
leaves every 5x5 depthwise of BlazePalm/BlazeHand, every 7x7 stem and every oversized stride-2 stem
to the CPU, where a float conv costs ~64 cycles per MAC. This pass rewrites such a conv, before
legalize, into terms that are each an ordinary 3x3 conv of a view (crop/phase) of the input.

The term algebra (which taps each 3x3 term takes, which view of the input it reads) is
kcc.passes.kernel_terms.

## Combining the terms (sketch for a 5x5 depthwise, stride 1, "same": J = 4 terms)

    before:   x -> conv5x5(w, b, act) -> y                          (CPU, float: 25 MACs per output)

    sum:      x -> [crop] -> conv3x3(w_0, b) -+
              x -> [crop] -> conv3x3(w_1, 0) -+-> add -> add -> add(act) -> y
              ...                               (J KPU layers, J-1 float adds on the CPU)
    stack:    pad(x) -> slice_j -> concat(channels) -> conv3x3([w_0 | w_1 | ...], b, act) -> y
                                                (one KPU layer over J*C input channels)
    stack_dw: pad(x) -> slice_j -> concat -> dwconv3x3(J*C, "same") -> conv1x1([I I I I], b, act) -> crop
                                                (stride 1 only; two KPU layers, nothing between them)

`sum` keeps the weights as they are. The partial sums are not clamped: the bias rides on the first
term (the KPU adds it for free) and the fused clamp on the last add. `stack` rounds once, at the
conv's own output range; a depthwise kernel becomes a dense block-diagonal one (output channel o
reads channel o of every view), 9*J*C*C weight bytes, so wide depthwise convs are stacked in
channel groups, one KPU layer and 9*J*g*C bytes per group of g (the group outputs are concatenated).
`stack_dw` needs only J*C*C bytes for the 1x1 sum; like `sum` it rounds every unclamped partial
sum to 8 bits. After a clamp (relu6) that costs accuracy: partial sums of a BlazeHand 5x5 span
~[-12, 15] while the output spans [0, 6], so `sum` gives 1.1-1.6 output steps of rms error on
real activations where `stack` gives 0.4 (and the float conv rounded to its grid 0.2).

## Choosing

Candidates: split q in {1, s} x zero placement z x combiner. A depthwise `stack` needs groups of
at most 1024 / J channels, at most MAX_STACK_GROUPS layers, STACK_WEIGHT_BUDGET bytes of weights
(MAX_STACK_WEIGHT if no grouping fits that) and < 64 weight loads a layer (kmodel's load_time
field); the fewest layers and 2, 4, ... times as many are tried, since smaller groups may fit KPU RAM
where larger ones do not. `stack_dw` needs J*C <= 1024 and the budget.
Each candidate is legalized on its own (a few-node graph) and must land wholly on the KPU, and is
costed in estimated K210 cycles (`estimate_cycles`: KPU layer cycles, uploads and downloads, and the
CPU data movement and adds around the layers, with kcc.latency's costs). A conv is decomposed only
when some form is estimated faster than the float conv on the CPU. `--decompose accurate` (the
default) then takes the fastest form that rounds no more than the CPU conv (`extra_roundings`): a
`stack`, reading a float input of the CPU (a PReLU, an add) with its rounding residual
(`RESIDUAL_GAIN`; twice the input channels, within the same limits). The CPU conv reads that input
unrounded, and a `sum` or `stack_dw` rounds each partial sum over its own range, after a clamp several
times the output's. Measured on BlazePalm: its 256-channel 5x5s summed with the residual cost 0.35 dB
of output SQNR. A stack read in float on the CPU (BlazePalm's stem, before its PReLU), where the
float conv would not round at all, computes its output in four parts: y in [-t, t] on two fine grids
and the tails on two more, t chosen from the calibration samples (`bulk_thresholds`); or, without
samples, in two halves (y <= 0, y >= 0).
`--decompose fast` takes the fastest form, whatever it rounds. The decision, and its
estimate against the float conv on the CPU, go into the output node's note, or into the CPU
placement's reason when the conv stays.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kcc import latency as L
from kcc.emit_kpu import weight_loads
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.kmodel import kpu_row_layout
from kcc.options import CompileOptions
from kcc.passes.kernel_terms import Window, axis_terms, conv_terms, max_zero_taps
from kcc.passes.legalize_kpu import MAX_CHANNELS, legalize_kpu

#: most weight bytes a depthwise `stack` / `stack_dw` may create per conv (the 5x5 itself has 25*C):
#: the memory spent on accuracy. 64 KiB stacks every depthwise of up to ~150 channels (BlazePalm's
#: 32..128, BlazeHand's 96 and 144: the early, large maps, where rounding matters most).
STACK_WEIGHT_BUDGET = 64 * 1024
#: a stack no grouping fits in STACK_WEIGHT_BUDGET may take this much: BlazeHand's 288- and
#: 384-channel 5x5s (122 KiB each), which without a stack stay on the CPU or, with --decompose fast,
#: are summed (unclamped partial sums rounded over [-17, 23] against the relu6 output's [0, 6]).
#: Its 672-channel ones would need 340 KiB each.
MAX_STACK_WEIGHT = 128 * 1024
#: most KPU layers (channel groups) a depthwise `stack` may take: each costs ~25 us and a few CPU
#: copies, against ~100+ ms for a wide 5x5 depthwise on the CPU
MAX_STACK_GROUPS = 48
#: a `stack` reading a float tensor of the CPU also stacks gain * its rounding residual, with the
#: weights divided by gain (kcc.ir.kpu_ops.QuantResidual): residual codes span z +- gain/2. Per tap
#: the error left is ~ w/gain (x's rounding, w in weight steps) plus ~ gain/sqrt(12) (the residual
#: weights' own rounding): smallest near gain ~ 2 * sqrt(w), and for equalized weights of 20-100
#: steps 16 leaves 1/30-1/60 of the rounding noise of x.
RESIDUAL_GAIN = 16.0

# Cost model: kcc.latency's cycle counts (nncase v0.2 runtime at 400 MHz) of what legalize makes.
_KPU_LAYER_CYCLES = L.KPU_LAYER_US * L.DEFAULT_MHZ  # interrupt, layer FIFO, runtime
_CPU_PER_ELEMENT = {O.Pad: "pad", O.StridedSlice: "strided_slice", O.Transpose: "transpose", O.Reshape: "copy_byte",
                    O.Concat: "copy_byte", O.Binary: "binary"}

Add = Callable[[O.Op, tuple, str], Node]
#: the reason of a conv no decomposition puts on the KPU (legalize_kpu's own reason says it all)
NO_FORM = "no decomposition lands on the KPU"


@dataclass(frozen=True)
class Plan:
    """One way to decompose a conv: split steps, zero placement, combiner, and for a depthwise
    `stack` the channels per group (0: all channels in one layer)."""

    split: tuple[int, int]
    z: tuple[int, int]
    combine: str  # "sum" | "stack" | "stack_dw"
    group: int = 0
    residual: bool = False  # a `stack` that also stacks x's rounding residual (RESIDUAL_GAIN)
    halves: bool = False  # a `stack` computed twice, clamped to y <= 0 and y >= 0, and added on the CPU
    bulk: float = 0.0  # with halves: four parts instead, y in [-bulk, bulk] on two fine grids (`bulk_thresholds`)

    def describe(self) -> str:
        how = "polyphase" if self.split != (1, 1) else "blocks"
        groups = f" in groups of {self.group} channels" if self.group else ""
        extra = f" with the input's rounding residual (x{RESIDUAL_GAIN:g})" if self.residual else ""
        halves = ""
        if self.halves:
            halves = (f", its output in four parts (fine for |y| <= {self.bulk:.3g})" if self.bulk
                      else ", its output in two halves (y <= 0, y >= 0)")
        return f"{how} z={self.z[0]},{self.z[1]}, {self.combine}{groups}{extra}{halves}"


def _terms(n: Node, plan: Plan) -> list[tuple[np.ndarray, Window, Window]] | None:
    """(3x3 kernel, H window, W window) of every term of conv n under `plan` that reads any input."""
    op: O.Conv2D = n.op
    x, w, _ = n.inputs
    return conv_terms(w.data, op.stride, op.padding, x.shape[2:], n.shape[2:], plan.split, plan.z)



# ----------------------------------------------------------------------------------- emission
def _view(add: Add, x: Node, wh: Window, ww: Window, name: str, cache: dict) -> Node:
    nb, c, h, w = x.shape
    key = (wh.begin, wh.end, wh.step, ww.begin, ww.end, ww.step)
    if key == (0, h, 1, 0, w, 1):
        return x
    if key not in cache:
        cache[key] = add(O.StridedSlice((0, 0, wh.begin, ww.begin), (nb, c, wh.end, ww.end), (1, 1, wh.step, ww.step)),
                         (x,), f"{name}/view{len(cache)}")
    return cache[key]


def _padded_views(add: Add, x: Node, terms: list, keep: tuple[tuple[int, int], tuple[int, int]], name: str,
                  cache: dict, channels: tuple[int, int] | None = None) -> list[Node]:
    """Views of equal size for a stack: x padded once, then one (strided) slice per term. Each view
    covers its term's whole window except the `keep` zero rows/columns, left to the conv padding;
    `channels` restricts the views to a channel range: those channels are sliced off x first and
    padded on their own, so each group of a wide depthwise stack quantizes and pads only its own
    channels (kcc.quant.quantize moves the quantize below the pad and the views, not below the
    channel slice, which shrinks the data)."""
    nb, c, *size = x.shape
    c0, c1 = channels or (0, c)
    spans = []  # per term, per axis: first and last input index read (may be in the padding)
    for _, *wins in terms:
        spans.append([(win.begin - win.step * (win.pad_before - kb), win.end - 1 + win.step * (win.pad_after - ka))
                      for win, (kb, ka) in zip(wins, keep)])
    pads = tuple((max(0, -min(sp[a][0] for sp in spans)), max(0, max(sp[a][1] for sp in spans) - (size[a] - 1)))
                 for a in range(2))
    if ("padded", c0, c1) not in cache:
        src = x
        if (c0, c1) != (0, c):
            src = add(O.StridedSlice((0, c0, 0, 0), (nb, c1, *size), (1, 1, 1, 1)), (x,), f"{name}/channels")
        cache[("padded", c0, c1)] = cache[("source", c0, c1)] = src
        if any(p for pair in pads for p in pair):
            cache[("padded", c0, c1)] = add(O.Pad(((0, 0), (0, 0), *pads), 0.0), (src,), f"{name}/pad")
    xp = cache[("padded", c0, c1)]
    views = []
    for (_, wh, ww), sp in zip(terms, spans):
        begin = (0, 0, *(sp[a][0] + pads[a][0] for a in range(2)))
        end = (nb, c1 - c0, *(sp[a][1] + pads[a][0] + 1 for a in range(2)))
        key = (id(xp), begin, end, wh.step, ww.step)
        if (begin, end, wh.step, ww.step) == ((0, 0, 0, 0), xp.shape, 1, 1):
            views.append(xp)
            continue
        if key not in cache:
            cache[key] = add(O.StridedSlice(begin, end, (1, 1, wh.step, ww.step)), (xp,), f"{name}/view")
        views.append(cache[key])
    return views


def _block_diagonal(terms: list, c0: int, c1: int) -> np.ndarray:
    """Dense [g, J*g, 3, 3] weights of a depthwise stack over channels c0..c1: output channel o
    reads channel o of every term's view."""
    g, j_count = c1 - c0, len(terms)
    ws = np.zeros((g, j_count * g, 3, 3), np.float32)
    for j, (k, _, _) in enumerate(terms):
        ws[np.arange(g), j * g + np.arange(g)] = k[c0:c1, 0]
    return ws


def emit(add: Add, n: Node, x: Node, plan: Plan) -> Node | None:
    """Build the decomposition of conv `n` (reading `x`) with `add`; returns the node computing n."""
    op: O.Conv2D = n.op
    _, _, bn = n.inputs
    terms = _terms(n, plan)
    if terms is None:
        return None
    name, bias = n.name, bn.data.astype(np.float32)
    c, oc = x.shape[1], n.shape[1]
    j_count = len(terms)
    if plan.combine == "sum" or j_count == 1:
        # with the residual, each term has a twin reading the same view of x's rounding residual
        # (weights / gain); the twins' partial sums are tiny and rounded on a grid of their own
        lost = add(KO.QuantResidual(RESIDUAL_GAIN), (x,), f"{name}/residual") if plan.residual else None
        sources = [(x, 1.0, {})] + ([(lost, 1.0 / RESIDUAL_GAIN, {})] if lost is not None else [])
        parts = [(src, k * np.float32(scale), wh, ww, cache) for src, scale, cache in sources for k, wh, ww in terms]
        acc, zero = None, None
        for j, (src, k, wh, ww, cache) in enumerate(parts):
            v = _view(add, src, wh, ww, name, cache)
            alone = len(parts) == 1
            conv = O.Conv2D((wh.stride, ww.stride), ((wh.pad_before, wh.pad_after), (ww.pad_before, ww.pad_after)),
                            (1, 1), op.groups, op.act if alone else O.NO_CLAMP)
            if j == 0:
                b = add(O.Constant(bias), (), f"{name}/bias")
            else:
                if zero is None:
                    zero = add(O.Constant(np.zeros_like(bias)), (), f"{name}/zero_bias")
                b = zero
            t = add(conv, (v, add(O.Constant(k), (), f"{name}/w{j}"), b), f"{name}/term{j}")
            last = j == len(parts) - 1
            acc = t if acc is None else add(O.Binary("add", op.act if last else O.NO_CLAMP), (acc, t), f"{name}/sum{j}")
        return acc
    cache: dict = {}
    if plan.combine == "stack":
        keep = tuple((min(t[a].pad_before for t in terms), min(t[a].pad_after for t in terms)) for a in (1, 2))

        def stack(conv: O.Conv2D, tag: str, src: Node, ws: np.ndarray, b: np.ndarray,
                  channels: tuple[int, int] | None = None) -> Node:
            """One KPU layer over the views of src[channels] (and of its residual, weights / gain)."""
            key = ("stack", channels)
            if key not in cache:  # the views (and residual views) once, whatever reads them
                views = _padded_views(add, src, terms, keep, name, cache, channels)
                if plan.residual:  # residual first: its float temporaries are gone before the stack is built
                    part = cache[("source", *(channels or (0, c)))]  # src[channels], before padding
                    lost = add(KO.QuantResidual(RESIDUAL_GAIN), (part,), f"{name}/residual")
                    views = _padded_views(add, lost, terms, keep, name + "/residual", {}) + views
                    ws = np.concatenate([ws / np.float32(RESIDUAL_GAIN), ws], axis=1)
                cache[key] = (add(O.Concat(1), tuple(views), f"{name}/stack"), add(O.Constant(ws), (), f"{name}/w_stacked"))
            return add(conv, (*cache[key], add(O.Constant(b), (), f"{name}/bias{tag}")), f"{name}/stacked_conv{tag}")

        def layers(act: tuple[float, float], tag: str = "", shift: float = 0.0) -> Node:
            """The stack (in channel groups) computing clamp(y + shift, *act)."""
            conv = O.Conv2D((terms[0][1].stride, terms[0][2].stride), keep, (1, 1), 1, act)
            b = (bias + np.float32(shift)).astype(np.float32)
            if op.groups == 1:
                return stack(conv, tag, x, np.concatenate([k for k, _, _ in terms], axis=1), b)
            outs = []  # depthwise: dense, block-diagonal, one layer per channel group
            for c0 in range(0, c, plan.group or c):
                c1 = min(c, c0 + (plan.group or c))
                outs.append(stack(conv, tag, x, _block_diagonal(terms, c0, c1), b[c0:c1], (c0, c1)))
            return outs[0] if len(outs) == 1 else add(O.Concat(1), tuple(outs), f"{name}/channels{tag}")

        lo, hi = op.act
        if not plan.halves or not lo <= 0.0 <= hi:
            return layers(op.act)
        # clamp(y, lo, hi) = clamp(y, lo, 0) + clamp(y, 0, hi): each half is rounded over its own part
        # of y's range (a KPU layer saturates at its grid's ends), one more bit for a float reader.
        # With a bulk t: clamp(y + t, lo + t, 0) + clamp(y, -t, 0) + clamp(y, 0, t) + clamp(y - t, 0, hi - t),
        # where the two middle parts hold most values on grids of t / 255 (every part's range holds 0).
        t = float(plan.bulk)
        if not (t > 0.0 and lo <= -t and t <= hi):
            parts = [layers((lo, 0.0), "/negative"), layers((0.0, hi), "/positive")]
        else:
            parts = [layers((lo + t, 0.0), "/low_tail", t), layers((-t, 0.0), "/negative"),
                     layers((0.0, t), "/positive"), layers((0.0, hi - t), "/high_tail", -t)]
        total = parts[0]
        for i, part in enumerate(parts[1:]):
            total = add(O.Binary("add"), (total, part), f"{name}/parts{i}")
        return total
    # stack_dw (stride-1 depthwise terms): full windows, "same" 3x3 depthwise over J*C channels and a
    # 1x1 conv summing the J groups; both are trivial KPU layers, one crop at the end.
    stacked = add(O.Concat(1), tuple(_padded_views(add, x, terms, ((0, 0), (0, 0)), name, cache)), f"{name}/stack")
    wd = np.concatenate([k for k, _, _ in terms], axis=0)  # [J*C, 1, 3, 3]
    parts = add(O.Conv2D((1, 1), ((1, 1), (1, 1)), (1, 1), j_count * c),
                (stacked, add(O.Constant(wd), (), f"{name}/w_terms"), add(O.Constant(np.zeros(j_count * c, np.float32)),
                                                                           (), f"{name}/zero_bias")), f"{name}/terms")
    ones = np.tile(np.eye(c, dtype=np.float32), (1, j_count))[:, :, None, None]  # [C, J*C, 1, 1]
    total = add(O.Conv2D(act=op.act), (parts, add(O.Constant(ones), (), f"{name}/w_sum"),
                                       add(O.Constant(bias), (), f"{name}/bias")), f"{name}/sum")
    _, _, h2, w2 = total.shape
    return add(O.StridedSlice((0, 0, 1, 1), (x.shape[0], oc, h2 - 1, w2 - 1), (1, 1, 1, 1)), (total,), f"{name}/crop")


# ----------------------------------------------------------------------------------- cost
def estimate_cycles(g: Graph) -> float:
    """Estimated K210 cycles of a legalized graph, with kcc.latency's costs: KPU layers (with the
    uploads of inputs from the CPU and downloads of outputs read by the CPU), float convs, and the
    CPU data movement and adds around them (float ops dequantize their KPU inputs first)."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    total = 0.0
    for n in g.nodes:
        if isinstance(n.op, KO.KpuConv2D):
            x, w = n.inputs[0], n.inputs[1]
            nb, c, h, wd = x.shape
            lay = kpu_row_layout(wd)
            per_line = n.shape[1] if n.op.depthwise else math.ceil(c / lay.groups) * n.shape[1]
            total += L.KPU_CYCLE_FACTOR * nb * h * lay.row_len * per_line + L.KPU_WEIGHT_CYCLES_PER_BYTE * w.type.size
            total += _KPU_LAYER_CYCLES
            if not isinstance(x.op, KO.KpuConv2D):
                total += L.cpu_cycles("kpu_upload_byte") * x.type.size
            if id(n) in outputs or any(not isinstance(u.op, KO.KpuConv2D) for u in users[n]):
                total += L.cpu_cycles("kpu_download_byte") * n.type.size
        elif isinstance(n.op, O.Conv2D):
            total += L.CPU_NODE_CYCLES + L.cpu_cycles("conv2d_mac") * n.type.size * int(np.prod(n.inputs[1].shape[1:]))
        elif isinstance(n.op, KO.QuantResidual):
            total += 3 * L.CPU_NODE_CYCLES + n.type.size * sum(L.cpu_cycles(k) for k in ("dequantize", "binary", "quantize"))
        elif type(n.op) in _CPU_PER_ELEMENT:
            total += L.CPU_NODE_CYCLES + L.cpu_cycles(_CPU_PER_ELEMENT[type(n.op)]) * n.type.size
            if isinstance(n.op, O.Concat):
                total += L.cpu_cycles("concat_block") * len(n.inputs)
            if isinstance(n.op, (O.Binary, O.Concat)):
                total += sum(L.cpu_cycles("dequantize") * i.type.size for i in n.inputs if isinstance(i.op, KO.KpuConv2D))
    return total


def _alone(n: Node, plan: Plan | None) -> Graph | None:
    """Conv `n` (plan None) or its decomposition as a graph of its own: input -> ... -> output."""
    g = Graph()
    x = g.input(0, n.inputs[0].shape)
    if plan is None:
        y = g.add(n.op, (x, g.constant(n.inputs[1].data), g.constant(n.inputs[2].data)), n.name)
    else:
        y = emit(lambda op, ins, name: g.add(op, ins, name), n, x, plan)
        if y is None:
            return None
    g.outputs = [y]
    return g


def _on_kpu(g: Graph, opts: CompileOptions) -> tuple[bool, float]:
    lg, placements = legalize_kpu(g, opts)
    return bool(placements) and all(p.on_kpu for p in placements), estimate_cycles(lg)


def _stack_groups(c: int, j: int, budget: int) -> list[int]:
    """Channels per layer of each depthwise stack of j terms worth trying (c: one layer), fewest
    layers first: the weights (9*j*g per channel) within `budget` bytes, j*g input channels,
    at most MAX_STACK_GROUPS layers, and then twice, four times... as many layers, since a stack
    whose input fits in KPU RAM only in smaller groups (BlazePalm's 96x96 maps with their residual)
    is worth more layers."""
    g = min(c, MAX_CHANNELS // j, budget // (9 * j * c))
    while g > 0 and weight_loads(g, j * g, 3, False)[1] >= 64:  # load_time is 6 bits
        g -= 1
    out: list[int] = []
    layers = -(-c // g) if g else MAX_STACK_GROUPS + 1
    while layers <= MAX_STACK_GROUPS and (not out or out[-1] > 1):
        size = -(-c // layers)  # the same number of layers, balanced
        if size not in out:
            out.append(size)
        layers *= 2
    return out


def _plans(n: Node, residual: bool = False, halves: bool = False, bulk: float = 0.0) -> list[Plan]:
    """Every candidate: split step, zero placement, and each combiner whose limits it meets; with
    `residual`, also the stacks that stack the input's rounding residual (twice the input channels);
    with `halves`, also every stack computing its output in two halves (four parts with `bulk`)."""
    op: O.Conv2D = n.op
    x, w, _ = n.inputs
    (sh, sw), (kh, kw), c = op.stride, w.shape[2:], x.shape[1]
    depthwise = op.groups > 1
    splits = [(1, 1)] + ([(sh, sw)] if (sh, sw) != (1, 1) else [])
    out = []
    for split in splits:
        for z in itertools.product(range(max_zero_taps(kh, split[0]) + 1), range(max_zero_taps(kw, split[1]) + 1)):
            out.append(Plan(split, z, "sum"))
            if residual:
                out.append(Plan(split, z, "sum", residual=True))
            j = len(axis_terms(kh, sh, 0, split[0], z[0])) * len(axis_terms(kw, sw, 0, split[1], z[1]))
            if j == 1:
                continue
            for views, extra in ((j, False), (2 * j, True)) if residual else ((j, False),):
                if not depthwise:
                    if views * c <= MAX_CHANNELS and weight_loads(w.shape[0], views * c, 3, False)[1] < 64:
                        out += [Plan(split, z, "stack", residual=extra, halves=h, bulk=bulk if h else 0.0)
                                for h in sorted({False, halves})]
                    continue
                groups = _stack_groups(c, views, STACK_WEIGHT_BUDGET) or _stack_groups(c, views, MAX_STACK_WEIGHT)
                out += [Plan(split, z, "stack", 0 if g == c else g, extra, h, bulk if h else 0.0)
                        for h in sorted({False, halves}) for g in groups]
            if not depthwise:
                continue
            if split == (sh, sw) and j * c <= MAX_CHANNELS and j * c * c + 9 * j * c <= STACK_WEIGHT_BUDGET:
                out.append(Plan(split, z, "stack_dw"))
    return out


@dataclass(frozen=True)
class Decision:
    node: str
    plan: Plan | None  # None: the conv stays as it is
    cycles: float  # estimate of the chosen form
    cpu_cycles: float  # estimate of the conv left on the CPU
    reason: str


def extra_roundings(n: Node, plan: Plan, float_input: bool, read_in_float: bool = False) -> int:
    """Roundings a decomposition of conv `n` adds to those of the float conv on the CPU, which reads
    its (8-bit or float) input as it is: one for the partial sums of a multi-term `sum` / `stack_dw`
    (each is rounded to 8 bits over its own, unclamped range), one for a float input read without
    its residual, one for an output read in float (`_read_in_float`) not computed in parts
    (`Plan.halves`). An output a KPU layer reads is rounded to 8 bits either way."""
    partial = plan.combine != "stack" and len(_terms(n, plan) or ()) > 1
    return int(partial) + int(float_input and not plan.residual) + int(read_in_float and not plan.halves)


def choose(n: Node, opts: CompileOptions = CompileOptions(), residual: bool = True, halves: bool = False,
           bulk: float = 0.0) -> Decision:
    """How to put conv `n` on the KPU if legalize_kpu would not take it as it is: among the
    decompositions that legalize wholly onto the KPU and are estimated faster than the float conv on
    the CPU, the fastest that adds no rounding (`extra_roundings`; --decompose accurate) or the
    fastest of all (--decompose fast). A float input (`_cpu_float`) may be read with its rounding
    residual (`residual` allows that); `halves` computes a stack's output in two halves (four parts
    with a `bulk` threshold)."""
    op: O.Conv2D = n.op
    x, w, b = n.inputs
    if not (w.is_constant and b.is_constant):
        return Decision(n.name, None, 0.0, 0.0, "weights are not constant")
    if op.dilation != (1, 1):
        return Decision(n.name, None, 0.0, 0.0, f"dilation {op.dilation}")
    c, oc = x.shape[1], w.shape[0]
    if op.groups not in (1, c) or (op.groups == c > 1 and oc != c):
        return Decision(n.name, None, 0.0, 0.0, f"groups {op.groups} (KPU: 1 or depthwise)")
    fits, cpu = _on_kpu(_alone(n, None), opts)
    if fits:
        return Decision(n.name, None, cpu, cpu, "on the KPU as it is")
    if opts.decompose == "off":
        return Decision(n.name, None, cpu, cpu, "--decompose off")
    float_input = residual and _cpu_float(x)
    forms: list[tuple[int, float, Plan]] = []  # (extra roundings, cycles, plan) of what lands on the KPU
    landed = set()  # stacks that fit in some channel grouping: smaller groups only add layers
    for plan in _plans(n, float_input, halves, bulk):
        form = (plan.split, plan.z, plan.combine, plan.residual, plan.halves)
        if form in landed:
            continue
        alone = _alone(n, plan)
        if alone is None:
            continue
        fits, cycles = _on_kpu(alone, opts)
        if fits:
            landed.add(form)
            forms.append((extra_roundings(n, plan, float_input, halves), cycles, plan))
    ms = L.DEFAULT_MHZ * 1e3
    if not forms:
        return Decision(n.name, None, cpu, cpu, NO_FORM)
    fastest = min(forms, key=lambda f: f[1])
    if fastest[1] >= cpu:
        return Decision(n.name, None, cpu, cpu, f"every KPU form is estimated slower (fastest: {fastest[2].describe()}, "
                                                f"~{fastest[1] / ms:.1f} ms vs ~{cpu / ms:.1f} ms on the CPU)")
    if opts.decompose == "fast":
        return Decision(n.name, fastest[2], fastest[1], cpu, "decomposed")
    exact = [f for f in forms if f[0] == 0 and f[1] < cpu]
    if not exact:
        return Decision(n.name, None, cpu, cpu, f"every KPU form rounds more than the CPU conv (fastest: "
                                                f"{fastest[2].describe()}, ~{fastest[1] / ms:.1f} ms vs ~{cpu / ms:.1f} ms "
                                                f"on the CPU; --decompose fast takes it)")
    best = min(exact, key=lambda f: f[1])
    return Decision(n.name, best[2], best[1], cpu, "decomposed")


def _read_in_float(n: Node, users: dict, outputs: set[int]) -> bool:
    """Conv n has no clamp and every reader of its output is a float op of the CPU (a PReLU, an
    element-wise op) or the model's output: there the float conv's output is never rounded, while a
    KPU layer's is, to 8 bits over its whole range. BlazePalm's stem (pre-PReLU, [-6.8, 7.1])."""
    readers = users.get(n, [])
    return (n.op.act == O.NO_CLAMP and (bool(readers) or id(n) in outputs)
            and all(isinstance(u.op, (O.PRelu, O.Binary)) for u in readers))


#: calibration samples the output statistics of a stack read in float come from
BULK_SAMPLES = 8


def float_read_convs(g: Graph) -> list[Node]:
    """Convs whose output, if a decomposition puts them on the KPU, is read in float (`_read_in_float`)."""
    users, outputs = g.users(), {id(o) for o in g.outputs}
    return [n for n in g.nodes if isinstance(n.op, O.Conv2D) and _read_in_float(n, users, outputs)]


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


def bulk_thresholds(g: Graph, samples: list) -> dict[str, float]:
    """`bulk_threshold` of every conv of `float_read_convs(g)`, from one float pass over `samples`."""
    from kcc.eval.interpreter import run

    convs = {id(n): n.name for n in float_read_convs(g)}
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


def rewrite(g: Graph, n: Node, plan: Plan, note: str = "") -> Node | None:
    """Replace conv `n` of `g` by its decomposition under `plan`; the new output node takes n's name."""
    new = emit(lambda op, ins, name: g.insert_before(n, op, ins, name), n, n.inputs[0], plan)
    if new is None:
        return None
    new.note = note
    g.substitute(n, new, "/decomposed")
    return new


def decompose_kernels(g: Graph, opts: CompileOptions = CompileOptions(), decisions: list | None = None,
                      residual: bool = True, bulk: dict[str, float] | None = None) -> Graph:
    """Rewrite every Conv2D that legalize_kpu would leave on the CPU and that some decomposition
    puts on the KPU. `decisions`, if given, receives one `Decision` per conv legalize_kpu would
    leave on the CPU: its plan, or None and why. `residual` False keeps every stacked input on 8 bits
    and every output one rounding (a pre-quantized model computed as TFLite does); True lets a float
    input carry its rounding residual and a stack read in float on the CPU (`_read_in_float`) compute
    its output in two halves, or in four parts with the conv's threshold in `bulk` (`bulk_thresholds`)."""
    if opts.target == "cpu" or opts.decompose == "off":
        return g
    users, outputs = g.users(), {id(o) for o in g.outputs}
    for n in list(g.nodes):
        if not isinstance(n.op, O.Conv2D):
            continue
        d = choose(n, opts, residual, residual and _read_in_float(n, users, outputs), (bulk or {}).get(n.name, 0.0))
        if d.plan is None:
            if decisions is not None and d.reason != "on the KPU as it is":
                decisions.append(d)
            continue
        kh, kw = n.inputs[1].shape[2:]
        ms = L.DEFAULT_MHZ * 1e3
        rewrite(g, n, d.plan, f"{kh}x{kw}{' depthwise' if n.op.groups > 1 else ''} s{n.op.stride[0]} as "
                              f"{d.plan.describe()}: ~{d.cycles / ms:.2f} ms vs ~{d.cpu_cycles / ms:.2f} ms on the CPU "
                              f"(estimates)")
        if decisions is not None:
            decisions.append(d)
    g.remove_dead()
    return g
