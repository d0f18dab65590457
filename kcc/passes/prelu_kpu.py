"""prelu_kpu: a per-channel PReLU as two 1x1 KPU layers, where that is estimated faster (issue #16).

    prelu(x, a) = relu(x) - a * relu(-x)                                      (exact, any a)
      layer A  1x1, C -> 2C, weights [I; -I], bias 0, clamp (0, inf)          -> [relu(x); relu(-x)]
      layer B  1x1, 2C -> C, weights [I, -diag(a)], bias 0, no clamp          -> prelu(x, a)

Only after a KPU layer (x is its 8-bit output already; a PReLU after a BlazeBlock's residual add is
kcc.passes.prelu_stream's), and not when a decomposed conv reads the
result through QuantResidual channels (kcc.passes.decompose_kernels), which a float PReLU feeds
with more than 8 bits. When x is itself a bypass-pool KPU conv with no clamp or table activation
and no other reader, layer A is that conv with its weights and bias stacked [W; -W], [b; -b] and
the clamp (0, inf): one layer is saved. Both layers stay in KPU RAM, so a PReLU between two KPU
layers no longer sends the map to the CPU (copy out, dequantize, two float ops, quantize, upload).
The layers are
`FloatKpuConv` nodes made before calibration, so they are calibrated and quantized like any other.
The layer limits are kcc.target.k210's (kpu_semantics.md §3, kmodel_v4.md §9.3); the choice
compares the two forms with its cost model (the kmodel nodes each form becomes, as kcc.latency
counts them). In a model over its device RAM budget (kcc.pipeline's retry), the pair must also save
at least as many cycles per kmodel byte of its layers as the least the room buys in a decomposed conv
(CompileContext.room_rate): BlazePalm's 12x12x256 pair (~200 KB for ~20 ms) gave way to two 5x5s
taken off the CPU.
"""

from __future__ import annotations

import math

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_values, copy_rewriting
from kcc.options import CompileOptions
from kcc.passes.float_prelu import float_prelu_cycles
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    KPU_LAYER_BYTES,
    cpu_cycles,
    kpu_layer_cost,
    kpu_map_cycles,
    layer_fits,
    upload_cycles,
)
from kcc.target.quant_rules import fixup_range

F32 = np.float32
RELU = (0.0, math.inf)




def _layer_cycles(shape: tuple[int, ...], oc: int, k: int) -> float:
    """A KPU layer's cycles (kcc.target.k210 cost model; uint8 weights) with its CPU dispatch."""
    nb, c, h, w = shape
    return kpu_layer_cost(nb * kpu_map_cycles(c, h, w, oc, False), oc * c * k * k) + CPU_NODE_CYCLES


def _per_element(key: str, v: Node) -> float:
    return CPU_NODE_CYCLES + cpu_cycles(key) * v.type.size


def _upload(v: Node) -> float:
    return upload_cycles(v.shape)


