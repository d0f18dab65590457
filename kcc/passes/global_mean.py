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

Taken where the mean reads a conv that legalize_kpu puts on the KPU (1x1 or 3x3, within its limits;
kcc.passes.channel_split cuts the levels with it beyond 1024 channels), is no pool legalize_kpu fuses
into that layer (a 2x2 or 4x4 map: the pool unit's own mean), and where kcc.target.k210's cost model
prices the levels below the CPU's mean of x (on odd sizes kcc.passes.gap_pick's layers too).
"""

from __future__ import annotations

import math

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.options import CompileOptions
from kcc.passes.kernel_cost import Where, estimate_cycles
from kcc.passes.kpu_pools import kpu_pool_code
from kcc.passes.legalize_kpu import Placement, legalize_kpu
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
    ctx = CompileContext(opts)
    lg = legalize_kpu(g, ctx)
    if not ctx.placements or not all(p.on_kpu for p in ctx.placements):
        return cpu, math.inf
    upload = CPU_NODE_CYCLES + cpu_cycles("kpu_upload_byte") * inp.type.size  # x is in KPU RAM already
    kpu = groups * (estimate_cycles(lg, Where(float_input=False)) - upload)
    return cpu, kpu + CPU_NODE_CYCLES + taps * groups * g.outputs[0].type.size


def global_means_as_sums(g: Graph, opts: CompileOptions = CompileOptions()) -> tuple[Graph, list[tuple[str, str]]]:
    """Rewrite each global mean of a KPU layer's map worth it (module docstring); returns the graph
    and (mean, what its placement says) for each mean rewritten, its note too."""
    if opts.target == "cpu" or opts.inference_type != "uint8":
        return g, []
    users = g.users()
    done = []
    for n in [m for m in g.nodes if is_global_mean(m)]:
        x = n.inputs[0]
        if not _kpu_source(x) or not levels(*x.shape[1:]):
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
