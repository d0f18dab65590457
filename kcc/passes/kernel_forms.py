"""kernel_forms: the forms of a conv the KPU lacks, as 3x3 KPU convolutions of views of its input.

A `Form` names one form: how the kernel is split into 3x3 terms (kcc.passes.kernel_terms: which taps
each term takes, which view of the input it reads) and how the terms are combined; `emit` builds it
as IR. Which form a conv gets, if any, is kcc.passes.decompose_kernels' choice.

## Combining the terms (sketch for a 5x5 depthwise, stride 1, "same": J = 4 terms)

    before:   x -> conv5x5(w, b, act) -> y                          (CPU, float: 25 MACs per output)

    sum:      x -> [crop] -> conv3x3(w_0, b) -+
              x -> [crop] -> conv3x3(w_1, 0) -+-> add -> add -> add(act) -> y
              ...                               (J KPU layers, J-1 float adds on the CPU)
    stack:    pad(x) -> slice_j -> concat(channels) -> conv3x3([w_0 | w_1 | ...], b, act) -> y
                                                (one KPU layer over J*C input channels)
    stack_dw: pad(x) -> slice_j -> concat -> dwconv3x3(J*C, "same") -> conv1x1([I I I I], b, act) -> crop
                                                (stride 1 only; two KPU layers, nothing between them)
    stack_kpu: x -> shift_(cy,cx) (9 depthwise 3x3 KPU layers, cy, cx in {-1, 0, 1}) -> concat in KPU RAM
                 -> conv3x3([w_0 | ... | w_8], b, act) -> y
                                                (stride 1, "same"; no CPU pad, slice or stacked upload)
    fan_kpu:  x[group] -> fan (one 3x3 KPU layer, g -> 9g channels: the nine shifts of stack_kpu)
                 -> conv3x3([w_0 | ... | w_8], b, act) -> y          (stride 1, "same"; 2 KPU layers a group)
    copies_kpu: x -> shift_(cy,cx) -> [shift_(ey,ex)] (25 copies x(. + (dy, dx)), dy, dx in -2..2, each one
                 or two unit-shift KPU layers) -> concat in KPU RAM -> conv1x1([w_(-2,-2) | ... | w_(2,2)], b, act) -> y
                                                (stride 1, "same"; 25*g*g combine weights a group, not 81*g*g)
    phases_kpu: x -> phase_(a,b) (depthwise 3x3 KPU layers, stride 2 by the `left_top_2_s2` pick: x[2i+a, 2j+b])
                 -> concat in KPU RAM -> conv3x3([w_00 | w_01 | w_10 | w_11], b, act) at stride 1 -> y
                                                (stride 2; the `stack` of the input's stride phases, no CPU
                                                pad, slice or stacked upload)

`sum` keeps the weights as they are. The partial sums are not clamped: the bias rides on the first
term (the KPU adds it for free) and the fused clamp on the last add. `stack` rounds once, at the
conv's own output range; a depthwise kernel becomes a dense block-diagonal one (output channel o
reads channel o of every view), 9*J*C*C weight bytes, so wide depthwise convs are stacked in
channel groups, one KPU layer and 9*J*g*C bytes per group of g (the group outputs are concatenated).
`stack_kpu` is `stack` with its views made by the KPU: a 3x3 depthwise layer whose one tap of 1
sits at (1 + cy, 1 + cx) copies x shifted by (cy, cx) onto x's own grid (kcc.quant.policy.copy_grids:
exact, the border its pad value, real 0), each copy writing its channel range of one KPU RAM buffer
(kcc.ir.kpu_ops.KpuConcat). A copy the size of x loses a row and a column, so each takes only the
taps nothing else reaches (kernel_terms.shift_terms): nine terms for a 5x5, the centre one x itself.
x is uploaded once (with the residual, x and its residual: the residual's codes hold gain times the
residual on x's grid), or read where a KPU layer left it.
`fan_kpu` makes a group's nine copies with one layer instead of nine: a 3x3 layer (not depthwise) from
the group's g channels to 9g, output channel j*g + i one tap of 1 at (1 + cy_j, 1 + cx_j) of input
channel i (kcc.ir.code_moves.fan_copy; on x's grid, exact like the depthwise copies). Its output is the
stack itself: 2 KPU layers a group instead of 10, 81*g*g weight bytes for the copies instead of nine
layers' 9*g, so the most groups for the fewest kmodel bytes (~768 B a layer): wide 5x5 depthwise
convs in groups of the channels one 64-byte line holds, each read in place in x's KPU RAM
(kcc.ir.kpu_ops.KpuChannelView) and writing its output's channel range in place (KpuConcat).
Every group's fan has the same weights, the same layer on any grid of one zero point (its pad value):
where x is a float of the CPU and one zero point widens its groups' steps at most 4x in mean square
(decompose_kernels.BATCH_STEP_GROWTH), the groups, each on its own scale, are the batches of ONE fan
(`_batched_fan`, kcc.ir.kpu_ops.KpuBatchStack; group j reads batch j in place; measurements §29).
`copies_kpu` shifts each copy by a tap's whole offset (kernel_terms.copy_offsets), so the combine is a
1x1 layer: 25 weight bytes per (output, input) channel pair of a group instead of `stack_kpu`'s 81, for
25 + 1 KPU layers a group instead of 9 + 1. A copy by (2, 1) is the unit copy (1, 1) shifted by (1, 0)
(kernel_terms.unit_steps), exact at the border too (the KPU pads with the copy's zero point, real 0),
and that unit copy is itself a part of the stack: the layer making the second copy reads it in place
in the concatenation's buffer. Every copy is on x's grid; only the combine rounds, once.
`phases_kpu` is the polyphase `stack` (split (2, 2)) with its phases made by the KPU: a 3x3 depthwise
layer whose one tap of 1 sits at (1 + a, 1 + b), padding 1, picked by the pool's `left_top_2_s2`, is
P[i, j] = x[2i + a, 2j + b] (0 outside x), size // 2 by size // 2, on x's grid like a shifted copy
(row_pick's pick layer is one). The stacked 3x3 layer reads the phases at stride 1 with the KPU's own
padding, which is exact where x is 0 too (kernel_terms.phase_terms: TFLite SAME on even sizes, phases
a, b in {0, 1}; an odd size only where no output reads a phase's missing last row).
`stack_dw` needs only J*C*C bytes for the 1x1 sum; like `sum` it rounds every unclamped partial
sum to 8 bits. After a clamp (relu6) that costs accuracy: the partial sums span a wider range than
the clamped output, so their 8-bit grid is coarser (measured: docs/measurements.md §2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Node
from kcc.kmodel import kpu_row_layout
from kcc.passes.kernel_terms import Window, conv_terms, copy_offsets, phase_terms, shift_terms, unit_steps

#: a `stack` reading a float tensor of the CPU also stacks gain * its rounding residual, with the
#: weights divided by gain (kcc.ir.kpu_ops.QuantResidual): residual codes span z +- gain/2. Per tap
#: the error left is ~ w/gain (x's rounding, w in weight steps) plus ~ gain/sqrt(12) (the residual
#: weights' own rounding): smallest near gain ~ 2 * sqrt(w), and for equalized weights of 20-100
#: steps 16 leaves 1/30-1/60 of the rounding noise of x.
RESIDUAL_GAIN = 16.0

Add = Callable[[O.Op, tuple, str], Node]


@dataclass(frozen=True)
class Form:
    """One way to decompose a conv: split steps, zero placement, combiner, and for a depthwise
    `stack` the channels per group (0: all channels in one layer)."""

    split: tuple[int, int]
    z: tuple[int, int]
    combine: str  # "sum" | "stack" | "stack_dw" | "stack_kpu" | "fan_kpu" | "copies_kpu" | "phases_kpu"
    group: int = 0
    residual: bool = False  # a `stack` that also stacks x's rounding residual (RESIDUAL_GAIN)
    halves: bool = False  # a `stack` computed twice, clamped to y <= 0 and y >= 0, and added on the CPU
    bulk: float = 0.0  # with halves: four parts instead, y in [-bulk, bulk] on two fine grids (`bulk_thresholds`)

    def describe(self) -> str:
        """The form in words, for placement reasons and IR notes (the split and the combiner; the
        zero placement `z` is an internal choice)."""
        terms = "3x3 terms of the input's stride phases" if self.split != (1, 1) else "3x3 terms"
        layer = f"one KPU layer per group of {self.group} channels" if self.group else "one KPU layer"
        how = {"sum": f"{terms}, one KPU layer each, added on the CPU",
               "stack": f"{terms} stacked into {layer}",
               "stack_dw": f"{terms} stacked into a depthwise KPU layer, summed by a 1x1 one",
               "stack_kpu": f"3x3 terms of shifted copies made by KPU layers in KPU RAM, stacked into {layer}",
               "fan_kpu": f"3x3 terms of shifted copies made by one KPU layer a group in KPU RAM, stacked into "
                          f"{layer}",
               "copies_kpu": f"copies shifted by each tap's offset, made by KPU layers in KPU RAM, combined by "
                             f"{layer.replace('KPU layer', '1x1 KPU layer', 1)}",
               "phases_kpu": f"3x3 terms of the input's stride phases picked by KPU layers in KPU RAM, stacked into {layer}",
               }[self.combine]
        extra = f" with the input's rounding residual (x{RESIDUAL_GAIN:g})" if self.residual else ""
        halves = ""
        if self.halves:
            halves = (f", its output in four parts (fine for |y| <= {self.bulk:.3g})" if self.bulk
                      else ", its output in two halves (y <= 0, y >= 0)")
        return f"{how}{extra}{halves}"


def plan_terms(n: Node, plan: Form) -> list[tuple[np.ndarray, Window | None, Window | None]] | None:
    """(3x3 kernel, H window, W window) of every term of conv n under `plan` that reads any input; a
    `stack_kpu` term reads a shifted copy of the whole input instead (windows None, `shift_plan`), a
    `copies_kpu` term (a 1x1 kernel) a copy shifted by its tap's offset (`copy_plan`)."""
    op: O.Conv2D = n.op
    x, w, _ = n.inputs
    if plan.combine == "fan_kpu" or plan.combine in KPU_MADE:
        shifted = shift_plan(n) if plan.combine == "fan_kpu" else KPU_MADE[plan.combine](n)
        return None if shifted is None else [(k, None, None) for k, _ in shifted]
    return conv_terms(w.data, op.stride, op.padding, x.shape[2:], n.shape[2:], plan.split, plan.z)


