"""kernel_cost: what a convolution costs on the K210 in its place in a model, for decompose_kernels.

A conv, or one of its decompositions (kcc.passes.kernel_forms), is legalized on its own (`alone`,
`on_kpu`) and its legalized graph priced in estimated cycles (`estimate_cycles`): every kmodel node
quantize, lower_to_neutral and emit will make of it, at kcc.target.k210's costs, as kcc.latency prices
a kmodel (`kcc info --estimate`). What surrounds the conv in its model changes that price (`Where`,
`surroundings`): a float or uint8 input, KPU or float readers of its output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.options import CompileOptions
from kcc.passes.kernel_forms import Form, emit
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.lower_to_neutral import crop_as_pad, pad_cycles
from kcc.passes.manager import CompileContext
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    KPU_LAYER_BYTES,
    cpu_cycles,
    kpu_layer_cost,
    kpu_map_cycles,
    kpu_row_layout,
    upload_cycles,
)

# Cost model: kcc.target.k210's cycle counts (nncase v0.2 runtime at 400 MHz) of what legalize makes.
_CPU_PER_ELEMENT = {O.StridedSlice: "strided_slice", O.Transpose: "transpose",
                    O.Reshape: "copy_byte"}


# ------------------------------------------------------------- the CPU's form (kcc.quant.cpu_conv)
#: a run's weight grid spans at most this many times each of its channels' own ranges: a channel's
#: weights round to at worst twice its own grid's step. Each run is a node of ~150 bytes and ~5 us;
#: one a channel would put BlazePalm over the bare SDK's 5.5 MiB (docs/measurements.md §12)
RUN_SPAN = 2.0


def uint8_conv(n: Node) -> bool:
    """n is a conv with constant weights and bias, depthwise (one input and one output channel per
    group) or dense, larger than 1x1: the convs kcc leaves on the CPU. (A 1x1 depthwise conv is a
    per-channel scale inside a float PReLU or binary op of lower_to_neutral: it stays float.)"""
    if not (isinstance(n.op, O.Conv2D) and n.inputs[1].is_constant and n.inputs[2].is_constant):
        return False
    c, w = n.inputs[0].shape[1], n.inputs[1]
    depthwise = n.op.groups == c == n.shape[1] and w.shape[1] == 1
    return (depthwise or n.op.groups == 1) and w.shape[2] * w.shape[3] > 1 and n.type.rank == 4


def channel_runs(w: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive output channels whose weights share one grid: a run grows while its range stays
    within RUN_SPAN times the range of every channel in it (kcc.quant.cpu_conv)."""
    flat = np.asarray(w, np.float32).reshape(w.shape[0], -1)
    lo = np.minimum(flat.min(axis=1), 0.0)
    hi = np.maximum(flat.max(axis=1), 0.0)
    span = np.maximum(hi - lo, np.finfo(np.float32).tiny)
    runs, start = [], 0
    for o in range(1, len(flat) + 1):
        if o < len(flat):
            rlo, rhi = min(lo[start:o + 1].min(), 0.0), max(hi[start:o + 1].max(), 0.0)
            if rhi - rlo <= RUN_SPAN * span[start:o + 1].min():
                continue
        runs.append((start, o))
        start = o
    return runs


# ----------------------------------------------------------------------------------- cost
@dataclass(frozen=True)
class Where:
    """What surrounds a conv in its model, which its cost depends on: whether its input is float,
    computed on the CPU (quantized once before KPU layers read it), or uint8 codes (the model's uint8
    input, or a KPU layer's output, which that layer copies out of KPU RAM for any CPU reader either
    way: the float conv dequantizes it); and whether every reader of its output is a KPU layer
    reading it from KPU RAM (a CPU result is then quantized and uploaded; a KPU layer's output stays
    there). Else the readers are float CPU ops: a KPU result is copied out and dequantized.
    `kpu_input`: the input is a KPU layer's output, in KPU RAM, so a channel group of it starting on a
    64-byte line is read in place by KPU layers (kcc.ir.kpu_ops.KpuChannelView), like the whole map."""

    float_input: bool = True
    kpu_readers: bool = False
    kpu_input: bool = False


