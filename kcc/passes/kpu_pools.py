"""kpu_pools: which pools the KPU's pool unit computes, and max pools of maps in KPU RAM as KPU layers.

The pool unit pools a layer's output (kpu_semantics.md §3 step 5): `kpu_pool_code` is the code of the
unit that computes a model's pool exactly. legalize_kpu fuses such pools into the conv before them;
`pools_in_kpu_ram` serves the max pools left over whose input is a KPU layer made after placement.
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.target.k210 import MAX_CHANNELS, MIN_HW, cpu_cycles, kpu_layer_cost, kpu_map_cycles


def kpu_pool_code(p: O.Pool2D, h: int, w: int) -> str | None:
    """The pool unit code that computes tflite pool `p` exactly (kpu_semantics.md §3 step 5)."""
    if p.act != O.NO_CLAMP or p.filter[0] != p.filter[1] or p.stride[0] != p.stride[1]:
        return None
    f, s, pad = p.filter[0], p.stride[0], p.padding
    if (h, w) == (f, f) and pad == ((0, 0), (0, 0)):
        s = f  # a single window (global pool): the stride does not matter
    kind = "max" if p.op == "max" else "mean"
    if f == s == 2 and pad == ((0, 0), (0, 0)):
        return f"{kind}_2_s2"
    if f == s == 4 and pad == ((0, 0), (0, 0)) and h % 4 == 0 and w % 4 == 0:
        return f"{kind}_4_s4"
    if f == 2 and s == 1 and pad == ((0, 1), (0, 1)):
        return f"{kind}_2_s1"
    return None


def pools_in_kpu_ram(g: Graph) -> tuple[Graph, dict[str, str]]:
    """A max pool left on the CPU whose input is a KPU layer's output (a layer made after the pools
    were placed: prelu_kpu's, residual_kpu's; or a depthwise layer, which kcc never pools) becomes a
    1x1 KPU layer with identity weights and the pool, reading the map in KPU RAM: on its input's grid
    it moves the max of the codes exactly (kcc.ir.kpu_ops.shift_copy; non-depthwise, the pairing
    nncase itself makes). Taken when it costs less than the pool's window taps on the CPU
    (kcc.target.k210's costs). Returns the graph and, by pool, what its new placement says."""
    done = {}
    for n in list(g.nodes):
        x = n.inputs[0] if n.inputs else None
        if not (isinstance(n.op, O.Pool2D) and n.op.op == "max" and isinstance(x.op, KO.FloatKpuConv)):
            continue
        code = kpu_pool_code(n.op, *x.shape[2:])
        c, h, w = x.shape[1:]
        if code is None or c > MAX_CHANNELS or min(h, w) < MIN_HW:
            continue
        layer = kpu_layer_cost(kpu_map_cycles(c, *x.shape[2:], c, False), c * c)
        if layer >= n.type.size * n.op.filter[0] * n.op.filter[1] * cpu_cycles("window_tap"):
            continue
        eye = g.insert_before(n, O.Constant(np.eye(c, dtype=np.float32)[:, :, None, None]), (), n.name + "/eye")
        zero = g.insert_before(n, O.Constant(np.zeros(c, np.float32)), (), n.name + "/zero")
        done[n.name] = f"{code}: a 1x1 KPU layer with identity weights pools the map in KPU RAM"
        g.substitute(n, g.insert_before(n, KO.FloatKpuConv(1, False, code), (x, eye, zero), n.name), "/cpu")
    if done:
        g.remove_dead()
    return g, done