def shift_plan(n: Node) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """The terms of conv n as 3x3 convs of shifted copies of its input (kernel_terms.shift_terms)."""
    op: O.Conv2D = n.op
    x, w, _ = n.inputs
    return shift_terms(w.data, op.stride, op.padding, x.shape[2:], n.shape[2:])


def copy_plan(n: Node) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """The taps of conv n as 1x1 convs of copies of its input shifted by their offsets
    (kernel_terms.copy_offsets)."""
    op: O.Conv2D = n.op
    x, w, _ = n.inputs
    return copy_offsets(w.data, op.stride, op.padding, x.shape[2:], n.shape[2:])


def phase_plan(n: Node) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """The terms of stride-2 conv n as 3x3 convs of its input's stride phases (kernel_terms.phase_terms)."""
    op: O.Conv2D = n.op
    x, w, _ = n.inputs
    return phase_terms(w.data, op.stride, op.padding, x.shape[2:], n.shape[2:])


#: the forms whose views KPU layers make in KPU RAM: combine -> the plan of their terms
KPU_MADE = {"stack_kpu": shift_plan, "copies_kpu": copy_plan, "phases_kpu": phase_plan}


def shift_weights(c: int, shift: tuple[int, int]) -> np.ndarray:
    """[c, 1, 3, 3] depthwise weights of the KPU layer copying its input shifted by `shift` = (cy, cx):
    out[i, j] = x[i + cy, j + cx] (the layer's zero padding outside x), one tap of exactly 1."""
    k = np.zeros((c, 1, 3, 3), np.float32)
    k[:, 0, 1 + shift[0], 1 + shift[1]] = 1.0
    return k


