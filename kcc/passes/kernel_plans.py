"""kernel_plans: the candidate forms of a conv the KPU lacks, within the KPU's limits and the byte caps.

kcc.passes.decompose_kernels chooses among the `plans` of a conv (its docstring: "Choosing"); this
module says which forms a conv can take at all: every split, zero placement and combiner of
kcc.passes.kernel_forms whose layers stay within the KPU's channels, weight loads and RAM, and whose
weights and layers within the kmodel bytes a stack may create (STACK_WEIGHT_BUDGET, MAX_STACK_WEIGHT;
a stack made in KPU RAM within `cap`, STACK_KPU_BYTES unless decompose_kernels' model allowance gives
more), with the groupings worth trying (`_stack_groups`, FAN_KPU_LINES) and each one's bytes
(`plan_bytes`), which the allowance is counted in.
"""

from __future__ import annotations

import itertools

from kcc.ir import ops as O
from kcc.ir.graph import Node
from kcc.options import CompileOptions
from kcc.passes.kernel_cost import kpu_as_is
from kcc.passes.kernel_forms import KPU_MADE, Form, shift_plan
from kcc.passes.kernel_terms import axis_terms, max_zero_taps
from kcc.target.k210 import (
    KPU_LAYER_BYTES,
    KPU_RAM_SIZE,
    MAX_CHANNELS,
    MAX_WEIGHT_LOADS,
    kpu_bytes,
    kpu_row_layout,
    weight_loads,
)

#: most weight bytes a depthwise `stack` / `stack_dw` may create per conv (the 5x5 itself has 25*C):
#: the memory spent on accuracy. 64 KiB stacks every depthwise of up to ~150 channels (BlazePalm's
#: 32..128, BlazeHand's 96 and 144: the early, large maps, where rounding matters most).
STACK_WEIGHT_BUDGET = 64 * 1024
#: a stack no grouping fits in STACK_WEIGHT_BUDGET may take this much: BlazeHand's 288- and
#: 384-channel 5x5s (122 KiB each), which without a stack stay on the CPU (a sum would round its
#: unclamped partial sums over [-17, 23] against the relu6 output's [0, 6]).
#: Its 672-channel ones would need 340 KiB each.
MAX_STACK_WEIGHT = 128 * 1024
#: most KPU layers (channel groups) a depthwise `stack` may take: each costs ~25 us and a few CPU
#: copies, against ~100+ ms for a wide 5x5 depthwise on the CPU
MAX_STACK_GROUPS = 48

#: most kmodel bytes a depthwise `stack_kpu` may take (its layers and weights): a group of g channels
#: is views + 1 KPU layers (BlazePalm's 32-channel 96x96 5x5s with the residual: 6 groups of 19,
#: ~118 KiB), and thousands of copy layers would outweigh the model (BlazePalm's 128-channel 24x24
#: ones in groups of 4: 608 layers, ~540 KiB each)
STACK_KPU_BYTES = 128 * 1024
#: most channels a `copies_kpu` group takes (its 1x1 combine reads 25 times as many). Measured, not
#: understood: BlazeHand's 288-channel 14x14 5x5 as a copies_kpu in groups of 16 (the fastest) lowers
#: the model's mean output cosine by 0.004 (board build 0.98806 -> 0.98404; its float_in build gains),
#: in groups of at most 12 by 0.011, in groups of 8 it gains (0.98906), with the same per-layer SQNR.
COPIES_KPU_MAX_GROUP = 8

