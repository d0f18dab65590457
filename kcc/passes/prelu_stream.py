"""prelu_stream: a BlazeBlock's residual stream kept in KPU RAM as relu pairs (issue #16 item 3).

MediaPipe's BlazeBlocks (BlazePalm, iris, hand recrop) compute a = proj(h) + skip, then y = PReLU(a)
with a slope per channel, and y (or a) is the next block's skip. prelu_kpu needs a KPU layer before
the PReLU and residual_kpu both operands on the KPU, so the pair (add, PReLU) stays on the CPU
between KPU layers. Here the add becomes ONE 1x1 KPU layer over a stack of its terms (a KpuStack,
kcc.passes.residual_kpu) whose output is the pair

    R = [relu(a); relu(-a)]             weights [W; -W], bias [b; -b], clamp (0, inf)

of 2C channels, and every reader takes what it needs of a through its weights, exactly in float:

    a          = [I, -I] R
    PReLU(a)   = [I, -diag(alpha)] R    (relu(a) - alpha relu(-a), any alpha)

A value is kept as a *form* (N, E, beta): v = E N + beta per pixel, N a KPU layer of K channels, E
[C, K]. Readers:
* a KPU conv (1x1 or 3x3, any pool, clamp or table): weights W E over N's K channels (its padding is
  zero in N as in v; beta must be 0 unless the conv is 1x1, where W beta joins the bias);
* a depthwise KPU layer with no activation and a linear pool (bypass or a stride-2 pick), E with one
  non-zero per column: a depthwise layer over N's K channels, kernels w_c E_cj, bias b_c on one column
  per channel; its value is S D, S summing the columns of each channel (its readers fold S);
* the next add: N is a part of its stack with the weights E (the projection h -> W fused as in
  residual_kpu's fused form, its input h the last part, whose grid is the stack's input offset);
* a channel pad (zero rows of E) or a channel slice (rows of E): no node;
* a 2x2 stride-2 max pool: one 1x1 layer over N with weights E and the pool unit's max_2_s2;
* anything else (a CPU op, a graph output): v made explicit by a 1x1 layer over N with weights E
  ("merge"), as prelu_kpu's layer B, and today's CPU op reads it.
Parts of a stack start on a 64-byte line of KPU RAM (kcc.kmodel.kpu_channel_offset), a layer's
output is written into one stack only (a second stack reading it gets a merge layer of its own), and
every layer stays within the KPU's limits (1024 channels, weight loads, KPU RAM).

Taken for a BlazeBlock's add: a residual add (the skip, through a channel pad or slice and a max
pool, an ancestor of the other operand; not a decomposed conv's sum of terms) read by a per-channel
PReLU, when every term is a KPU layer or a form, and estimated faster than today's CPU add and PReLU
with the cost model of kcc.target.k210 (as prelu_kpu and residual_kpu; `_Rewriter._faster`).

Where the chain ends. The stream needs a KPU skip to start (a KPU layer, or a max pool of one whose
readers are BlazeBlock adds: iris' first block reads prelu_kpu's layer, hand recrop's a 1x1 depthwise
layer's pool), or a CPU skip it uploads (below; not the graph input). It ends at an operand the CPU makes (iris' 2x2 maps, padded and sliced on the CPU),
where that block stays as it is; a CPU reader of a streamed value gets a merge layer's 8-bit copy.
The stride-2 skip pool needs no alpha >= 0 (maxpool(prelu(a)) = prelu(maxpool(a)) would): its layer
computes the PReLU first, then pools, exact for any slope. Kept on the CPU, as today:
* a sum or PReLU the model outputs (a float result would be rounded);
* a PReLU a decomposed conv reads through QuantResidual channels (kcc.passes.decompose_kernels): that
  reader takes more than 8 bits of the float value, which the pair's codes would lose;
* folded weights over --weights-quantize-threshold.

Large maps. A pair over STREAM_PAIR_RAM (BlazePalm's 96x96 blocks of 32 channels: 768 KiB) is no
form: its PReLU is made explicit at once, one merge layer [I, -diag(alpha)] from the pair to C
channels, which the next block's stack and the 5x5's copies read like any KPU layer's output. Only
the block's stack and its pair are then alive at its peak (2 x 768 KiB); a pair that is a form stays
alive beside the next stack and the copies, which overflows the 2 MiB there.

Decomposed readers (BlazePalm: every block's depthwise is a 5x5). decompose_kernels runs before
this pass and asks first which PReLUs it will keep in KPU RAM (kcc.passes.blaze_blocks.streamed_prelus:
the PReLUs of BlazeBlock adds whose pair takes at most EXPLICIT_PAIR_RAM); it decomposes a conv reading one
as an 8-bit KPU input, without the residual channels, as it would a KPU layer's output. The decomposed
form's shifted copies (depthwise KPU layers concatenated in KPU RAM) read the PReLU made explicit
by one merge layer per channel group, each on its own output grid as the groups the CPU quantizes
are (one merge sliced into the groups cost BlazePalm's 24x24 streams 0.002 of cosine,
docs/measurements.md §31; a depthwise reader whose readers are not all KPU convs is not split over
the pair). A skip the CPU makes (BlazePalm's stem PReLU; the channel-padded pool of
a block too large to stream) is uploaded by a 1x1 identity layer, a part of the stack: the stream
starts there.

Precision: the CPU keeps the stream in float from block to block; here it is rounded to 8 bits once
per block, on R's grid, and each reader's weights are rounded over twice the channels. Measured on the
kit (bench/board.py, mean cosine, before -> after): iris_landmark_64 board 0.99998 -> 0.99997, l2
0.99998 -> 0.99999, float_in 0.99997 -> 0.99998; hand_recrop_256 0.99993 -> 0.99998 (all three
builds): the relu pair splits a's range in two grids' worth of codes, and the skip pools and channel
pads no longer round y separately. The price is weights: a stack layer holds 2C x (2C + C_h) weights
where the projection held C x C_h, and the readers of the pair twice theirs (iris' kmodel 1.49 ->
3.37 MB, still within MaixPy's 3.5 MiB with its working memory, which falls from 590 to 25 KB).
palm_detection_lite_192 (its four 64-channel 48x48 blocks streamed, their 5x5s read as 8-bit codes;
bench/board.py, main -> this): board 6586.7 -> 5311.1 ms, device RAM 5.40 -> 5.47 MiB, mean cosine
board 0.99654 -> 0.99561, l2 0.99666 -> 0.99576, float_in 0.99678 -> 0.99578; iris and hand recrop
byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_values
from kcc.kmodel import kpu_channel_offset
from kcc.options import CompileOptions
from kcc.passes.blaze_blocks import blaze_add, channel_selection, explicit_prelu, pair_shape, prelu_reader
from kcc.passes.float_prelu import float_prelu_cycles
from kcc.passes.prelu_kpu import _layer_cycles, _per_element, _upload
from kcc.passes.residual_kpu import _reaches, upload_layer
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    cpu_cycles,
    layer_fits,
)
from kcc.target.quant_rules import widest_weight_range

F32 = np.float32
RELU = (0.0, math.inf)
#: what the placement report says of a stream's add and of a BlazeBlock's pooled skip
STREAM_FORM = ("with its PReLU: one 1x1 KPU layer over its terms in KPU RAM, to [relu(a); relu(-a)] that its "
               "readers take through their weights, or that one more 1x1 layer makes the PReLU where the pair "
               "is too large to stay beside the next block's stack (kcc.passes.prelu_stream)")
STREAM_POOL = "a BlazeBlock's skip: a 1x1 KPU layer over its relu pair with the pool unit's max_2_s2"
LINEAR_POOLS = ("bypass", "left_top_2_s2", "right_top_2_s2")  # picks: a depthwise split stays exact


@dataclass
class _Form:
    """v = e @ node + beta per pixel (module docstring)."""

    node: Node  # a FloatKpuConv of the new graph, K channels
    e: np.ndarray  # [C, K] float64
    beta: np.ndarray  # [C] float64

    @property
    def identity(self) -> bool:
        c, k = self.e.shape
        return c == k and np.array_equal(self.e, np.eye(c)) and not np.any(self.beta)


def _is_kpu(v: Node) -> bool:
    return isinstance(v.op, KO.FloatKpuConv)


class _Rewriter:
    def __init__(self, g: Graph, opts: CompileOptions, adds: set[str] | None = None):
        self.src, self.opts, self.adds = g, opts, adds
        self.users = g.users()
        self.outputs = {id(o) for o in g.outputs}
        self.g = Graph()
        self.map: dict[int, Node] = {}  # source node -> its explicit node in the new graph
        self.forms: dict[int, _Form] = {}  # source node -> its form, when it has one
        self.stacked: set[int] = set()  # new-graph layers already written into a stack
        self.done: list[str] = []  # adds rewritten
        self.pools: list[str] = []  # max pools made KPU layers
        self.kept: list[tuple[str, str]] = []  # (add, why it stays on the CPU)
        self.uploads: dict[int, Node] = {}  # CPU skip -> the 1x1 identity layer uploading it (`_upload_layer`)

    # ------------------------------------------------------------------ values
    def explicit(self, v: Node) -> Node:
        """v's node in the new graph; a form is made explicit by a 1x1 "merge" layer (docstring)."""
        if id(v) not in self.map:
            f = self.forms[id(v)]
            self.map[id(v)] = f.node if f.identity else self._merge(f, v.name)
        return self.map[id(v)]

    def _merge(self, f: _Form, name: str, pool: str = "bypass") -> Node:
        g = self.g
        ins = (f.node, g.constant(f.e.astype(F32)[:, :, None, None], name + "/merge_w"),
               g.constant(f.beta.astype(F32), name + "/merge_b"))
        return g.add(KO.FloatKpuConv(1, pool=pool), ins, name)

    # ------------------------------------------------------------------ readers
    def conv(self, n: Node) -> Node | None:
        """A KPU layer reading a form: its weights through E (docstring); None if it cannot."""
        x, wn, bn = n.inputs
        f = self.forms.get(id(x))
        if f is None or not (wn.is_constant and bn.is_constant) or id(x) in self.outputs:
            return None
        op: KO.FloatKpuConv = n.op
        w, b = wn.data.astype(np.float64), bn.data.astype(np.float64)
        k_in = f.e.shape[1]
        g = self.g
        if not op.depthwise:
            if np.any(f.beta) and op.kernel != 1:
                return None
            if not layer_fits(f.node.shape, n.shape[1], op.kernel, False, KO.KPU_POOLS[op.pool][1]):
                return None
            w2 = np.einsum("ocij,ck->okij", w, f.e)
            if widest_weight_range(w2) > max(self.opts.weights_quantize_threshold, widest_weight_range(w)):
                return None
            b2 = b + w[:, :, 0, 0] @ f.beta if op.kernel == 1 else b
            ins = (f.node, g.constant(w2.astype(F32), wn.name + "/stream"), g.constant(b2.astype(F32), bn.name + "/stream"))
            return g.add(op, ins, n.name)
        # depthwise: one non-zero per column of E, no activation, a linear pool, beta 0
        if op.act != O.NO_CLAMP or op.fn is not None or op.pool not in LINEAR_POOLS or np.any(f.beta):
            return None
        if not all(_is_kpu(r) for r in self.users[n]) or id(n) in self.outputs:
            # its readers would need the sum made explicit (the shifted copies of a decomposed 5x5,
            # concatenated in KPU RAM): one merge of the input serves every such layer instead
            return None
        nz = f.e != 0
        if not np.all(nz.sum(axis=0) == 1) or not np.all(nz.any(axis=1)):
            return None
        if not layer_fits(f.node.shape, k_in, op.kernel, True, KO.KPU_POOLS[op.pool][1]):
            return None
        owner = np.argmax(nz, axis=0)  # column j belongs to channel owner[j]
        wd = w[owner] * f.e[owner, np.arange(k_in)][:, None, None, None]
        if widest_weight_range(wd) > max(self.opts.weights_quantize_threshold, widest_weight_range(w)):
            return None
        first = np.zeros(k_in, bool)
        first[[int(np.flatnonzero(owner == c)[0]) for c in range(f.e.shape[0])]] = True
        bd = np.where(first, b[owner], 0.0)
        ins = (f.node, g.constant(wd.astype(F32), wn.name + "/stream"), g.constant(bd.astype(F32), bn.name + "/stream"))
        d = g.add(op, ins, n.name + "/stream")
        s = np.zeros((f.e.shape[0], k_in))
        s[owner, np.arange(k_in)] = 1.0
        self.forms[id(n)] = _Form(d, s, np.zeros(f.e.shape[0]))
        return d

    def _blaze_add(self, n: Node) -> bool:
        return blaze_add(n, self.users)

    def _prelu_of(self, n: Node) -> Node | None:
        return prelu_reader(n, self.users)

    def _skip_of_blaze_adds(self, n: Node) -> bool:
        """n's readers, through channel pads and slices, are BlazeBlock adds (a stride-2 block's skip)."""
        us = self.users[n]
        return bool(us) and id(n) not in self.outputs and all(
            self._blaze_add(u) or (channel_selection(u) is not None and self._skip_of_blaze_adds(u)) for u in us)

    def pool(self, n: Node) -> Node | None:
        """A 2x2 stride-2 max pool of a form, or of a KPU layer when it is the skip of BlazeBlock adds:
        one 1x1 layer with the pool unit's max_2_s2."""
        op: O.Pool2D = n.op
        x = n.inputs[0]
        f = self.forms.get(id(x))
        if f is None and id(x) in self.map and _is_kpu(self.map[id(x)]) and self._skip_of_blaze_adds(n):
            c = x.shape[1]
            f = _Form(self.map[id(x)], np.eye(c), np.zeros(c))
        if (f is None or op.op != "max" or op.filter != (2, 2) or op.stride != (2, 2) or op.act != O.NO_CLAMP
                or op.padding != ((0, 0), (0, 0)) or x.shape[2] % 2 or x.shape[3] % 2):
            return None
        if not layer_fits(f.node.shape, x.shape[1], 1, False, KO.KPU_POOLS["max_2_s2"][1]):
            return None
        m = self._merge(f, n.name, "max_2_s2")
        self.pools.append(n.name)
        c = n.shape[1]
        self.forms[id(n)] = _Form(m, np.eye(c), np.zeros(c))  # a channel pad after it stays a form
        return m

    # ------------------------------------------------------------------ the add
    def _terms(self, n: Node) -> list[tuple[Node, np.ndarray, np.ndarray, bool]] | str:
        """(node, E, beta, is the projection input) per term of add n, or why not."""
        terms = []
        a, b = n.inputs
        skip = b if _reaches(a, b) else a if _reaches(b, a) else None
        for u in n.inputs:
            src_proj = (_is_kpu(u) and u.op.kernel == 1 and not u.op.depthwise and u.op.pool == "bypass"
                        and u.op.act == O.NO_CLAMP and u.op.fn is None and self.users[u] == [n]
                        and id(u) not in self.outputs and id(u) in self.map)
            if src_proj:
                p = self.map[id(u)]
                h = p.inputs[0]
                if _is_kpu(p) and p.op.kernel == 1 and _is_kpu(h) and p.inputs[1].is_constant and p.inputs[2].is_constant:
                    w = p.inputs[1].data.astype(np.float64)[:, :, 0, 0]
                    terms.append((h, w, p.inputs[2].data.astype(np.float64), True))
                    continue
            if id(u) in self.forms:
                f = self.forms[id(u)]
                terms.append((f.node, f.e, f.beta, False))
            elif id(u) in self.map and _is_kpu(self.map[id(u)]):
                c = u.shape[1]
                terms.append((self.map[id(u)], np.eye(c), np.zeros(c), False))
            elif u is skip and not isinstance(u.op, O.Input) and u.type.rank == 4:
                # a skip the CPU makes (BlazePalm's stem PReLU, or the channel-padded pool of a block
                # too large to stream, `streamed_prelus`): uploaded once by a 1x1 identity layer, the
                # part of the stack that starts the stream
                c = u.shape[1]
                terms.append((self._upload_layer(u), np.eye(c), np.zeros(c), False))
            else:
                return f"its operand '{u.name}' is a CPU {u.op.kind}"
        return terms

    def _upload_layer(self, u: Node) -> Node:
        """A 1x1 identity KPU layer reading the CPU tensor u (one for every stack that reads it)."""
        if id(u) not in self.uploads:
            self.uploads[id(u)] = upload_layer(self.g, self.explicit(u), u.name + "/upload")
        return self.uploads[id(u)]

    def add(self, n: Node) -> Node | None:
        op = n.op
        if not (op.op == "add" and op.act == O.NO_CLAMP and len(n.inputs) == 2 and n.type.rank == 4
                and n.shape[0] == 1 and n.inputs[0].shape == n.inputs[1].shape == n.shape):
            return None
        if not self._blaze_add(n):
            return None
        if self.adds is not None and n.name not in self.adds:
            self.kept.append((n.name, "not among the adds decompose_kernels read as 8-bit codes (streamed_prelus)"))
            return None
        prelu = self._prelu_of(n)
        if id(n) in self.outputs or id(prelu) in self.outputs:
            self.kept.append((n.name, "the model outputs its float value"))
            return None
        reader = self._residual_reader(n)
        if reader is not None:
            self.kept.append((n.name, f"'{reader.name}' reads its PReLU in float through the extra bits of a "
                                      f"decomposed conv's residual channels"))
            return None
        terms = self._terms(n)
        if isinstance(terms, str):
            self.kept.append((n.name, terms))
            return None
        # one part per layer, the projection input last (its grid is the stack's input offset)
        terms.sort(key=lambda t: t[3])
        parts: list[list] = []
        for node, e, beta, _ in terms:
            for p in parts:
                if p[0] is node:
                    p[1] = p[1] + e
                    break
            else:
                parts.append([node, e])
        beta = sum(t[2] for t in terms)
        c = n.shape[1]
        _, _, hh, w = n.shape
        at, ok = 0, True
        for p in parts:
            if id(p[0]) in self.stacked:  # written into another stack: a merge layer of its own
                p[0], p[1] = self._merge(_Form(p[0], p[1], np.zeros(c)), f"{n.name}/{p[0].name}"), np.eye(c)
            if kpu_channel_offset(w, hh, at) is None:
                ok = False
            at += p[0].shape[1]
        wf = np.concatenate([p[1] for p in parts], axis=1)
        alpha = channel_values(n, prelu.inputs[1])
        why = None
        if max(widest_weight_range(wf), 1.0 + float(np.abs(alpha).max())) > self.opts.weights_quantize_threshold:
            why = f"its weights' range exceeds --weights-quantize-threshold {self.opts.weights_quantize_threshold:g}"
        elif not ok:
            why = "a part of its stack would not start on a 64-byte line of KPU RAM"
        elif not layer_fits((1, at, hh, w), 2 * c, 1, False):
            why = f"a 1x1 layer over {at} channels of {hh}x{w} to {2 * c} exceeds the KPU's limits"
        elif not self._faster(n, prelu, alpha, at):
            why = "estimated slower than the CPU add and PReLU"
        if why:
            self.kept.append((n.name, why))
            return None
        g = self.g
        stack = g.add(KO.KpuStack(), tuple(p[0] for p in parts), n.name + "/stack")
        ws = np.concatenate([wf, -wf])[:, :, None, None].astype(F32)
        bs = np.concatenate([beta, -beta]).astype(F32)
        ins = (stack, g.constant(ws, n.name + "/stream_w"), g.constant(bs, n.name + "/stream_b"))
        r = g.add(KO.FloatKpuConv(1, act=RELU), ins, n.name + "/relu_pair")
        self.stacked.update(id(p[0]) for p in parts)
        self.forms[id(n)] = _Form(r, np.concatenate([np.eye(c), -np.eye(c)], axis=1), np.zeros(c))
        self.done.append(n.name)
        return r

    def _residual_reader(self, n: Node) -> Node | None:
        """A QuantResidual reading n or its PReLU through data movement, or None: a decomposed conv
        (kcc.passes.decompose_kernels) reads that float value with more than 8 bits, which a KPU layer's
        codes would lose (the rule of prelu_kpu)."""
        for u in self.users[n]:
            if isinstance(u.op, KO.QuantResidual):
                return u
            if isinstance(u.op, (O.PRelu, O.Pad, O.StridedSlice, O.Reshape, O.Concat, O.Pool2D)):
                found = self._residual_reader(u)
                if found is not None:
                    return found
        return None

    def _faster(self, n: Node, prelu: Node, alpha: np.ndarray, k: int) -> bool:
        """Cycles of today's form against the pair's (kcc.target.k210's cost model, as prelu_kpu):
        today the operands that are KPU layers are copied out and dequantized, the add and the PReLU
        (lower_to_neutral `float_prelu_cycles`: a 1x1 float conv and a binary op an element) run in
        float, and the PReLU is quantized and uploaded for its KPU readers; the pair costs its 1x1 layer
        over k channels less the projection it absorbs, the doubled input channels of the layers that
        read it (a depthwise one twice its layer), and a merge layer copied out and dequantized for
        each value a CPU op reads; with a pair over STREAM_PAIR_RAM, the merge layer making the PReLU
        explicit instead, its readers' C channels as today."""
        c = n.shape[1]
        cpu = _per_element("binary", n) + float_prelu_cycles(prelu, alpha)
        kpu = _layer_cycles((1, k, *n.shape[2:]), 2 * c, 1)
        for u in n.inputs:
            if _is_kpu(u):  # a KPU operand today: copied out and dequantized
                cpu += cpu_cycles("kpu_download_byte") * u.type.size + _per_element("dequantize", u)
                if self.users[u] == [n] and u.op.kernel == 1 and not u.op.depthwise:  # the fused projection
                    kpu -= _layer_cycles(u.inputs[0].shape, c, 1)
            elif id(u) in self.uploads:  # a CPU skip, quantized and uploaded by a 1x1 layer
                kpu += _per_element("quantize", u) + _upload(u) + _layer_cycles(u.shape, c, 1)
        pair = pair_shape(n)
        explicit = explicit_prelu(n)  # the PReLU made explicit at once (`visit`)
        kpu_reads_sum, merged, copied = False, set(), False
        if explicit:
            kpu += _layer_cycles(pair, c, 1)
            merged.add(id(prelu))
        for v in (n, prelu):
            for r in self.users[v]:
                if explicit and v is prelu and _is_kpu(r):
                    continue  # reads C channels of a KPU layer, as today (uploaded)
                if r is prelu or self._blaze_add(r) or isinstance(r.op, (O.Pad, O.StridedSlice)):
                    continue  # the next block reads the pair in its stack
                if isinstance(r.op, O.Pool2D):  # a stride-2 skip: a float pool today, a 1x1 layer here
                    cpu += CPU_NODE_CYCLES + cpu_cycles("window_tap") * 4 * r.type.size
                    kpu += _layer_cycles(pair, c, 1)
                elif _is_kpu(r):
                    kpu_reads_sum = kpu_reads_sum or v is n
                    kpu += (_layer_cycles(pair, 2 * c, r.op.kernel) / 2 if r.op.depthwise
                            else _layer_cycles(pair, r.shape[1], r.op.kernel) - _layer_cycles(v.shape, r.shape[1], r.op.kernel))
                elif id(v) not in merged:  # CPU ops (or an output) read a merge layer's copy
                    merged.add(id(v))
                    kpu += (_layer_cycles(pair, c, 1) + cpu_cycles("kpu_download_byte") * v.type.size
                            + _per_element("dequantize", v))
                elif explicit and v is prelu and not copied:  # the explicit PReLU, copied out once
                    copied = True
                    kpu += cpu_cycles("kpu_download_byte") * v.type.size + _per_element("dequantize", v)
        if any(_is_kpu(r) for r in self.users[prelu]):
            cpu += _per_element("quantize", prelu) + _upload(prelu)
        if kpu_reads_sum:
            cpu += _per_element("quantize", n) + _upload(n)
        return kpu < cpu

    # ------------------------------------------------------------------ driver
    def visit(self, n: Node) -> Node | None | bool:
        """n's explicit node, True for a form without one (yet), None to copy n."""
        if isinstance(n.op, O.Binary) and n.op.op == "add":
            return True if self.add(n) is not None else None
        if isinstance(n.op, O.PRelu) and id(n.inputs[0]) in self.forms and self.forms[id(n.inputs[0])].e.shape[1] == 2 * n.shape[1]:
            a = self.forms[id(n.inputs[0])]
            alpha = channel_values(n.inputs[0], n.inputs[1])
            if alpha is not None and isinstance(n.inputs[0].op, O.Binary):
                c = n.shape[1]
                f = _Form(a.node, np.concatenate([np.eye(c), -np.diag(alpha.astype(np.float64))], axis=1), np.zeros(c))
                if explicit_prelu(n.inputs[0]):  # made explicit at once (blaze_blocks.EXPLICIT_PAIR_RAM)
                    return self._merge(f, n.name)
                self.forms[id(n)] = f
                return True
            return None
        if isinstance(n.op, (O.Pad, O.StridedSlice)) and id(n.inputs[0]) in self.forms:
            m = channel_selection(n)
            if m is not None:
                f = self.forms[id(n.inputs[0])]
                # rows of E, no node: a slice a decomposed conv reads as a channel group is made
                # explicit (`explicit`) by a merge layer of its own, on its own output grid, as each
                # group the CPU quantizes is (docs/measurements.md §24, §31: one merge sliced into
                # the groups rounds them all on its one grid)
                self.forms[id(n)] = _Form(f.node, m @ f.e, m @ f.beta)
                return True
            return None
        if isinstance(n.op, O.Pool2D):
            return self.pool(n)
        if _is_kpu(n):
            d = self.conv(n)
            if d is not None and id(n) in self.forms:  # a split depthwise layer: a form
                return True
            return d
        return None

    def run(self) -> Graph:
        g = self.g
        for n in self.src.nodes:
            new = self.visit(n)
            if new is True:
                continue
            if new is None:
                new = g.add(n.op, tuple(self.explicit(i) for i in n.inputs), n.name, n.note)
            self.map[id(n)] = new
        g.outputs = [self.explicit(o) for o in self.src.outputs]
        g.remove_dead()
        return g


def stream_to_kpu(g: Graph, opts: CompileOptions,
                  adds: set[str] | None = None) -> tuple[Graph, list[str], list[str], list[tuple[str, str]]]:
    """Rewrite the BlazeBlock adds (and their PReLUs) the KPU serves (module docstring), among `adds`
    (`streamed_prelus`, recorded by decompose_kernels; None: any); returns the
    new graph, the adds rewritten, the max pools made KPU layers, and (add, reason) for the
    BlazeBlock adds kept on the CPU."""
    if opts.target == "cpu" or not any(isinstance(n.op, O.PRelu) for n in g.nodes):
        return g, [], [], []
    rw = _Rewriter(g, opts, adds)
    out = rw.run()
    return out, rw.done, rw.pools, rw.kept