def _group_source(add: Add, x: Node, name: str, cache: dict,
                  channels: tuple[int, int] | None) -> tuple[int, int, Node]:
    """(c0, c1, x[:, c0:c1]): the channel group a form's copies read, sliced once per group (a view in
    KPU RAM when x is a KPU layer's output, kcc.ir.kpu_ops.KpuChannelView), whatever reads it."""
    nb, c, *size = x.shape
    c0, c1 = channels or (0, c)
    if ("source", c0, c1) not in cache:
        src = x
        if (c0, c1) != (0, c):
            src = add(O.StridedSlice((0, c0, 0, 0), (nb, c1, *size), (1, 1, 1, 1)), (x,), f"{name}/channels")
        cache[("source", c0, c1)] = src
    return c0, c1, cache[("source", c0, c1)]


def _shifted_copies(add: Add, x: Node, shifts: list[tuple[int, int]], name: str, cache: dict,
                    channels: tuple[int, int] | None = None) -> list[Node]:
    """The stack_kpu views: one depthwise 3x3 KPU layer per shift copying x[channels] (sliced off x
    first, as `_padded_views` does), all on x's grid (kcc.quant.policy.copy_grids), so that their
    outputs are concatenated in place in KPU RAM (kcc.ir.kpu_ops.KpuConcat)."""
    c0, c1, src = _group_source(add, x, name, cache, channels)
    zero = add(O.Constant(np.zeros(c1 - c0, np.float32)), (), f"{name}/zero_bias")
    views = []
    for cy, cx in shifts:
        w = add(O.Constant(shift_weights(c1 - c0, (cy, cx))), (), f"{name}/w_shift")
        views.append(add(O.Conv2D((1, 1), ((1, 1), (1, 1)), (1, 1), c1 - c0), (src, w, zero),
                         f"{name}/shift{'m' if cy < 0 else 'p' if cy else '0'}{'m' if cx < 0 else 'p' if cx else '0'}"))
    return views


