"""global_mean: a global average pool of a KPU layer's map as block sums on the KPU (issue #16).

A classifier's global mean (MobileNet's AvgPool, a Mean over H and W) reads the last KPU layer's map
on the CPU: the map is copied out of KPU RAM (~34 cycles a byte), dequantized, and averaged in float
(~64 cycles a tap): ~21 ms of MobileNetV2 1.0 at 256x256 (1280 channels of 8x8), a third of its
estimate. The KPU averages no window that large, but a sum over the map is a sum of sums over 2x2
blocks:

    level k: y_k[a, b] = s_k * sum of y_(k-1)[2a + i, 2b + j], i, j in {0, 1}   (x = y_0)

a 3x3 depthwise conv at stride 2 with the KPU's padding of 1, taps at offsets (0, 0), (0, 1), (1, 0)
and (1, 1) of the centre: one KPU layer with the pool unit's pick (kcc.passes.legalize_kpu). On an
odd size the block at the edge takes the zero padding, and the pick's last row needs
kcc.passes.gap_pick's layers, one per line group of channels: taken only for a few
(`ODD_LEVEL_LAYERS`). Each level halves the map (ceil) while it is at least the KPU's MIN_HW in both
axes, so 8x8 -> 4x4 -> 2x2 and 10x10 -> 5x5, and the model's own mean, on the CPU, averages what is
left: sum over the last map / (h*w) = sum over x * s_1 / (h*w), s_1 = h*w / (H*W) makes it the mean of x
(later levels s_k = 1). The float graph computes the same mean. Each level's output is rounded to 8
bits on its own calibrated grid, one rounding more per level than the CPU's float mean (averaged over
the pixels that follow it), and the last map, a quarter or a sixteenth of x, is what the CPU copies out
and averages.

A global mean the CPU computes from a KPU layer's map for KPU layers (the 7x7 of 224x224 MobileNets
before their classifier, a level's last map) becomes, after legalize, a depthwise conv whose one HxW window weighs every tap 1/(H*W)
(`means_as_convs`): kcc.quant.cpu_conv runs it as nncase's quantized_conv2d on the layer's codes,
the sum in int32 and one rounding to the output grid, as the float mean's quantize rounds (~33
cycles a tap, against a float window tap's ~64 and the dequantize of every code before it).

Levels are taken where the mean reads a conv that legalize_kpu puts on the KPU (1x1 or 3x3, within its limits;
kcc.passes.channel_split cuts the levels with it beyond 1024 channels), KPU layers read the mean (a
classifier; rounded to 8 bits there anyway, not where a float CPU op reads it), is no pool legalize_kpu fuses
into that layer (a 2x2 or 4x4 map: the pool unit's own mean), and where kcc.target.k210's cost model
prices the levels below the CPU's mean of x (on odd sizes kcc.passes.gap_pick's layers too).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.options import CompileOptions
from kcc.passes.kernel_cost import Where, alone, kpu_as_is, on_kpu
from kcc.passes.kpu_pools import kpu_pool_code
from kcc.passes.legalize_kpu import Placement
from kcc.passes.manager import CompileContext
from kcc.passes.phase_space import is_global_mean
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    KERNEL_SIZES,
    KPU_RAM_SIZE,
    MAX_CHANNELS,
    MIN_HW,
    cpu_cycles,
    kpu_bytes,
    kpu_row_layout,
    upload_cycles,
)

F32 = np.float32
#: how a rewritten mean's note (and its placement) begins: kcc.report.summary gives it as the reason
#: its CPU part stays on the CPU
NOTE = "a global mean: "


#: most layers a level on an odd size may take (kcc.passes.gap_pick: one per line group of channels,
#: ~800 B of kmodel each): MobileNetV2's 1280 channels at 7x7 would take 320 layers, 290 KB of
#: device RAM for ~6 ms, which its mean on the CPU keeps
ODD_LEVEL_LAYERS = 16


def levels(c: int, h: int, w: int) -> list[tuple[int, int]]:
    """The map size after each level of 2x2 block sums over c channels (module docstring): while the
    map is at least MIN_HW in both axes, and even in both or its channels in at most ODD_LEVEL_LAYERS
    line groups. None if x is too small."""
    out = []
    while min(h, w) >= MIN_HW and (h % 2 == w % 2 == 0 or -(-c // kpu_row_layout(w).groups) <= ODD_LEVEL_LAYERS):
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def _block_sum(c: int, scale: float) -> np.ndarray:
    """[c, 1, 3, 3] depthwise weights summing the 2x2 block at offsets 0..1 of the centre, times scale."""
    k = np.zeros((c, 1, 3, 3), F32)
    k[:, 0, 1:, 1:] = scale
    return k


def _kpu_source(x: Node) -> bool:
    """x is a conv legalize_kpu puts on the KPU as a layer of its own (its channels beyond 1024 cut
    by channel_split): a 1x1 or 3x3 conv of constant weights at stride 1, within the KPU's map limits."""
    if not (isinstance(x.op, O.Conv2D) and x.inputs[1].is_constant and x.inputs[2].is_constant):
        return False
    op, k = x.op, x.inputs[1].shape[2:]
    return (k[0] == k[1] and k[0] in KERNEL_SIZES and op.stride == (1, 1) and op.dilation == (1, 1)
            and x.shape[0] == 1 and kpu_bytes((1, min(x.shape[1], MAX_CHANNELS), *x.shape[2:])) <= KPU_RAM_SIZE)