def _upload(x: Node) -> float:
    """A kpu_upload of x's uint8 codes as kcc emits it (kcc.target.k210.upload_cycles)."""
    return upload_cycles(x.shape)


def _per_element(key: str, x: Node) -> float:
    """One CPU node doing `key` once per element of x (kcc.latency._WORK)."""
    return CPU_NODE_CYCLES + cpu_cycles(key) * x.type.size


def estimate_cycles(g: Graph, where: Where = Where()) -> float:
    """Estimated K210 cycles of a legalized one-conv graph (`alone`) in its model (`where`), with
    kcc.target.k210's costs, counting the kmodel nodes quantize, lower_to_neutral and emit make of
    it as kcc.latency does (`kcc info --estimate`): KPU layers (their fixed cost, CPU dispatch,
    uploads, and copies out for CPU readers), float convs (with the dequantize of a uint8 input), a
    float input's quantize (once: views and pads then move uint8 codes), views, pads, crops,
    concats (none when every input is a CPU view written into its block, kcc.emit.storage, nor when
    KPU layers write their channel ranges of one KPU RAM buffer for KPU readers, `_kpu_concat`), float
    adds with the dequantize of each uint8 input, and what the output needs for its readers."""
    users = g.users()
    out = g.outputs[0]
    kpu_concats = {id(n) for n in g.nodes if _kpu_concat(n, users, where.kpu_readers if n is out else None)}

    def kpu(v: Node) -> bool:  # in KPU RAM: a KPU layer, or KPU layers' outputs concatenated in place
        return is_kpu_layer(v) or id(v) in kpu_concats

    on_kpu = any(kpu(m) for m in g.nodes)
    views = {id(n) for n in g.nodes if where.kpu_input and _kpu_view(n)}
    uploaded: set[int] = set()  # one upload serves every KPU layer reading the tensor
    total = 0.0
    for n in g.nodes:
        if isinstance(n.op, O.Input):
            if where.float_input and on_kpu:  # one quantize (after a channel slice if any)
                total += _per_element("quantize", n)
        elif is_kpu_layer(n):
            x, w = n.inputs[0], n.inputs[1]
            nb, c, h, wd = x.shape
            cycles = nb * kpu_map_cycles(c, h, wd, n.shape[1], n.op.depthwise)
            total += kpu_layer_cost(cycles, w.type.size) + CPU_NODE_CYCLES
            if id(x) in views:  # read in place in x's source: what reading that costs
                x = x.inputs[0]
            if not kpu(x) and id(x) not in uploaded:
                uploaded.add(id(x))
                total += _upload(x)
            if any(not kpu(u) for u in users[n]) or (n is out and not where.kpu_readers):
                total += cpu_cycles("kpu_download_byte") * n.type.size
        elif _on_codes_conv(n, where):  # uint8 convs on x's codes, one a channel run
            runs = len(channel_runs(n.inputs[1].data)) if n.shape[0] == 1 else 1
            total += runs * CPU_NODE_CYCLES + cpu_cycles("quantized_conv2d_mac") * n.type.size * int(
                np.prod(n.inputs[1].shape[1:]))
        elif isinstance(n.op, O.Conv2D):
            total += CPU_NODE_CYCLES + cpu_cycles("conv2d_mac") * n.type.size * int(np.prod(n.inputs[1].shape[1:]))
            x = n.inputs[0]
            if not where.float_input:  # the float conv reads x's codes dequantized
                total += _per_element("dequantize", x)
        elif isinstance(n.op, KO.QuantResidual):
            total += 3 * CPU_NODE_CYCLES + n.type.size * sum(cpu_cycles(k) for k in ("dequantize", "binary", "quantize"))
        elif isinstance(n.op, O.Concat) and id(n) in kpu_concats:
            pass  # each KPU layer writes its channel range of one KPU RAM buffer
        elif isinstance(n.op, O.Concat):
            in_place = all(isinstance(i.op, (O.StridedSlice, O.Pad)) and len(users[i]) == 1 for i in n.inputs)
            if not in_place:
                total += CPU_NODE_CYCLES + cpu_cycles("copy_byte") * n.type.size
                total += cpu_cycles("concat_block") * len(n.inputs)
        elif isinstance(n.op, O.Binary):
            total += _per_element("binary", n)
            total += sum(_per_element("dequantize", i) for i in n.inputs if not _is_float(i, where))
        elif id(n) in views and all(is_kpu_layer(u) for u in users[n]):
            pass  # no CPU slice: KPU layers alone read it, in place
        elif isinstance(n.op, O.StridedSlice) and n.op.contiguous_offset(n.inputs[0].shape) is not None:
            pass  # one range of its input's bytes in main memory: a view (kcc.emit.storage), no node
        elif (pad := crop_as_pad(n)) is not None:  # a window of a pad, lowered as a pad of its input
            total += pad_cycles(Node(n.name, pad, (n.inputs[0].inputs[0],), n.type))
        elif isinstance(n.op, O.Pad):
            if n is out or not all(crop_as_pad(u) is not None for u in users[n]):  # else nothing reads it
                total += pad_cycles(n)  # nncase's pad, or concatenations with fill blocks (lower_to_neutral)
        elif type(n.op) in _CPU_PER_ELEMENT:
            total += _per_element(_CPU_PER_ELEMENT[type(n.op)], n)
    float_out = _is_float(out, where)
    if where.kpu_readers and not kpu(out):  # a CPU result the next KPU layer reads
        total += (_per_element("quantize", out) if float_out else 0.0) + _upload(out)
    elif not where.kpu_readers and not float_out:  # uint8 codes a float CPU op reads
        total += _per_element("dequantize", out)
    return total