def fan_weights(g: int, shifts: list[tuple[int, int]]) -> np.ndarray:
    """[J*g, g, 3, 3] weights of the `fan_kpu` layer making the J copies of g channels: output channel
    j*g + i is input channel i shifted by shifts[j] = (cy, cx), one tap of exactly 1 at (1 + cy, 1 + cx)."""
    k = np.zeros((len(shifts) * g, g, 3, 3), np.float32)
    for j, (cy, cx) in enumerate(shifts):
        k[j * g + np.arange(g), np.arange(g), 1 + cy, 1 + cx] = 1.0
    return k


def _fanned_copies(add: Add, x: Node, shifts: list[tuple[int, int]], name: str, cache: dict,
                   channels: tuple[int, int] | None = None) -> list[Node]:
    """The fan_kpu view: one 3x3 KPU layer (not depthwise) making every shifted copy of x[channels]
    (sliced off x first, as `_shifted_copies` does), copy j in channels j*g..(j+1)*g of its output,
    on x's grid (kcc.quant.policy.copy_grids): the stack, with no concatenation."""
    c0, c1, src = _group_source(add, x, name, cache, channels)
    g = c1 - c0
    zero = add(O.Constant(np.zeros(len(shifts) * g, np.float32)), (), f"{name}/zero_bias")
    w = add(O.Constant(fan_weights(g, shifts)), (), f"{name}/w_fan")
    return [add(O.Conv2D((1, 1), ((1, 1), (1, 1)), (1, 1), 1), (src, w, zero), f"{name}/fan")]