class _Rewriter:
    def __init__(self, g: Graph, opts: CompileOptions, room_rate: float | None):
        self.src, self.opts, self.room_rate = g, opts, room_rate
        self.users = g.users()
        self.g = Graph()
        self.map: dict[int, Node] = {}
        self.rewritten: list[str] = []

    def _kpu(self, v: Node) -> bool:
        return isinstance(v.op, KO.FloatKpuConv)

    def _kpu_readers(self, v: Node) -> bool:
        return v not in self.src.outputs and all(self._kpu(u) for u in self.users[v])

    def _stackable(self, x: Node) -> bool:
        """x is a conv layer A can be made of: [W; -W] then relu, nothing between (module docstring)."""
        op = x.op
        return (self._kpu(x) and not op.depthwise and op.pool == "bypass" and op.act == O.NO_CLAMP
                and op.fn is None and len(self.users[x]) == 1 and x not in self.src.outputs
                and x.inputs[1].is_constant and x.inputs[2].is_constant
                and layer_fits(x.inputs[0].shape, 2 * x.shape[1], op.kernel))

    def _faster(self, n: Node, x: Node, stacked: bool, slopes: np.ndarray) -> bool:
        """Cycles of today's CPU form (kcc.passes.lower_to_neutral `float_prelu_cycles`: a 1x1 depthwise
        float conv and a binary op an element) against the two layers', with the data movement
        each needs around it; with a room rate, the cycles saved per kmodel byte of the two layers
        beyond x's own must reach it."""
        c = x.shape[1]
        cpu = float_prelu_cycles(n, slopes)
        kpu = _layer_cycles((x.shape[0], 2 * c, *x.shape[2:]), c, 1)  # layer B
        if stacked:  # layer A is x's conv with twice its output channels
            xin, k = x.inputs[0], x.op.kernel
            kpu += _layer_cycles(xin.shape, 2 * c, k) - _layer_cycles(xin.shape, c, k)
        else:
            kpu += _layer_cycles(x.shape, 2 * c, 1)
        cpu += _per_element("dequantize", x)  # the CPU form reads x's codes out of the KPU layer
        if all(self._kpu(u) for u in self.users[x] if u is not n):
            cpu += cpu_cycles("kpu_download_byte") * x.type.size
        if self._kpu_readers(n):  # KPU readers: the CPU result is quantized and uploaded
            cpu += _per_element("quantize", n) + _upload(n)
        else:  # CPU readers: the KPU result is copied out and dequantized
            kpu += cpu_cycles("kpu_download_byte") * n.type.size + _per_element("dequantize", n)
        if self.room_rate is not None:
            kb = x.inputs[0].shape[1] * x.op.kernel ** 2 if stacked else 2 * c  # layer A's weights a channel
            extra = 2 * KPU_LAYER_BYTES + c * kb + 2 * c * c  # layer A beyond x's own, layer B
            return cpu - kpu >= self.room_rate * extra
        return kpu < cpu

    def prelu(self, n: Node) -> Node | None:
        x, alpha = n.inputs
        a = channel_values(x, alpha)
        # only after a KPU layer, whose output is 8-bit codes already: a float x (a residual add)
        # would be rounded twice more, and a float result feeding a decomposed conv gets extra bits
        # from its QuantResidual channels (kcc.passes.decompose_kernels), which codes would lose
        if a is None or not self._kpu(x) or any(isinstance(u.op, KO.QuantResidual) for u in self.users[n]):
            return None
        c = x.shape[1]
        wb = np.zeros((c, 2 * c, 1, 1), F32)
        wb[np.arange(c), np.arange(c), 0, 0] = 1.0
        wb[np.arange(c), c + np.arange(c), 0, 0] = -a
        rng = max(np.subtract(*fixup_range(float(r.min()), float(r.max()))[::-1]) for r in wb.reshape(c, -1))
        if rng > self.opts.weights_quantize_threshold:
            return None
        stacked = self._stackable(x)
        if not layer_fits((x.shape[0], 2 * c, *x.shape[2:]), c, 1):
            return None
        if not stacked and not layer_fits(x.shape, 2 * c, 1):
            return None
        if not self._faster(n, x, stacked, a):
            return None
        g = self.g
        if stacked:  # x's own copy in the new graph dies: nothing else reads it
            xin, w, b = (self.map[id(i)] for i in x.inputs)
            ws = g.constant(np.concatenate([w.data, -w.data]), x.name + "/prelu_split_w")
            bs = g.constant(np.concatenate([b.data, -b.data]), x.name + "/prelu_split_b")
            split = g.add(KO.FloatKpuConv(x.op.kernel, act=RELU), (xin, ws, bs), x.name + "/prelu_split")
        else:
            wa = np.concatenate([np.eye(c, dtype=F32), -np.eye(c, dtype=F32)])[:, :, None, None]
            ins = (self.map[id(x)], g.constant(wa, n.name + "/prelu_split_w"),
                   g.constant(np.zeros(2 * c, F32), n.name + "/prelu_split_b"))
            split = g.add(KO.FloatKpuConv(1, act=RELU), ins, n.name + "/prelu_split")
        ins = (split, g.constant(wb, n.name + "/prelu_merge_w"),
               g.constant(np.zeros(c, F32), n.name + "/prelu_merge_b"))
        self.rewritten.append(n.name)
        return g.add(KO.FloatKpuConv(1), ins, n.name)

    def run(self) -> Graph:
        return copy_rewriting(self.src, self.g, self.map,
                              lambda n: self.prelu(n) if isinstance(n.op, O.PRelu) else None)


def prelu_to_kpu(g: Graph, opts: CompileOptions, room_rate: float | None = None) -> tuple[Graph, list[str]]:
    """Rewrite each per-channel PReLU that is estimated faster as two KPU layers (module docstring;
    `room_rate`: CompileContext's); returns the new graph and the names of the PReLUs rewritten."""
    if opts.target == "cpu" or not any(isinstance(n.op, O.PRelu) for n in g.nodes):
        return g, []
    rw = _Rewriter(g, opts, room_rate)
    out = rw.run()
    return out, rw.rewritten