def _stack_groups(c: int, j: int, budget: int, k: int = 3) -> list[int]:
    """Channels per layer of each depthwise stack of j terms (k x k kernels) worth trying (c: one
    layer), fewest layers first: the weights (k*k*j*g per channel) within `budget` bytes, j*g input
    channels, at most MAX_STACK_GROUPS layers, and then twice, four times... as many layers, since a
    stack whose input fits in KPU RAM only in smaller groups (BlazePalm's 96x96 maps with their
    residual) is worth more layers."""
    g = min(c, MAX_CHANNELS // j, budget // (k * k * j * c))
    while g > 0 and weight_loads(g, j * g, k, False)[1] >= MAX_WEIGHT_LOADS:  # load_time is 6 bits
        g -= 1
    out: list[int] = []
    layers = -(-c // g) if g else MAX_STACK_GROUPS + 1
    while layers <= MAX_STACK_GROUPS and (not out or out[-1] > 1):
        size = -(-c // layers)  # the same number of layers, balanced
        if size not in out:
            out.append(size)
        layers *= 2
    return out


def plans(n: Node, residual: bool = False, halves: bool = False, bulk: float = 0.0,
           cap: int | None = None, ram: int = KPU_RAM_SIZE) -> list[Form]:
    """Every candidate: split step, zero placement, and each combiner whose limits it meets; with
    `residual`, also the stacks that stack the input's rounding residual (twice the input channels);
    with `halves`, also every stack computing its output in two halves (four parts with `bulk`); a
    stack made in KPU RAM within `cap` bytes of kmodel (None: STACK_KPU_BYTES) and `ram` bytes of KPU
    RAM (less than all of it where other buffers stay alive beside it, kcc.pipeline's retry)."""
    cap = STACK_KPU_BYTES if cap is None else cap
    op: O.Conv2D = n.op
    x, w, _ = n.inputs
    (sh, sw), (kh, kw), c = op.stride, w.shape[2:], x.shape[1]
    depthwise = op.groups > 1
    splits = [(1, 1)] + ([(sh, sw)] if (sh, sw) != (1, 1) else [])
    out = []
    for split in splits:
        for z in itertools.product(range(max_zero_taps(kh, split[0]) + 1), range(max_zero_taps(kw, split[1]) + 1)):
            out.append(Form(split, z, "sum"))
            if residual:
                out.append(Form(split, z, "sum", residual=True))
            j = len(axis_terms(kh, sh, 0, split[0], z[0])) * len(axis_terms(kw, sw, 0, split[1], z[1]))
            if j == 1:
                continue
            for views, extra in ((j, False), (2 * j, True)) if residual else ((j, False),):
                if not depthwise:
                    loads = weight_loads(w.shape[0], views * c, 3, False)[1] + 1
                    if views * c <= MAX_CHANNELS and loads <= MAX_WEIGHT_LOADS:
                        out += [Form(split, z, "stack", residual=extra, halves=h, bulk=bulk if h else 0.0)
                                for h in sorted({False, halves})]
                    continue
                groups = _stack_groups(c, views, STACK_WEIGHT_BUDGET) or _stack_groups(c, views, MAX_STACK_WEIGHT)
                out += [Form(split, z, "stack", 0 if g == c else g, extra, h, bulk if h else 0.0)
                        for h in sorted({False, halves}) for g in groups]
            if not depthwise:
                continue
            if split == (sh, sw) and j * c <= MAX_CHANNELS and j * c * c + 9 * j * c <= STACK_WEIGHT_BUDGET:
                out.append(Form(split, z, "stack_dw"))
    for combine, terms in KPU_MADE.items():
        plan = terms(n)
        if plan is not None and len(plan) > 1:
            out += _stack_kpu_plans(n, len(plan), residual, halves, bulk, combine, cap, ram)
    shifts = shift_plan(n)
    if shifts is not None and len(shifts) > 1:
        out += _fan_kpu_plans(n, len(shifts), halves, bulk, cap, ram)
    return out


#: channels per group of a `fan_kpu` worth trying, in 64-byte lines of KPU RAM (a group starts on a
#: line of its own: read and written in place): fewer lines are fewer kmodel bytes, more the fewer
#: layers. One line only: its bytes let the allowance reach every wide 5x5 (BlazeHand: all five on the
#: KPU in 5.30 MiB), and no grouping is more accurate than another beyond the noise of the kit's three
#: samples (held out: docs/measurements.md §17)
FAN_KPU_LINES = (1,)


def _fan_kpu_plans(n: Node, j: int, halves: bool, bulk: float, cap: int | None = None,
                   ram: int = KPU_RAM_SIZE) -> list[Form]:
    """The `fan_kpu` candidates of depthwise conv n with j shifted copies (stride 1, "same"): groups of
    FAN_KPU_LINES lines of channels, each group's fan (j*g copies) and stack within the KPU's channels
    and weight loads, its layers and weights within `cap` bytes (`fan_kpu_bytes`) and its copies
    within KPU RAM. No residual: a float input's copies would be of 8-bit codes (the fan reads x's).
    Only beyond STACK_KPU_BYTES: a fan is always paid from the model's allowance (`allot`), so that
    kcc.pipeline takes its bytes back from a model over the device RAM budget (BlazePalm's many
    64..256-channel 5x5s would each take one within their own STACK_KPU_BYTES, the model already at
    5.5 MiB)."""
    cap = STACK_KPU_BYTES if cap is None else cap
    x, w, _ = n.inputs
    c = x.shape[1]
    if n.op.groups != c or c == 1 or cap <= STACK_KPU_BYTES:
        return []
    x_kpu = not isinstance(x.op, O.Input) and kpu_as_is(x, CompileOptions())[0]
    line = kpu_row_layout(x.shape[3]).groups
    out = []
    for g in sorted({min(c, k * line) for k in FAN_KPU_LINES}, reverse=True):  # fewest layers first
        if (j * g <= MAX_CHANNELS and weight_loads(j * g, g, 3, False)[1] < MAX_WEIGHT_LOADS
                and weight_loads(g, j * g, 3, False)[1] < MAX_WEIGHT_LOADS and fan_kpu_bytes(c, j, g) <= cap
                and _stack_kpu_ram(x.shape, j, g, 1, c, x_kpu) <= ram):
            out += [Form((1, 1), (0, 0), "fan_kpu", 0 if g == c else g, False, h, bulk if h else 0.0)
                    for h in sorted({False, halves})]
    return out


def fan_kpu_bytes(c: int, j: int, g: int) -> int:
    """kmodel bytes of a depthwise `fan_kpu` of c channels in groups of g with j copies: per group two
    KPU layers of KPU_LAYER_BYTES, the fan's 9*j*g*g weight bytes and the stack's as many."""
    return -(-c // g) * 2 * KPU_LAYER_BYTES + 2 * 9 * j * g * c


def _stack_kpu_plans(n: Node, j: int, residual: bool, halves: bool, bulk: float,
                     combine: str = "stack_kpu", cap: int | None = None, ram: int = KPU_RAM_SIZE) -> list[Form]:
    """The `stack_kpu` (3x3 combine), `copies_kpu` (1x1 combine) or `phases_kpu` (3x3 combine of
    quarter-size phases) candidates of conv n with j views made by KPU layers (twice as many with the
    residual), within a stack's limits (`plans`) and `cap` bytes."""
    cap = STACK_KPU_BYTES if cap is None else cap
    op: O.Conv2D = n.op
    x, w, _ = n.inputs
    c, k = x.shape[1], 1 if combine == "copies_kpu" else 3
    x_kpu = not isinstance(x.op, O.Input) and kpu_as_is(x, CompileOptions())[0]  # x stays in KPU RAM
    out = []
    for views, extra in ((j, False), (2 * j, True)) if residual else ((j, False),):
        if op.groups == 1:
            if c == 1 and combine == "phases_kpu":  # a 1-channel phase layer: no copy on x's grid (above)
                continue
            loads = weight_loads(w.shape[0], views * c, k, False)[1] + 1
            fits = _stack_kpu_ram(x.shape, views, c, 2 if extra else 1, w.shape[0], out_hw=n.shape[2:]) <= ram
            if views * c <= MAX_CHANNELS and loads <= MAX_WEIGHT_LOADS and fits:
                out += [Form((1, 1), (0, 0), combine, residual=extra, halves=h, bulk=bulk if h else 0.0)
                        for h in sorted({False, halves})]
            continue
        groups = set(_stack_groups(c, views, STACK_WEIGHT_BUDGET, k) + _stack_groups(c, views, MAX_STACK_WEIGHT, k))
        if combine == "phases_kpu":
            # the groupings of the CPU-view `stack` it replaces (`plans`), whose weights the same layers
            # hold; of at least 2 channels: a 1-channel phase layer is no depthwise one, so no copy on x's grid
            groups = set(_stack_groups(c, views, STACK_WEIGHT_BUDGET) or _stack_groups(c, views, MAX_STACK_WEIGHT))
            groups = {g for g in groups if g > 1}
        # the copies are concatenated in place only if each starts on a 64-byte line of its own
        # (channels per line at x's width: 4 up to width 16, 2 up to 32; at the phases' for phases_kpu),
        # and a group of a KPU layer's x is read in place from such a line too: groups of a multiple of that
        line = _line(n)
        aligned = {g // line * line for g in groups if g >= line} | {-(-g // line) * line for g in groups}
        groups |= {g for g in aligned if _stack_group_fits(c, views, g, k)}
        # every group is views + 1 KPU layers: within `cap` with their weights
        groups = sorted((g for g in groups if stack_kpu_bytes(c, views, g, k) <= cap
                         and _stack_kpu_ram(x.shape, views, g, 2 if extra else 1, c, x_kpu, n.shape[2:]) <= ram),
                        reverse=True)
        if combine == "copies_kpu":
            groups = [g for g in groups if g <= COPIES_KPU_MAX_GROUP]
        out += [Form((1, 1), (0, 0), combine, 0 if g == c else g, extra, h, bulk if h else 0.0)
                for h in sorted({False, halves}) for g in groups]
    return out


def stack_kpu_bytes(c: int, views: int, g: int, k: int = 3) -> int:
    """kmodel bytes of a depthwise `stack_kpu` (k = 3) or `copies_kpu` (k = 1) of c channels in groups
    of g: per group, `views` copy layers and the stacked k x k layer, each KPU_LAYER_BYTES plus its
    weights (k*k*views*g per channel of the stacked layer, 9 per channel of a copy)."""
    groups = -(-c // g)
    return groups * (views + 1) * KPU_LAYER_BYTES + k * k * views * g * c + 9 * views * c


def _stack_kpu_ram(shape: tuple, views: int, g: int, sources: int, oc: int, x_in_kpu_ram: bool = False,
                   out_hw: tuple | None = None) -> int:
    """KPU RAM a `stack_kpu` in groups of g input channels needs at once (legalize_kpu checks one
    layer at a time): a group's copies side by side, the group of x (and of its residual) they copy,
    and the oc output channels, all groups side by side. A channel group of a CPU x is uploaded on
    its own (x whole is not there); a KPU layer's x (`x_in_kpu_ram`) is read in place, group by group
    (kcc.ir.kpu_ops.KpuChannelView), so x whole stays until its last group is read. The views and the
    output are `out_hw` in size (a `phases_kpu`'s; None: x's)."""
    nb, c, h, w = shape
    oh, ow = out_hw or (h, w)
    x = kpu_bytes((nb, c, h, w)) + (sources - 1) * kpu_bytes((nb, g, h, w)) if x_in_kpu_ram \
        else sources * kpu_bytes((nb, g, h, w))
    return kpu_bytes((nb, views * g, oh, ow)) + x + kpu_bytes((nb, oc, oh, ow))


def _stack_group_fits(c: int, views: int, g: int, k: int = 3) -> bool:
    """Groups of g of c channels, each stacking `views` views in a k x k layer, within the limits of
    `_stack_groups` (MAX_STACK_WEIGHT, MAX_CHANNELS, MAX_STACK_GROUPS, the weight loads)."""
    return (0 < g <= c and k * k * views * g * c <= MAX_STACK_WEIGHT and views * g <= MAX_CHANNELS
            and -(-c // g) <= MAX_STACK_GROUPS and weight_loads(g, views * g, k, False)[1] < MAX_WEIGHT_LOADS)


def _line(n: Node) -> int:
    """Channels a 64-byte line of KPU RAM holds at the width of conv n's input and at its output's
    (1, 2 or 4: the larger divides by the smaller): a group of the channels of a KPU layer's output
    is read in place (kcc.ir.kpu_ops.KpuChannelView), and views made by KPU layers are concatenated in
    place (kcc.ir.kpu_ops.KpuConcat; a `phases_kpu`'s at the output's width), from such a line only."""
    return max(kpu_row_layout(n.inputs[0].shape[3]).groups, kpu_row_layout(n.shape[3]).groups)


def lines_apart(n: Node, plan: Form) -> bool:
    """A form with views made by KPU layers whose every group (the last too) is a multiple of the
    channels a 64-byte line of KPU RAM holds (`_line`): its views then start on lines of their own
    (concatenated in place)."""
    c, line = n.inputs[0].shape[1], _line(n)
    g = plan.group or c
    return plan.combine in ("fan_kpu", *KPU_MADE) and g % line == 0 and (c % g) % line == 0

def plan_bytes(n: Node, plan: Form) -> int | None:
    """The kmodel bytes a depthwise stack made in KPU RAM is estimated to take, as its cap is checked
    (`stack_kpu_bytes`, `fan_kpu_bytes`); None for any other form."""
    c = n.inputs[0].shape[1]
    if n.op.groups == 1 or plan.combine not in ("fan_kpu", *KPU_MADE):
        return None
    g = plan.group or c
    if plan.combine == "fan_kpu":
        return fan_kpu_bytes(c, len(shift_plan(n)), g)
    views = len(KPU_MADE[plan.combine](n)) * (2 if plan.residual else 1)
    return stack_kpu_bytes(c, views, g, 1 if plan.combine == "copies_kpu" else 3)