def batchable_fan(x: Node, g: int, shifts: list[tuple[int, int]]) -> bool:
    """x's channel groups of g can be the batches of one fan layer (kcc.ir.kpu_ops.KpuBatchStack): more
    than one group, all of g channels, and g and the fan's J*g output channels whole 64-byte line
    groups of KPU RAM at x's width, so that the batches lie as one batch-1 map's channel groups do."""
    nb, c, h, w = x.shape
    groups = kpu_row_layout(w).groups
    return nb == 1 and g > 0 and c % g == 0 and c // g > 1 and g % groups == 0 and len(shifts) * g % groups == 0


def _batched_fan(add: Add, x: Node, shifts: list[tuple[int, int]], name: str, cache: dict,
                 channels: tuple[int, int], g: int) -> list[Node]:
    """The fan_kpu view of group x[channels] when every group of x shares one fan layer: the groups
    are the batches of one map (a KpuBatchStack, each group on its own grid, all with one zero
    point), one 3x3 KPU layer of G batches makes every group's copies, and group j reads batch j,
    a channel range of the fan's output read as one batch-1 map (in place in KPU RAM)."""
    _, c, h, w = x.shape
    m = len(shifts) * g
    if ("batched_fan",) not in cache:
        sources = [_group_source(add, x, name, cache, (k, k + g))[2] for k in range(0, c, g)]
        groups = add(KO.KpuBatchStack(), tuple(sources), f"{name}/groups")
        zero = add(O.Constant(np.zeros(m, np.float32)), (), f"{name}/zero_bias")
        w_fan = add(O.Constant(fan_weights(g, shifts)), (), f"{name}/w_fan")
        fan = add(O.Conv2D((1, 1), ((1, 1), (1, 1)), (1, 1), 1), (groups, w_fan, zero), f"{name}/fan")
        cache[("batched_fan",)] = add(O.Reshape((1, len(sources) * m, h, w)), (fan,), f"{name}/fan_batches")
    j = channels[0] // g
    if ("fan_batch", j) not in cache:
        cache[("fan_batch", j)] = add(O.StridedSlice((0, j * m, 0, 0), (1, (j + 1) * m, h, w), (1, 1, 1, 1)),
                                      (cache[("batched_fan",)],), f"{name}/fan{j}")
    return [cache[("fan_batch", j)]]


def _chained_copies(add: Add, x: Node, offsets: list[tuple[int, int]], name: str, cache: dict,
                    channels: tuple[int, int] | None = None) -> list[Node]:
    """The copies_kpu views: x[channels] (sliced off x first, as `_shifted_copies` does) shifted by each
    offset, a unit offset by one depthwise 3x3 KPU layer, a larger one by a second unit shift of the
    unit copy its first step makes (kernel_terms.unit_steps), which is one of the views too. All are on
    x's grid (kcc.quant.policy.copy_grids), concatenated in place in KPU RAM."""
    c0, c1, src = _group_source(add, x, name, cache, channels)
    zero = add(O.Constant(np.zeros(c1 - c0, np.float32)), (), f"{name}/zero_bias")
    made: dict[tuple[int, int], Node] = {}

    def tag(d: int) -> str:
        return {-2: "mm", -1: "m", 0: "0", 1: "p", 2: "pp"}[d]

    def copy(offset: tuple[int, int]) -> Node:
        if offset not in made:
            first, second = unit_steps(offset)
            base, step = (src, first) if second == (0, 0) else (copy(first), second)
            w = add(O.Constant(shift_weights(c1 - c0, step)), (), f"{name}/w_shift")
            made[offset] = add(O.Conv2D((1, 1), ((1, 1), (1, 1)), (1, 1), c1 - c0), (base, w, zero),
                               f"{name}/copy{tag(offset[0])}_{tag(offset[1])}")
        return made[offset]

    for offset in sorted(offsets, key=lambda o: max(abs(o[0]), abs(o[1]))):  # unit copies first
        copy(offset)
    return [made[o] for o in offsets]