def _read_by_kpu(n: Node, users: dict, outputs: set[int], opts: CompileOptions) -> bool:
    """Every reader of n (through reshapes and pads) is a conv or fully-connected layer that
    legalize_kpu puts on the KPU, which rounds n to 8 bits anyway; a CPU op (BlazeHand's float heads)
    or the graph output would read the float mean unrounded."""
    if id(n) in outputs or not users.get(n):
        return False
    for u in users[n]:
        if isinstance(u.op, (O.Reshape, O.Pad)):
            if not _read_by_kpu(u, users, outputs, opts):
                return False
        elif isinstance(u.op, O.Conv2D):
            if not kpu_as_is(u, opts)[0]:
                return False
        elif isinstance(u.op, O.MatMul) and u.inputs[1].is_constant and u.inputs[2].is_constant:
            # alone, the layer is the graph's head, as a classifier's is (a small one stays float)
            if not on_kpu(alone(u, None), opts)[0]:
                return False
        else:
            return False
    return True


def _chain(c: int, h: int, w: int, name: str, add) -> Node | None:
    """The levels over an x of c channels, h x w, built with `add(op, inputs, name)`: the last level's
    node (None when x is too small for one)."""
    sizes = levels(c, h, w)
    if not sizes:
        return None
    y = add(None, (), None)  # x
    lh, lw = sizes[-1]
    for k, _ in enumerate(sizes):
        scale = lh * lw / (h * w) if k == 0 else 1.0
        wgt = add(O.Constant(_block_sum(c, scale)), (), f"{name}/block_sum{k}_w")
        bias = add(O.Constant(np.zeros(c, F32)), (), f"{name}/block_sum{k}_b")
        y = add(O.Conv2D((2, 2), ((1, 1), (1, 1)), (1, 1), c), (y, wgt, bias), f"{name}/block_sum{k}")
    return y