def is_kpu_layer(v: Node) -> bool:
    return isinstance(v.op, KO.FloatKpuConv)


def _kpu_concat(n: Node, users: dict, out_readers_kpu: bool | None = None) -> bool:
    """n is a channel concatenation that kcc.quant.quantize computes in place in KPU RAM
    (`kpu_concat_problem`): batch 1, of distinct KPU layers read by it (and by other KPU layers
    only), each part starting on a 64-byte line of its own, read by KPU layers only (`out_readers_kpu`
    for the graph's output: its readers are in the model). The parts share one grid: the shifted
    copies of a `stack_kpu` or `copies_kpu` (kcc.quant.policy.copy_grids), a depthwise stack's channel
    groups (share_concat_grids)."""
    if not (isinstance(n.op, O.Concat) and n.op.axis == 1 and n.shape[0] == 1):
        return False
    readers = out_readers_kpu if out_readers_kpu is not None else bool(users.get(n)) and all(is_kpu_layer(u) for u in users[n])
    if not readers or len({id(p) for p in n.inputs}) != len(n.inputs):
        return False
    groups, at = kpu_row_layout(n.shape[3]).groups, 0
    for p in n.inputs:
        # a part other KPU layers read too is read where it was written (a `copies_kpu` unit copy)
        others = [u for u in users[p] if u is not n]
        if not is_kpu_layer(p) or len(users[p]) - len(others) != 1 or not all(map(is_kpu_layer, others)) or at % groups:
            return False
        at += p.shape[1]
    return True


def _kpu_view(n: Node) -> bool:
    """n is a channel group of the graph's input that KPU layers read in place when that input is a
    KPU layer's output (kcc.quant.kpu_ram.kpu_view_problem): a slice of channels only, batch 1,
    starting on a 64-byte line of KPU RAM at the input's width."""
    if not (isinstance(n.op, O.StridedSlice) and isinstance(n.inputs[0].op, O.Input) and n.type.rank == 4):
        return False
    x = n.inputs[0]
    (b0, c0, y0, x0), end, steps = n.op.begin, n.op.end, n.op.strides
    return (x.shape[0] == 1 and (b0, y0, x0) == (0, 0, 0) and (end[0], *end[2:]) == (1, *x.shape[2:])
            and tuple(steps) == (1, 1, 1, 1) and c0 % kpu_row_layout(x.shape[3]).groups == 0)