def _phase_copies(add: Add, x: Node, phases: list[tuple[int, int]], name: str, cache: dict,
                  channels: tuple[int, int] | None = None) -> list[Node]:
    """The phases_kpu views: per phase (a, b), one depthwise 3x3 KPU layer at stride 2 copying
    x[channels] (sliced off x first, as `_shifted_copies` does) with its one tap of 1 at (1 + a, 1 + b):
    P[i, j] = x[2i + a, 2j + b] (0 outside x). Padding 1 before and 1 after on an even size, none after
    on an odd one: size // 2 outputs, which legalize_kpu makes with the pool's `left_top_2_s2` pick and
    no CPU pad or slice. On x's grid (kcc.quant.policy.copy_grids: the pick keeps values), concatenated
    in place in KPU RAM."""
    c0, c1, src = _group_source(add, x, name, cache, channels)
    zero = add(O.Constant(np.zeros(c1 - c0, np.float32)), (), f"{name}/zero_bias")
    h, w = x.shape[2:]
    padding = ((1, 1 - h % 2), (1, 1 - w % 2))
    tag = {-1: "m", 0: "0", 1: "p"}
    views = []
    for a, b in phases:
        wc = add(O.Constant(shift_weights(c1 - c0, (a, b))), (), f"{name}/w_phase")
        views.append(add(O.Conv2D((2, 2), padding, (1, 1), c1 - c0), (src, wc, zero), f"{name}/phase{tag[a]}{tag[b]}"))
    return views


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
    """Dense [g, J*g, k, k] weights (k: the terms' kernel, 3 or 1) of a depthwise stack over channels
    c0..c1: output channel o reads channel o of every term's view."""
    g, j_count = c1 - c0, len(terms)
    ws = np.zeros((g, j_count * g, *terms[0][0].shape[2:]), np.float32)
    for j, (k, _, _) in enumerate(terms):
        ws[np.arange(g), j * g + np.arange(g)] = k[c0:c1, 0]
    return ws