def _cycles(n: Node, users: dict, opts: CompileOptions) -> tuple[float, float]:
    """(CPU mean of x, levels on the KPU and the CPU's mean of their last map), in estimated cycles."""
    x = n.inputs[0]
    _, c, h, w = x.shape
    taps = cpu_cycles("window_tap")
    cpu = CPU_NODE_CYCLES + taps * x.type.size + CPU_NODE_CYCLES + cpu_cycles("dequantize") * x.type.size
    if all(u is n or isinstance(u.op, O.Conv2D) for u in users[x]):  # no other CPU reader copies x out
        cpu += cpu_cycles("kpu_download_byte") * x.type.size
    # priced as channel_split will cut it: in equal groups of at most MAX_CHANNELS
    groups = -(-c // MAX_CHANNELS)
    g = Graph()
    inp = g.input(0, (1, -(-c // groups), h, w))

    def add(op, ins, name):
        return inp if op is None else g.add(op, ins, name)

    g.outputs = [_chain(inp.shape[1], h, w, n.name, add)]
    fits, cycles = on_kpu(g, opts, Where(float_input=False))
    if not fits:
        return cpu, math.inf
    upload = upload_cycles(inp.shape)  # on_kpu's upload of its input: x is in KPU RAM already
    kpu = groups * (cycles - upload)
    return cpu, kpu + CPU_NODE_CYCLES + taps * groups * g.outputs[0].type.size


def global_means_as_sums(g: Graph, opts: CompileOptions = CompileOptions()) -> tuple[Graph, list[tuple[str, str]]]:
    """Rewrite each global mean of a KPU layer's map worth it (module docstring); returns the graph
    and (mean, what its placement says) for each mean rewritten, its note too."""
    if opts.target == "cpu" or opts.inference_type != "uint8":
        return g, []
    users, outputs = g.users(), {id(o) for o in g.outputs}
    done = []
    for n in [m for m in g.nodes if is_global_mean(m)]:
        x = n.inputs[0]
        if not _kpu_source(x) or not levels(*x.shape[1:]) or not _read_by_kpu(n, users, outputs, opts):
            continue
        if isinstance(n.op, O.Pool2D) and kpu_pool_code(n.op, *x.shape[2:]) is not None:
            continue  # legalize_kpu fuses it into x's layer (a 4x4 or 2x2 map: the pool unit's mean)
        cpu, kpu = _cycles(n, users, opts)
        if kpu >= cpu:
            continue
        _, c, h, w = x.shape

        def add(op, ins, name, n=n, x=x):
            return x if op is None else g.insert_before(n, op, ins, name)

        last = _chain(c, h, w, n.name, add)
        lh, lw = last.shape[2:]
        op = O.Pool2D("mean", (lh, lw), (lh, lw), act=n.op.act) if isinstance(n.op, O.Pool2D) else n.op
        name, k = n.name, len(levels(c, h, w))
        note = (f"{NOTE}{k} level(s) of 2x2 block sums on the KPU leave {lh}x{lw} of its {h}x{w} map to average "
                f"on the CPU (kcc.passes.global_mean)")
        g.substitute(n, g.insert_before(n, op, (last,), name, note), "/whole")
        done.append((name, note))
    if done:
        g.remove_dead()
    return g, done


def global_mean_sums(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """The pipeline stage: `global_means_as_sums` (a pre-quantized model keeps its own mean, rounded
    as TFLite rounds it)."""
    if ctx is None or ctx.own_grids or ctx.quantization is not None:
        return g
    g, done = global_means_as_sums(g, ctx.options)
    by_name = {n.name: n for n in g.nodes}
    # a reduce has no placement of its own; a mean pool's comes from legalize_kpu, a CPU pool's, whose
    # reason kcc.report.summary.pool_reason takes from the note
    ctx.placements.extend(Placement(name, "mean", True, note) for name, note in done
                          if isinstance(by_name[name].op, O.Reduce))
    return g


def means_as_convs(g: Graph) -> tuple[Graph, list[str]]:
    """Each global mean (no fused clamp) of a KPU layer's map that KPU layers read, as the depthwise
    conv of one window (module docstring); a reduce without its kept dimensions gets a reshape after
    it. A mean a CPU op reads (BlazeHand's heads, float matmuls) stays float: its value is never
    rounded there. Returns the graph and the means rewritten."""
    def codes(x: Node) -> bool:  # a KPU layer's output, or data movement of KPU layers' (channel
        # groups concatenated by channel_split, a pick left to the CPU): 8-bit codes
        return isinstance(x.op, KO.FloatKpuConv) or (
            isinstance(x.op, (O.Concat, O.StridedSlice, O.Pad, O.Reshape)) and all(codes(i) for i in x.inputs))

    users, outputs = g.users(), {id(o) for o in g.outputs}

    def read_as_codes(v: Node) -> bool:  # by KPU layers only, through data movement: rounded anyway
        return id(v) not in outputs and all(
            isinstance(u.op, KO.FloatKpuConv) or (isinstance(u.op, (O.Reshape, O.Pad)) and read_as_codes(u))
            for u in users[v])

    done = []
    for n in [m for m in g.nodes if is_global_mean(m) and codes(m.inputs[0])]:
        if isinstance(n.op, O.Pool2D) and n.op.act != O.NO_CLAMP or not read_as_codes(n):
            continue
        x = n.inputs[0]
        _, c, h, w = x.shape
        name = n.name
        wgt = g.insert_before(n, O.Constant(np.full((c, 1, h, w), 1.0 / (h * w), F32)), (), f"{name}/window_w")
        bias = g.insert_before(n, O.Constant(np.zeros(c, F32)), (), f"{name}/window_b")
        keep = n.type.rank == 4
        conv = g.insert_before(n, O.Conv2D(groups=c), (x, wgt, bias), name if keep else f"{name}/window", n.note)
        new = conv if keep else g.insert_before(n, O.Reshape(n.shape), (conv,), name)
        g.substitute(n, new, "/float")
        done.append(name)
    if done:
        g.remove_dead()
    return g, done


#: what the placement of a global mean on the CPU says once it is a conv on codes (`means_as_convs`)
ON_CODES = "as one window of a depthwise conv on uint8 codes (kcc.passes.global_mean)"


def global_mean_codes(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """The pipeline stage after legalize_kpu: `means_as_convs` (a pre-quantized model keeps its own
    mean, rounded as TFLite rounds it), the placements of the means it rewrote saying so."""
    if ctx is None or ctx.own_grids or ctx.quantization is not None or ctx.options.target == "cpu":
        return g
    g, done = means_as_convs(g)
    notes = {n.name: n.note for n in g.nodes if n.name in set(done)}

    def said(p: Placement) -> Placement:
        if p.on_kpu:  # the levels' placement (a reduce's): what its last map's mean is now
            return replace(p, reason=f"{p.reason}, {ON_CODES}")
        note = notes[p.node]  # kcc.report.summary adds the quantized_conv2d's estimate
        return replace(p, reason=f"{note}, {ON_CODES}" if note.startswith(NOTE) else f"mean pool on the CPU {ON_CODES}")

    ctx.placements[:] = [said(p) if p.node in notes and p.op in ("pool2d", "mean") else p for p in ctx.placements]
    return g
