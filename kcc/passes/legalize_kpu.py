"""legalize_kpu: put every eligible convolution on the KPU as a float `FloatKpuConv`.

The KPU convolves only 1x1 or 3x3 kernels, at stride 1, with "same" padding of k//2 filled with
the input zero point (kpu_semantics.md §3). Everything else is arranged around the layer:

    conv2d(x, pad=(pt,pb), stride=s)             pad(x, t, b)              (t, b >= 0, zeros)
                                        ==>      kpu_conv2d(pool=...)      (3x3: pad 1, 1x1: none)
                                                 strided_slice(c0::s or c0::1)

With o = k//2 - pt, output row i of the tflite conv is row s*i + o + t of the KPU layer fed with
the pre-padded input (one row of pre-pad moves every KPU output row down by one). So:
* stride 1: crop c0 = o + t rows, t = max(0, -o);
* stride 2: the pool unit picks rows 0, 2, 4... (left_top_2_s2) and columns
  0, 2, ... or 1, 3, ... (right_top_2_s2); t is chosen so o + t is even, then crop (o + t)/2.
  A depthwise layer takes the pick only when it needs no pre-pad (ncc never pairs depthwise with a
  pool; kpu_sim computes the pair as any other): a CPU pad of its full-size input costs more than
  the quarter-size slice;
* other strides: a slice with step s.
A crop that keeps the whole (pooled) map is no slice at all: the layer's output stays in KPU RAM.
A stride-2 3x3 conv centred on odd rows (TFLite SAME on an even size) needs none of this when
kcc/passes/row_pick.py serves it (the conv at stride 1, then a pick layer of its odd rows), or after
`rotate180` turned the maps (kcc/passes/rotate180.py); over a layer's size limits, row_bands.py.
Bottom/right pre-pad rows are added so the KPU map is at least 4x4 and covers every row the slice
reads; rows they affect are cropped, so they change nothing (the input is zero there in tflite too).

Directly following ops are fused into the layer when the pre-pad/crop is trivial (kernel k with
tflite padding k//2, stride 1): an element-wise activation its 16-segment table can approximate
(leaky_relu, logistic, tanh, hard_swish), and a pool the KPU pool unit implements (or the first of
two it splits into: kcc/passes/kpu_pools.py), whose output the KPU RAM and size limits apply to.
A pool of a layer whose output something else reads unpooled is a second KPU layer, the same conv
with the pool, when that costs less than the pool on the CPU (`_pooled_twins`).
FULLY_CONNECTED (MatMul with constant weights) becomes a 1x1 KPU conv on a map padded to 4x4.
Every convolution that stays on the CPU gets a reason in the returned placement list. Last, a
per-channel PReLU may become two 1x1 KPU layers (kcc/passes/prelu_kpu.py), a residual add one
(kcc/passes/residual_kpu.py), a BlazeBlock's add and PReLU a relu pair in KPU RAM
(kcc/passes/prelu_stream.py), and a max pool reading a KPU layer 1x1 layers (kpu_pools.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, copy_rewriting
from kcc.ir.types import TensorType
from kcc.options import CompileOptions
from kcc.passes import gap_pick, kpu_pools, row_bands, row_pick
from kcc.passes.kernel_forms import fc_as_conv
from kcc.passes.manager import CompileContext
from kcc.passes.prelu_kpu import prelu_to_kpu
from kcc.passes.prelu_stream import STREAM_FORM, STREAM_POOL, stream_to_kpu
from kcc.passes.residual_kpu import RESIDUAL_FORMS, residual_to_kpu
from kcc.passes.rotate180 import rotate180
from kcc.target.k210 import (
    DEFAULT_MHZ,
    KERNEL_SIZES,
    KPU_RAM_SIZE,
    MAX_CHANNELS,
    MAX_H,
    MAX_MAP_PIXELS,
    MAX_W,
    MAX_WEIGHT_LOADS,
    MIN_HW,
    KpuAxis,
    cpu_cycles,
    kpu_axis,
    kpu_bytes,
    kpu_layer_cost,
    kpu_map_cycles,
    weight_loads,
)
from kcc.target.quant_rules import weights_reason

#: most estimated CPU time (float matmul, kcc.target.k210's cost model) of a small fully-connected
#: output head kept in float so that its outputs are not rounded to 8 bits: the 10 ms issue #16's
#: latency bar allows beyond 3x the KPU's time. BlazeHand's 63-landmark heads (~4 ms each) stay in
#: float; a 1001-way classifier over 1280 features (122 ms) goes to the KPU.
HEAD_CPU_MS = 10.0
#: most inputs of a fully-connected layer on the KPU: one 3x3 window over a [K/9, 3, 3] map (`fc_as_conv`)
FC_MAX_INPUTS = 9 * MAX_CHANNELS


@dataclass(frozen=True)
class Placement:
    node: str  # tflite tensor name of the conv / fc / pool
    op: str
    on_kpu: bool
    reason: str  # why it stays on the CPU, or what the KPU layer does


class _Legalizer:
    def __init__(self, g: Graph, opts: CompileOptions, fuse_mean_pools: bool, cpu_notes: dict[str, str]):
        self.src = g
        self.opts = opts
        self.fuse_mean_pools = fuse_mean_pools
        self.cpu_notes = cpu_notes  # node -> why decompose_kernels left it on the CPU
        self.unfused_means: set[int] = set()  # mean pools kept off the KPU on purpose
        self.g = Graph()
        self.map: dict[int, Node] = {}
        self.users = g.users()
        self.absorbed: set[int] = set()
        self.placements: list[Placement] = []
        self.pads: dict[tuple[int, tuple], Node] = {}  # (input, paddings) -> its CPU pre-pad
        self.views: dict = {}  # row_pick's row-band views of an input, shared by its channel groups

    # ------------------------------------------------------------------ helpers
    def _single_user(self, n: Node) -> Node | None:
        us = self.users[n]
        return us[0] if len(us) == 1 and n not in self.src.outputs else None

    def _fusable_act(self, n: Node) -> tuple[Node, tuple[str, float]] | None:
        u = self._single_user(n)
        if u is None:
            return None
        if isinstance(u.op, O.LeakyRelu):
            return u, ("leaky_relu", float(u.op.alpha))
        if isinstance(u.op, O.Unary) and u.op.op in KO.KPU_ACTIVATIONS:
            return u, (u.op.op, 0.0)
        return None

    def _is_head(self, n: Node) -> bool:
        """True when n's value reaches a graph output without passing another conv or matmul."""
        stack, seen = [n], set()
        while stack:
            m = stack.pop()
            if m in self.src.outputs:
                return True
            for u in self.users[m]:
                if id(u) not in seen and not isinstance(u.op, (O.Conv2D, O.MatMul)):
                    seen.add(id(u))
                    stack.append(u)
        return False

    def _reject(self, n: Node, reason: str) -> None:
        note = self.cpu_notes.get(n.name)
        self.placements.append(Placement(n.name, n.op.kind, False, f"{reason}; {note}" if note else reason))

    # ------------------------------------------------------------------ conv
    def _conv_problem(self, n: Node, x: Node, w: np.ndarray) -> str | None:
        op: O.Conv2D = n.op
        c, oc, k = x.shape[1], w.shape[0], w.shape[2]
        if self.opts.target == "cpu":
            return "target cpu"
        if w.shape[2] != w.shape[3]:
            return f"{w.shape[2]}x{w.shape[3]} kernel (KPU: 1x1, 3x3)"
        if k not in KERNEL_SIZES:
            return f"{k}x{k} kernel (KPU: 1x1, 3x3)"
        if op.dilation != (1, 1):
            return f"dilation {op.dilation}"
        if op.groups not in (1, c) or (op.groups == c > 1 and oc != c):
            return f"groups {op.groups} with {c} in / {oc} out channels (KPU: 1 or depthwise)"
        if max(c, oc) > MAX_CHANNELS:
            return f"{max(c, oc)} channels > {MAX_CHANNELS}"
        if op.groups == 1:  # load_time is 6 bits: at most 64 weight loads of 30 KiB (kmodel_v4.md §9.3)
            loads = weight_loads(oc, c, k, False)[1] + 1
            if loads > MAX_WEIGHT_LOADS:
                return f"{k}x{k} conv {c}->{oc} needs {loads} weight loads > {MAX_WEIGHT_LOADS}"
        # weights already on a uint8 grid quantize losslessly, whatever their range (kpu_params)
        return weights_reason(w, w, self.opts.weights_quantize_threshold)

    @staticmethod
    def _embed_2x2(w: np.ndarray, op: O.Conv2D) -> tuple[np.ndarray, O.Conv2D]:
        """A 2x2 kernel is a 3x3 one with a zero first row and column, read one row/column earlier:
        sum_k w[k] xp[s*i + k] == sum_k3 w3[k3] xp'[s*i + k3] with w3[k+1] = w[k] and one more row of
        padding before (which only ever meets the zero taps)."""
        if w.shape[2:] != (2, 2) or op.dilation != (1, 1):
            return w, op
        w3 = np.zeros((*w.shape[:2], 3, 3), np.float32)
        w3[:, :, 1:, 1:] = w
        (pt, pb), (pl, pr) = op.padding
        op3 = O.Conv2D(op.stride, ((pt + 1, pb), (pl + 1, pr)), op.dilation, op.groups, op.act)
        return w3, op3

    def _absorb_zero_pad(self, x: Node, op: O.Conv2D) -> tuple[Node, O.Conv2D]:
        """pad(x, 0.0 on H/W only) -> conv  ==  conv with the padding added (ZeroPadding2D + VALID).

        The pad may feed several convs (TFLite's converter merges the identical ZeroPadding2D layers of
        parallel branches into one PAD: ULFFD slim-320's heads): each absorbs it, and the pad dies
        with its last conv user."""
        if not (isinstance(x.op, O.Pad) and x.op.value == 0.0 and x not in self.src.outputs
                and all(isinstance(u.op, O.Conv2D) and u.inputs[0] is x for u in self.users[x])
                and x.op.paddings[0] == x.op.paddings[1] == (0, 0)):
            return x, op
        (top, bottom), (left, right) = x.op.paddings[2], x.op.paddings[3]
        (pt, pb), (pl, pr) = op.padding
        padding = ((pt + top, pb + bottom), (pl + left, pr + right))
        return x.inputs[0], O.Conv2D(op.stride, padding, op.dilation, op.groups, op.act)

    def conv(self, n: Node) -> Node | None:
        op: O.Conv2D = n.op
        x, wn, bn = n.inputs
        if not (wn.is_constant and bn.is_constant):
            self._reject(n, "weights are not constant")
            return None
        w, b = wn.data, bn.data
        if (w.shape[2:] == (1, 1) and op.groups == 1 and x.shape[2:] == (1, 1) and op.stride == (1, 1)
                and op.padding == ((0, 0), (0, 0)) and w.shape[1] <= FC_MAX_INPUTS):
            # a 1x1 conv of a 1x1 map (MobileNet v1's classifier) is a fully-connected layer
            return self._fc(n, self.map[id(x)], w[:, :, 0, 0].T, b, op.act, "conv2d", conv="")
        x, op = self._absorb_zero_pad(x, op)
        w, op = self._embed_2x2(w, op)
        problem = self._conv_problem(n, x, w)
        if problem:
            self._reject(n, problem)
            return None
        k = w.shape[2]
        depthwise = op.groups > 1
        pick_pool = row_pick.pick_pool(x.shape, n.shape, op.padding, k, op.stride, depthwise)
        if pick_pool and row_pick.serves(x.shape, n.shape, op.padding, k, op.stride, depthwise):
            return self._row_pick(n, x, w, b, pick_pool)
        _, _, h, wd = x.shape
        _, _, oh, ow = n.shape
        sh, sw = op.stride
        pick = sh == sw == 2
        ay = kpu_axis(h, op.padding[0][0], k, sh, oh, pick)
        ax = kpu_axis(wd, op.padding[1][0], k, sw, ow, pick)
        why = ""
        # (its layers read x's line groups in place: a map in KPU RAM, not the graph input the CPU slices)
        gap = gap_pick.plan(x.shape, n.shape, op.padding, k, op.stride, depthwise) if pick else None
        gap = None if isinstance(x.op, O.Input) else gap
        if gap and (ay.pre or ay.post or ax.pre or ax.post) and gap_pick.pays(x.shape, n.shape, gap):
            return self._gap_pick(n, op, x, w, b, gap)
        if depthwise and pick and (ay.pre or ay.post or ax.pre or ax.post):
            # a pre-pad costs a CPU pad of the full-resolution map (and its upload), more than the
            # quarter-resolution slice it would save: such depthwise layers keep the slice
            why = (f"stride 2 from {h}x{wd} to {oh}x{ow}: the pick would need a CPU pre-pad"
                   + (" (an odd size: the pool keeps size // 2)" if h % 2 or wd % 2 else "")
                   + ", so the full-size output is sliced on the CPU")
            pick = False
            ay = kpu_axis(h, op.padding[0][0], k, sh, oh, pick)
            ax = kpu_axis(wd, op.padding[1][0], k, sw, ow, pick)
        pool = "bypass"
        if pick:
            o_w = k // 2 - op.padding[1][0]
            pool = "left_top_2_s2" if (o_w + ax.pre) % 2 == 0 else "right_top_2_s2"
            if pool == "right_top_2_s2":  # right_top picks odd columns: index j reads column 2j+1
                ax = KpuAxis(ax.pre, ax.post, (o_w + ax.pre - 1) // 2, 1, ow)
        hp, wp = h + ay.pre + ay.post, wd + ax.pre + ax.post
        s = KO.KPU_POOLS[pool][1]
        oc = w.shape[0]
        # no slice when the layer's (pooled) output is already the conv's: a slice that copies its
        # tensor unchanged would only force the map out of KPU RAM and back (issue #16)
        no_slice = ay.crop == ax.crop == 0 and ay.step == ax.step == 1 and (oh, ow) == (hp // s, wp // s)
        trivial = ay.pre == ay.post == ax.pre == ax.post == 0 and s == 1 and no_slice
        # fuse an activation, then a pool, that follow a trivially placed layer
        tail, fn, unfused_mean, split = n, None, None, None
        if trivial:
            tail, fn = self._fusable_act(n) or (tail, fn)
            nxt = self._single_user(tail)
            if not depthwise and nxt is not None and isinstance(nxt.op, O.Pool2D):
                code = kpu_pools.kpu_pool_code(nxt.op, h, wd)
                if code and code.startswith("mean") and not self.fuse_mean_pools:
                    unfused_mean = nxt
                elif code:
                    pool, tail = code, nxt
                elif row_bands.bands(x.shape, oc) == 1:  # its rest after the layer (kcc.passes.kpu_pools)
                    shift = kpu_pools.split_max_pool(nxt.op, h, wd, fn is None and op.act[0] >= 0)
                    pool, split = ("max_2_s1", nxt) if shift is not None else (pool, None)
        # KPU RAM and the DMA register hold the pooled output (tiny YOLO's 320x240 conv + 2x2 max: 160x120)
        s = KO.KPU_POOLS[pool][1]
        # over the layer limits: on the map's row bands (tiny YOLO's first layer at 320x320; DeepLab's
        # 257x257 stem at stride 2, its input pre-padded on the CPU as any picked input is)
        banded = not depthwise and no_slice and (trivial or (pick and isinstance(x.op, O.Input)))
        m = row_bands.serves((x.shape[0], x.shape[1], hp, wp), oc, k, pool) if banded else None
        if m:
            if unfused_mean is not None:
                self.unfused_means.add(id(unfused_mean))
            kop = KO.FloatKpuConv(k, False, pool, op.act, fn)
            xin = self._pre_pad(n, self.map[id(x)], ay, ax)
            y, what = row_bands.build(self.g, n, tail.name, (xin, *self._consts(n, w, b)), kop, m, self.views)
            self.placements.append(Placement(n.name, "conv2d", True, what))
            return self._absorb(n, tail, y)
        if not (MIN_HW <= hp <= MAX_H and MIN_HW <= wp <= MAX_W):
            self._reject(n, f"KPU input {hp}x{wp} outside {MIN_HW}..{MAX_H} x {MIN_HW}..{MAX_W}")
            return None
        need = kpu_bytes((x.shape[0], x.shape[1], hp, wp)) + kpu_bytes((x.shape[0], oc, hp // s, wp // s))
        if need > KPU_RAM_SIZE:
            self._reject(n, f"KPU RAM: input + output maps need {need} B > {KPU_RAM_SIZE} B")
            return None
        if (hp // s) * (wp // s) > MAX_MAP_PIXELS:
            self._reject(n, f"KPU output map {hp // s}x{wp // s} > {MAX_MAP_PIXELS} pixels (DMA register)")
            return None
        if unfused_mean is not None:
            self.unfused_means.add(id(unfused_mean))
        g = self.g
        xin = self._pre_pad(n, self.map[id(x)], ay, ax)
        wc, bc = self._consts(n, w, b)
        kop = KO.FloatKpuConv(k, depthwise, pool, op.act, fn)
        name = tail.name if tail is not n else n.name
        y = g.add(kop, (xin, wc, bc), (name if no_slice else n.name + "/kpu") + ("/max_2_s1" if split else ""))
        if not no_slice:
            begin = (0, 0, ay.crop, ax.crop)
            end = (y.shape[0], y.shape[1], ay.crop + ay.step * (oh - 1) + 1, ax.crop + ax.step * (ow - 1) + 1)
            y = g.add(O.StridedSlice(begin, end, (1, 1, ay.step, ax.step)), (y,), n.name)
        what = f"{k}x{k}{' depthwise' if depthwise else ''}, pool {pool}" + (f", {fn[0]}" if fn else "")
        pads = f"padding {[list(p) for p in op.padding]}, the KPU pads {k // 2} on every side"
        extras = [e for e, on in ((f"pre-pad on CPU: {pads}", ay.pre or ay.post or ax.pre or ax.post),
                                  (f"crop/slice on CPU: {why}" if why else "crop/slice on CPU", not no_slice)) if on]
        self.placements.append(Placement(n.name, "conv2d", True, what + (f" ({', '.join(extras)})" if extras else "")))
        y = self._absorb(n, tail, y)
        if split is not None:  # its placement until kpu_pools.pools_in_kpu_ram places the rest
            y = self._absorb(tail, split, kpu_pools.rest_of_split(g, y, split.name, shift))
            self._reject(split, kpu_pools.split_note(shift))
        if trivial and not depthwise and pool == "bypass":
            self._pooled_twins(tail, kop, (xin, wc, bc), (h, wd))
        return y

    def _absorb(self, n: Node, tail: Node, y: Node) -> Node:
        """Everything between n and tail (fused into the layer computing y) now maps to y."""
        node = n
        while node is not tail:
            node = self.users[node][0]
            self.absorbed.add(id(node))
            self.map[id(node)] = y
        return y

    def _pooled_twins(self, tail: Node, kop: KO.FloatKpuConv, ins: tuple[Node, Node, Node],
                      hw: tuple[int, int]) -> None:
        """A pool reading a layer's output that something else reads unpooled: the pool unit writes a
        layer's pooled output only (kpu_semantics.md §3 step 5), so a second KPU layer, the same conv
        with the pool, computes the pooled copy, when it costs less than the pool on the CPU
        (kcc.target.k210's costs: the twin's KPU time against the pool's window taps)."""
        x, w, _ = ins
        c, oc = x.shape[1], w.shape[0]
        for u in self.users[tail]:
            if not isinstance(u.op, O.Pool2D):
                continue
            code = kpu_pools.kpu_pool_code(u.op, *hw)
            if code is None or (code.startswith("mean") and not self.fuse_mean_pools):
                continue
            twin = kpu_layer_cost(kpu_map_cycles(c, *hw, oc, False), w.type.size)
            taps = u.type.size * u.op.filter[0] * u.op.filter[1] * cpu_cycles("window_tap")
            if twin >= taps:
                continue
            op = KO.FloatKpuConv(kop.kernel, kop.depthwise, code, kop.act, kop.fn)
            self.map[id(u)] = self.g.add(op, ins, u.name)
            self.absorbed.add(id(u))
            self.placements.append(Placement(u.name, "pool2d", True, f"{code}: a second KPU layer computes "
                                             f"'{tail.name}' pooled, as its unpooled output is read too"))

    def _pre_pad(self, n: Node, xin: Node, ay: KpuAxis, ax: KpuAxis) -> Node:
        """xin with conv n's pre-pad on the CPU (kcc.target.k210.kpu_axis), if any."""
        if not (ay.pre or ay.post or ax.pre or ax.post):
            return xin
        pads = ((0, 0), (0, 0), (ay.pre, ay.post), (ax.pre, ax.post))
        key = (id(xin), pads)  # layers pre-padding one input alike (channel groups) share the pad
        if key not in self.pads:
            self.pads[key] = self.g.add(O.Pad(pads, 0.0), (xin,), n.name + "/kpu_pad")
        return self.pads[key]

    def _row_pick(self, n: Node, x: Node, w: np.ndarray, b: np.ndarray, pool: str) -> Node:
        """Stride-2 conv n centred on odd rows as the conv at stride 1 and a pick layer, both in KPU RAM
        (kcc.passes.row_pick); a following activation the table takes fuses into the conv."""
        tail, fn = self._fusable_act(n) or (n, None)
        wc, bc = self._consts(n, w, b)
        y, what = row_pick.build(self.g, n, tail.name, (self.map[id(x)], wc, bc), fn, pool, self.views)
        self.placements.append(Placement(n.name, "conv2d", True, what))
        return self._absorb(n, tail, y)

    def _consts(self, n: Node, w: np.ndarray, b: np.ndarray) -> tuple[Node, Node]:
        """Conv n's weights w (rewritten or not) and bias b as constants of the new graph."""
        wn, bn = n.inputs[1], n.inputs[2]
        wc = self.map[id(wn)] if id(wn) in self.map and w is wn.data else self.g.constant(w, wn.name + "/kpu")
        return wc, self.g.constant(b, bn.name) if id(bn) not in self.map else self.map[id(bn)]

    def _gap_pick(self, n: Node, op: O.Conv2D, x: Node, w: np.ndarray, b: np.ndarray, plan: gap_pick.Plan) -> Node:
        """Stride-2 depthwise n (as op) on an odd size as stride-1 layers, one per line group, written
        into a map with a gap row (and column), and a pick layer over it (kcc.passes.gap_pick)."""
        y, what = gap_pick.build(self.g, n, op, self.map[id(x)], w, b, plan)
        self.placements.append(Placement(n.name, "conv2d", True, what))
        return self._absorb(n, n, y)

    # ------------------------------------------------------------------ fully connected
    def matmul(self, n: Node) -> Node | None:
        a, bw, bias = n.inputs
        if not (bw.is_constant and bias.is_constant):
            return None
        k_in, oc = bw.shape
        reason = None
        if self.opts.target == "cpu":
            reason = "target cpu"
        elif k_in > FC_MAX_INPUTS:  # no exact sum of two KPU layers' partial sums (kcc.quant.cpu_matmul)
            reason = f"{k_in} inputs > {FC_MAX_INPUTS} (a 3x3 KPU conv's reach): a uint8 matmul on the CPU"
        elif oc > MAX_CHANNELS:
            reason = f"{k_in}x{oc} weights: more than {MAX_CHANNELS} channels"
        elif k_in * oc < self.opts.output_quantize_threshold:
            reason = f"{k_in * oc} weights < output-quantize-threshold {self.opts.output_quantize_threshold}"
        elif (n.type.size < self.opts.output_quantize_threshold and self._is_head(n) and k_in <= MAX_CHANNELS
              and cpu_cycles("matmul_mac") * k_in * oc <= HEAD_CPU_MS * DEFAULT_MHZ * 1e3):
            # a small fully-connected output head (landmarks, scores) costs the CPU little in float,
            # while 8-bit outputs would quantize the model's result itself (over 1024 inputs the CPU's
            # uint8 matmul would round them as the KPU does)
            reason = (f"{n.type.size} outputs < output-quantize-threshold {self.opts.output_quantize_threshold}"
                      f" (a head of at most {HEAD_CPU_MS:g} ms in float)")
        else:
            reason = weights_reason(bw.data, bw.data.T, self.opts.weights_quantize_threshold)
        if reason:
            self._reject(n, reason)
            return None
        y = self._fc(n, self.map[id(a)], bw.data, bias.data, n.op.act, "matmul")
        return None if y is None else self.g.add(O.Reshape((a.shape[0], oc)), (y,), n.name)

    def _fc(self, n: Node, xin: Node, w: np.ndarray, b: np.ndarray, act: tuple[float, float], kind: str,
            conv: str = "/conv") -> Node | None:
        """Fully-connected weights w [K, OC] over xin [N, K, (1, 1)] as one 3x3 KPU layer (`fc_as_conv`):
        xin's bytes read as a [K/9, 3, 3] map (legalized like any conv: padded to 4x4, cropped), its
        output [N, OC, 1, 1]: all K products in one accumulation, as exact as a 1x1 layer's."""
        g = self.g
        nb, (k_in, oc) = xin.shape[0], w.shape
        w4, k = fc_as_conv(w)
        if xin.type.rank != 2:
            xin = g.add(O.Reshape((nb, k_in)), (xin,), n.name + "/as_vector")
        if w4.shape[1] * k * k != k_in:
            xin = g.add(O.Pad(((0, 0), (0, w4.shape[1] * k * k - k_in)), 0.0), (xin,), n.name + "/pad_inputs")
        x4 = g.add(O.Reshape((nb, w4.shape[1], k, k)), (xin,), n.name + "/as_map")
        w4, b1 = g.constant(w4, n.name + "/oihw"), g.constant(b, n.name + "/bias")
        # stride 2 changes nothing for the one window a VALID 3x3 conv has on a 3x3 map, but it lets
        # the pool unit pick that window's output (the map pre-padded top and left to 4x4, left_top_2_s2):
        # 4 bytes a channel to copy out of KPU RAM instead of the 4x4 map's 16
        conv_src = Node(n.name + conv, O.Conv2D(stride=(2, 2), act=act), (x4, w4, b1), TensorType((nb, oc, 1, 1)))
        self.users[conv_src] = []
        for v in (x4, w4, b1):
            self.map[id(v)] = v
        y = self.conv(conv_src)
        if y is not None:
            form = f"3x3 conv over its {k_in} inputs as a {w4.shape[1]}x3x3 map"
            self.placements[-1] = Placement(n.name, kind, True, "as " + form)
        return y

    # ------------------------------------------------------------------ driver
    def run(self) -> Graph:
        return copy_rewriting(self.src, self.g, self.map, self._legalize)

    def _legalize(self, n: Node) -> Node | None:
        """n's node on the KPU (or its reason for staying on the CPU), None to copy it as it is."""
        if id(n) in self.absorbed:  # fused into the KPU layer before it, which maps it already
            return self.map[id(n)]
        if isinstance(n.op, O.Conv2D):
            return self.conv(n)
        if isinstance(n.op, O.MatMul):
            return self.matmul(n)
        if isinstance(n.op, O.Pool2D) and id(n) in self.unfused_means:
            self._reject(n, "mean pool on the CPU: it rounds as the model's uint8 average pool does "
                            "(the KPU's mean pools floor)")
        elif isinstance(n.op, O.Pool2D):
            self._reject(n, "pool not fused into a KPU layer (runs in float on the CPU)")
        elif isinstance(n.op, O.Conv2DTranspose):
            self._reject(n, "transpose conv (CPU)")
        return None


def legalize_kpu(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Rewrite a canonical float graph so that KPU-eligible layers become `FloatKpuConv` nodes; one
    `Placement` per conv / fc / pool goes to ctx.placements, the CPU ones with their reason and, for
    a conv decompose_kernels kept, its decision's (`Decision.cpu_note` of ctx.decisions).

    With ctx.own_grids mean pools stay off the KPU pool unit, which floors: a pre-quantized model's
    average pools then run on the CPU on the uint8 codes and round as TFLite's do (kcc.quant.quantize)."""
    ctx = ctx or CompileContext()
    if ctx.options.target != "cpu" and ctx.quantization is None and not ctx.own_grids:
        g = rotate180(g)  # SAME stride-2 layers on the KPU's picks (a pre-quantized model keeps its layout)
    notes = {d.node: d.cpu_note for d in ctx.decisions if d.cpu_note}
    lg = _Legalizer(g, ctx.options, not ctx.own_grids, notes)
    out = lg.run()
    ctx.placements.extend(lg.placements)
    if ctx.quantization is None and not ctx.own_grids:  # a pre-quantized model keeps its PReLU grids
        out, done = prelu_to_kpu(out, ctx.options, ctx.room_rate)
        ctx.placements.extend(Placement(name, "prelu", True, "two 1x1 KPU layers") for name in done)
        out, done, kept = residual_to_kpu(out, ctx.options, ctx.samples)
        ctx.placements.extend(Placement(name, "add", True, RESIDUAL_FORMS[form]) for name, form in done)
        kept = dict(kept)
        out, done, pools, stream_kept = stream_to_kpu(out, ctx.options, ctx.stream_adds)
        for name in done:  # a BlazeBlock add residual_kpu left on the CPU
            kept.pop(name, None)
        kept.update((name, why) for name, why in stream_kept if name not in kept)
        on_kpu = set(pools)
        ctx.placements[:] = [p for p in ctx.placements if not (p.op == "pool2d" and p.node in on_kpu)]
        ctx.placements.extend(Placement(name, "pool2d", True, STREAM_POOL) for name in pools)
        ctx.placements.extend(Placement(name, "add", True, STREAM_FORM) for name in done)
        ctx.placements.extend(Placement(name, "add", False, why) for name, why in kept.items())
    if ctx.options.target != "cpu":
        out = kpu_pools.pools_in_kpu_ram(out, ctx.placements)
        out = kpu_pools.max_pools_of_uploaded_groups(out, ctx.placements)
        out, done = kpu_pools.half_pixel_x2_on_kpu(out)
        ctx.placements.extend(Placement(name, "resize", True, kpu_pools.UPSAMPLING_FORM) for name in done)
    return out