def emit(add: Add, n: Node, x: Node, plan: Form, batch: bool = False) -> Node | None:
    """Build the decomposition of conv `n` (reading `x`) with `add`; returns the node computing n.
    `batch`: a `fan_kpu` form's groups share one fan layer where they can (`batchable_fan`); x must
    then be a tensor the CPU computes (its groups are uploaded), not a KPU layer's output."""
    op: O.Conv2D = n.op
    _, _, bn = n.inputs
    terms = plan_terms(n, plan)
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
    if plan.combine in ("stack", "fan_kpu", *KPU_MADE):
        shifts = [s for _, s in shift_plan(n)] if plan.combine in ("stack_kpu", "fan_kpu") else None
        batched = (batch and plan.combine == "fan_kpu" and not plan.residual and op.groups > 1
                   and batchable_fan(x, plan.group, shifts))
        offsets = [s for _, s in copy_plan(n)] if plan.combine == "copies_kpu" else None
        phases = [s for _, s in phase_plan(n)] if plan.combine == "phases_kpu" else None
        if offsets is not None:  # 1x1 convs of the copies
            keep, stride = ((0, 0), (0, 0)), (1, 1)
        elif shifts is None and phases is None:
            keep = tuple((min(t[a].pad_before for t in terms), min(t[a].pad_after for t in terms)) for a in (1, 2))
            stride = (terms[0][1].stride, terms[0][2].stride)
        else:  # "same" 3x3 convs of the copies (on x's own grid) or of the phases (on the output's)
            keep, stride = ((1, 1), (1, 1)), (1, 1)

        def views_of(src: Node, tag: str, channels: tuple[int, int] | None, own: dict) -> list[Node]:
            if offsets is not None:
                return _chained_copies(add, src, offsets, tag, own, channels)
            if batched and channels is not None:
                return _batched_fan(add, src, shifts, tag, own, channels, plan.group)
            if plan.combine == "fan_kpu":
                return _fanned_copies(add, src, shifts, tag, own, channels)
            if shifts is not None:
                return _shifted_copies(add, src, shifts, tag, own, channels)
            if phases is not None:
                return _phase_copies(add, src, phases, tag, own, channels)
            return _padded_views(add, src, terms, keep, tag, own, channels)

        def stack(conv: O.Conv2D, tag: str, src: Node, ws: np.ndarray, b: np.ndarray,
                  channels: tuple[int, int] | None = None) -> Node:
            """One KPU layer over the views of src[channels] (and of its residual, weights / gain)."""
            key = ("stack", channels)
            if key not in cache:  # the views (and residual views) once, whatever reads them
                views = views_of(src, name, channels, cache)
                if plan.residual:  # residual first: its float temporaries are gone before the stack is built
                    part = cache[("source", *(channels or (0, c)))]  # src[channels], before padding
                    lost = add(KO.QuantResidual(RESIDUAL_GAIN), (part,), f"{name}/residual")
                    views = views_of(lost, name + "/residual", None, {}) + views
                    ws = np.concatenate([ws / np.float32(RESIDUAL_GAIN), ws], axis=1)
                stacked = views[0] if len(views) == 1 else add(O.Concat(1), tuple(views), f"{name}/stack")
                cache[key] = (stacked, add(O.Constant(ws), (), f"{name}/w_stacked"))
            return add(conv, (*cache[key], add(O.Constant(b), (), f"{name}/bias{tag}")), f"{name}/stacked_conv{tag}")

        def layers(act: tuple[float, float], tag: str = "", shift: float = 0.0) -> Node:
            """The stack (in channel groups) computing clamp(y + shift, *act)."""
            conv = O.Conv2D(stride, keep, (1, 1), 1, act)
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
            parts = [((lo, 0.0), "/negative", 0.0), ((0.0, hi), "/positive", 0.0)]
        else:
            parts = [((lo + t, 0.0), "/low_tail", t), ((-t, 0.0), "/negative", 0.0),
                     ((0.0, t), "/positive", 0.0), ((0.0, hi - t), "/high_tail", -t)]
        # each part is added as soon as it is computed: the graph order is the kmodel's, and a part
        # computed early keeps its output (the map, in 8 bits) alive until its add. BlazePalm
        # (its stem): working memory 2873296 B instead of 3244032 B with all four layers first (docs/kpu.md).
        total = layers(*parts[0])
        for i, part in enumerate(parts[1:]):
            total = add(O.Binary("add"), (total, layers(*part)), f"{name}/parts{i}")
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


def fc_as_conv(w: np.ndarray) -> tuple[np.ndarray, int]:
    """Fully-connected weights w [K, OC] as conv weights (OIHW) and their kernel size k (3):
    [OC, ceil(K/9), 3, 3], input i at channel i // 9, row i % 9 // 3, column i % 3 (zero weights pad
    K to a multiple of 9): the bytes of the input vector read as a [K/9, 3, 3] map, which one 3x3
    window covers whole, so every product is summed in one accumulation, as a 1x1 layer over [K, 1, 1]
    sums them. Beyond the KPU's 1024 channels (MobileNetV2's 1280-input classifier) no 1x1 layer
    reads them all; below, the 1x1 layer pays nine times the KPU cycles (one per input line group
    and output channel: a ninth of the input channels here) and nine times the CPU's pad to the KPU's
    4x4 map (16 bytes a channel): mobilenet_v1_0.75_192's 768-input classifier 769k -> 88k cycles."""
    k_in, oc = w.shape
    c9 = -(-k_in // 9)
    wp = np.zeros((9 * c9, oc), w.dtype)
    wp[:k_in] = w
    return np.ascontiguousarray(wp.T.reshape(oc, c9, 3, 3)), 3