def _is_float(v: Node, where: Where) -> bool:
    """v holds float values on the CPU: a float op's result, or views of a float input (before any
    KPU layer, uint8 codes only when the input is; Binary and float convs compute in float)."""
    while isinstance(v.op, (O.Pad, O.StridedSlice, O.Reshape, O.Transpose, O.Concat)):
        v = v.inputs[0]
    if isinstance(v.op, O.Input):
        return where.float_input
    return isinstance(v.op, (O.Binary, O.Conv2D)) and not is_kpu_layer(v) and not _on_codes_conv(v, where)


def _on_codes_conv(n: Node, where: Where) -> bool:
    """n is a conv left on the CPU that runs on uint8 codes: a `uint8_conv` whose input is codes
    (a float input stays with the float conv, which reads it unrounded: kcc.quant.cpu_conv)."""
    return isinstance(n.op, O.Conv2D) and uint8_conv(n) and not _is_float(n.inputs[0], where)


def alone(n: Node, plan: Form | None) -> Graph | None:
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


def on_kpu(g: Graph, opts: CompileOptions, where: Where = Where()) -> tuple[bool, float]:
    ctx = CompileContext(opts)
    lg = legalize_kpu(g, ctx)
    return bool(ctx.placements) and all(p.on_kpu for p in ctx.placements), estimate_cycles(lg, where)


def kmodel_bytes(n: Node, plan: Form | None, opts: CompileOptions) -> int:
    """Estimated kmodel bytes of conv `n` (plan None) or its decomposition, legalized on its own: per
    KPU layer KPU_LAYER_BYTES and its 8-bit weights, per float conv its weights and bias (4 bytes each)."""
    g = alone(n, plan)
    if g is None:
        return 0
    total = 0
    for m in legalize_kpu(g, CompileContext(opts)).nodes:
        if is_kpu_layer(m):
            total += KPU_LAYER_BYTES + m.inputs[1].type.size
        elif isinstance(m.op, O.Conv2D):
            total += 4 * (m.inputs[1].type.size + m.inputs[2].type.size)
    return total


def kpu_as_is(u: Node, opts: CompileOptions) -> tuple[bool, bool]:
    """Whether legalize_kpu takes conv u as it is, and whether its KPU layer then reads u's input as
    it is (no CPU pre-pad: a KPU layer before it may leave its output in KPU RAM for it)."""
    if not isinstance(u.op, O.Conv2D) or not (u.inputs[1].is_constant and u.inputs[2].is_constant):
        return False, False
    ctx = CompileContext(opts)
    lg = legalize_kpu(alone(u, None), ctx)
    on_kpu = bool(ctx.placements) and all(p.on_kpu for p in ctx.placements)
    return on_kpu, on_kpu and any(is_kpu_layer(m) and isinstance(m.inputs[0].op, O.Input) for m in lg.nodes)


def surroundings(n: Node, users: dict, outputs: set[int], opts: CompileOptions = CompileOptions()) -> Where:
    """`Where` conv n sits in its graph (`users`, the ids of the graph outputs)."""
    x = n.inputs[0]
    if isinstance(x.op, O.Input):
        float_input, kpu_input = opts.effective_input_type != "uint8", False
    else:
        kpu_input = kpu_as_is(x, opts)[0]
        float_input = not kpu_input
    readers = users.get(n, [])
    kpu_readers = bool(readers) and id(n) not in outputs and all(kpu_as_is(u, opts)[1] for u in readers)
    return Where(float_input, kpu_readers, kpu_input)
