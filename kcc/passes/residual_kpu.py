"""residual_kpu: a residual add y = p + x of two KPU layers' outputs on the KPU (issue #16 item 3).

Two forms, both over a buffer of KPU RAM into which the producers write their channel ranges (a
`KpuStack`, quantized as a KpuConcat: no copy-out, float add, quantize or upload):

    fused   y = [I | W] @ [x; h] + b    p = conv1x1(h) + b, no activation: ONE 1x1 layer replaces the
                                        projection and the add (h usually a depthwise layer's ReLU6)
    pair    y = [I | I] @ [x; p]        one more 1x1 layer after p (any KPU layer)

each with the add's fused activation as the layer's clamp. x sits at channel 0, the other part from
channel C_x on. Each part keeps its own grid; the layer reads the buffer with the last part's input
offset and absorbs the difference exactly (kcc.quant.kpu_params.stacked_weights): the zero points as
an integer per output channel in the bias, the scales in the weights, with the skip weight of each
output channel an exact integer k_c (its channel scale chosen for it, the batch-norm multiplier
undoing it), so the skip path is one exact requantization of x's codes. 1x1 only, stride 1: no
padding ever meets the two zero points.

The fused form's price is the projection's weight precision: the skip weight k_c = d e_c (d = s_h/s_x)
must fit in 127 codes, so when x's grid is coarse against h's (d large against W_c's largest weight),
W_c gets fewer than 127 codes. It is taken only where that costs little: the projection's extra
rounding error, estimated from a few calibration samples' ranges and h's mean squares, at most
ERROR_BUDGET output steps rms (`_error`); without samples, always. Otherwise the pair form: its
[I I] weights are the skip's exact integer and the integer nearest to it times the ratio of the two
grids (the pair closest to that ratio, kpu_params), and the projection keeps its own layer.

Taken where the add is a residual connection (the skip an ancestor of the other operand, or a max
pool of one: `_residual`), both operands are KPU layers that can write into the buffer (not already
written into another, nor read by a concatenation) or the skip is data the CPU moves on 8-bit codes
(deeplabv3's dilated region, whose first skip is a phase of the map before it, cut by a strided
slice: `_uploadable`), which a 1x1 identity layer uploads into the buffer, the sum is read by KPU
layers only (`_float_reader`; through data movement or a channel concatenation, a CSP block's),
batch 1, C_x a multiple of the channels one 64-byte line holds at this width (kmodel_v4.md §7.3),
the layer within the KPU's limits (channels <= 1024, KPU RAM), and the form estimated faster than
today's CPU add (kcc.target.k210's cost model, as prelu_kpu). An add that
becomes a KPU layer counts as one for the others: the adds of a chain of residual blocks, each sum
an operand of the next add, are decided together (`_Rewriter._decide`). Otherwise the add stays on
the CPU and its placement says why. A BlazeBlock's add, read by a PReLU, is
kcc.passes.prelu_stream's: it keeps the whole stream in KPU RAM as relu pairs.
"""

from __future__ import annotations

import math

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, copy_rewriting
from kcc.kmodel import kpu_bytes, kpu_channel_offset, kpu_row_layout
from kcc.options import CompileOptions
from kcc.passes.kpu_live import KpuLive
from kcc.passes.prelu_kpu import _layer_cycles, _per_element, _upload
from kcc.target.k210 import KPU_RAM_SIZE, cpu_cycles, layer_fits
from kcc.target.quant_rules import fixup_range

F32 = np.float32
ERROR_BUDGET = 0.1  # output steps rms the projection's weights may round more: a third of one rounding's 0.29
STACK_LIMIT = 127  # |code - zero point| of the weights over a stack (symmetric, kcc.quant.kpu_params)
SAMPLES = 4  # calibration samples the ranges of `_precise` come from
RESIDUAL_FORMS = {  # the forms, as the placement report says them
    "fused": "with the projection: one 1x1 KPU layer over [skip; projection input] in KPU RAM",
    "pair": "a 1x1 KPU layer over [skip; projection] in KPU RAM, weights [I I]",
    "spare": ("a 1x1 KPU layer over [projection; skip] in KPU RAM, weights [I I], the skip uploaded into "
              "spare channels of the projection's batches"),
}


def upload_layer(g: Graph, x: Node, name: str) -> Node:
    """A 1x1 KPU layer with identity weights reading the CPU tensor x: x uploaded into KPU RAM as a
    layer's output, which a buffer of KPU RAM (a KpuStack) can take as a part."""
    c = x.shape[1]
    ins = (x, g.constant(np.eye(c, dtype=F32)[:, :, None, None], name + "_w"), g.constant(np.zeros(c, F32), name + "_b"))
    return g.add(KO.FloatKpuConv(1), ins, name)


def _is_kpu(v: Node) -> bool:
    return isinstance(v.op, KO.FloatKpuConv)


def _off_line(part: Node, hh: int, w: int) -> str | None:
    """Why what follows `part`'s channels in a buffer of hh x w maps would not start on a 64-byte line
    of KPU RAM (kmodel_v4.md §7.3), or None."""
    c = part.shape[1]
    if kpu_channel_offset(w, hh, c) is None:
        return (f"'{part.name}' has {c} channels, not a multiple of {kpu_row_layout(w).groups} (the "
                f"channels one 64-byte line of KPU RAM holds at width {w})")
    return None


def _reaches(n: Node, x: Node, limit: int = 256) -> bool:
    """x is an input of n, or of its inputs..., within `limit` nodes (a residual block is short); or
    x is a concatenation whose every part is, or reads one such (kcc.passes.part_groups' channel
    groups, which the block's channel groups read one by one; kcc.passes.parts_stack's layers
    recombining a group's parts, which the block's channel groups read too)."""
    parts = {id(i) for i in x.inputs} if isinstance(x.op, O.Concat) else None  # those not reached yet
    via: dict[int, set[int]] = {}  # what a part reads (through a concatenation) -> the parts
    for p in x.inputs if parts is not None else ():
        for q in p.inputs:
            for r in q.inputs if isinstance(q.op, O.Concat) else (q,):
                via.setdefault(id(r), set()).add(id(p))
    stack, seen = [n], set()
    while stack and len(seen) < limit:
        v = stack.pop()
        for i in v.inputs:
            if i is x:
                return True
            if parts is not None:
                parts.discard(id(i))
                parts -= via.get(id(i), set())
                if not parts:
                    return True
            if id(i) not in seen and not i.is_constant:
                seen.add(id(i))
                stack.append(i)
    return False


def _residual(p: Node, x: Node) -> bool:
    """x is the skip of a residual connection to p: an ancestor of p, or a max pool of one (a
    stride-2 block's pooled skip, hand_landmark_lite_224's max_pooling2d: legalize_kpu makes it a
    KPU layer with the pool unit's max, a twin of the layer whose unpooled output p descends from,
    reading the same input). A decomposed conv's sum of terms (kcc.passes.decompose_kernels) adds
    siblings, and keeps its float partial sums: its terms read a common input too, but no max pool,
    which is no term of a sum."""
    if _reaches(p, x):
        return True
    return _is_kpu(x) and x.op.pool in KO.MAX_POOLS and _reaches(p, x.inputs[0])


class _Stats:
    """Per tensor of interest, over some samples: its range and each channel's mean square."""

    def __init__(self, g: Graph, samples: list | None):
        self.lo: dict[int, float] = {}
        self.hi: dict[int, float] = {}
        self.sq: dict[int, np.ndarray] = {}
        if not samples:
            return
        want = set()
        for n in g.nodes:
            if isinstance(n.op, O.Binary) and n.op.op == "add":
                want.add(id(n))
                for i in n.inputs:
                    want.add(id(i))
                    if _is_kpu(i):
                        want.add(id(i.inputs[0]))
        count: dict[int, int] = {}

        def see(n: Node, v: np.ndarray) -> None:
            if id(n) not in want or v.ndim != 4:
                return
            k = id(n)
            self.lo[k] = min(self.lo.get(k, 0.0), float(v.min()))
            self.hi[k] = max(self.hi.get(k, 0.0), float(v.max()))
            sq = np.mean(v.astype(np.float64) ** 2, axis=(0, 2, 3))
            self.sq[k] = self.sq.get(k, 0.0) + sq
            count[k] = count.get(k, 0) + 1

        for sample in samples[:SAMPLES]:
            run(g, sample, see)
        for k in self.sq:
            self.sq[k] = self.sq[k] / count[k]

    def scale(self, n: Node) -> float | None:
        """Levels per unit of the tensor's range (kcc.quant.params.get_quant_param, in float64)."""
        if id(n) not in self.lo:
            return None
        lo, hi = fixup_range(self.lo[id(n)], self.hi[id(n)])
        return 255.0 / (hi - lo)


class _Rewriter:
    def __init__(self, g: Graph, opts: CompileOptions, samples: list | None = None):
        self.stats = _Stats(g, samples)
        self.live = KpuLive(g)
        self.src, self.opts = g, opts
        self.users = g.users()
        self.outputs = {id(o) for o in g.outputs}
        self.g = Graph()
        self.map: dict[int, Node] = {}
        self.stacked: set[int] = set()  # source nodes already written into a stack
        self.on_kpu: set[int] = set()  # the adds taken to be KPU layers (`_decide`)
        self.forms: dict[int, tuple[str, Node, Node]] = {}  # add -> (form, projection, skip)
        self.done: list[tuple[str, str]] = []  # (add, form)
        self.kept: list[tuple[str, str]] = []  # (add, why it stays on the CPU)

    def _kpu(self, v: Node) -> bool:
        """v (a source node) is a KPU layer, or an add taken to become one."""
        return _is_kpu(v) or id(v) in self.on_kpu

    def _decide(self) -> None:
        """Which adds become KPU layers: the largest set in which each passes `_problem` with the
        others on the KPU. A chain of residual blocks (hand_landmark_lite_224: add_3 -> add_4, each
        sum read by the next block's expansion and by the next add) is decided together: an add
        whose reader is another add that becomes a KPU layer is read as 8-bit codes in KPU RAM, as
        its KPU readers read it, and an add whose operand is an add on the KPU reads a KPU layer's
        output. Start from every add, drop those that fail given the rest, until none does; each
        sweep checks the buffers (`stacked`) in graph order, as the rewrite writes them. The set
        only shrinks, so this ends. An add dropped keeps the reason of the sweep that dropped it; an
        operand or a reader on the CPU then is on the CPU in the final set too."""
        adds = [n for n in self.src.nodes if isinstance(n.op, O.Binary) and n.op.op == "add"]
        self.on_kpu = {id(n) for n in adds}
        why: dict[int, str] = {}
        while True:
            self.stacked, forms = set(), {}
            for n in adds:
                if id(n) not in self.on_kpu:
                    continue
                found = self._problem(n)
                if isinstance(found, str):
                    why[id(n)] = found
                else:
                    forms[id(n)] = found
                    if found[0] == "spare":  # its skip is uploaded: free to be written elsewhere
                        self.stacked.add(id(found[1]))
                    else:
                        self.stacked.update((id(found[2]), id(self._part(found))))
            if forms.keys() == self.on_kpu:
                break
            self.on_kpu = set(forms)
        self.forms = forms
        for n in adds:  # a residual add next to a KPU layer: say why it stays on the CPU
            if id(n) not in forms and why.get(id(n)) and any(self._kpu(i) for i in n.inputs):
                self.kept.append((n.name, why[id(n)]))

    @staticmethod
    def _part(found: tuple[str, Node, Node]) -> Node:
        """The part beside the skip in the add's buffer: the projection's input (fused), or the
        projection (pair)."""
        form, proj, _ = found
        return proj.inputs[0] if form == "fused" else proj

    @staticmethod
    def _uploadable(x: Node, batched: bool = False) -> bool:
        """x, a skip the CPU makes, can be uploaded into a buffer by a 1x1 identity layer: a map of
        batch 1 that the CPU moves on 8-bit codes (a slice, pad, reshape, transpose or concatenation:
        nothing to quantize, as for the CPU add nothing to download), within the KPU's limits; or,
        `batched`, into the spare channels of a batched map (`_spare_problem`), batch by batch."""
        return (isinstance(x.op, (O.StridedSlice, O.Pad, O.Reshape, O.Transpose, O.Concat))
                and x.type.rank == 4 and (batched or (x.shape[0] == 1 and layer_fits(x.shape, x.shape[1], 1))))

    def _buffer_problem(self, first: Node, second: Node, n: Node) -> str | None:
        """Why `first` and `second` (source nodes, KPU layers now; `first` may be a CPU skip, which
        an identity layer uploads) cannot write [first; second] of one buffer read by a 1x1 layer to
        n's channels, or None."""
        for part in (first, second):
            if id(part) in self.stacked or any(isinstance(u.op, (O.Concat, KO.KpuStack)) for u in self.users[part]):
                return f"'{part.name}' is already written into another buffer in KPU RAM"
        _, _, hh, w = n.shape
        c1 = first.shape[1]
        if (off := _off_line(first, hh, w)) is not None:
            return off
        if not layer_fits((1, c1 + second.shape[1], hh, w), n.shape[1], 1):
            return f"a 1x1 layer over {c1 + second.shape[1]} channels of {hh}x{w} exceeds the KPU's limits"
        # the buffer holds the skip from its layer to the add: it must fit beside every layer between
        peak = self.live.peak_keeping((first, second), first, n, kpu_bytes((1, c1 + second.shape[1], hh, w)))
        if peak > KPU_RAM_SIZE:
            return (f"KPU RAM: the skip '{first.name}' would stay in KPU RAM through the block, {peak} B "
                    f"alive at once > {KPU_RAM_SIZE} B")
        return None

    def _fused_problem(self, n: Node, proj: Node, skip: Node, buffer: bool = True) -> str | None:
        """Why y = proj(h) + skip cannot be one layer over [skip; h] (module docstring), or None;
        without `buffer`, whatever the buffer they are written into."""
        op = proj.op
        if not (_is_kpu(proj) and op.kernel == 1 and not op.depthwise and op.pool == "bypass"
                and op.act == O.NO_CLAMP and op.fn is None and proj.inputs[1].is_constant
                and proj.inputs[2].is_constant):
            return f"'{proj.name}' is not a 1x1 KPU layer without activation"
        h = proj.inputs[0]
        if not _is_kpu(h) or self.users[h] != [proj] or id(h) in self.outputs:
            return f"the projection's input '{h.name}' is not a KPU layer read by the projection alone"
        problem = self._buffer_problem(skip, h, n) if buffer else None
        if problem is not None:
            return problem
        err = self._error(n, proj, skip)
        if err is not None and err > ERROR_BUDGET:
            return (f"its skip weight fits 127 codes only with W on a coarser grid, ~{err:.2f} output steps rms "
                    f"more error (budget {ERROR_BUDGET})")
        return None

    def _spare_problem(self, n: Node, proj: Node, skip: Node) -> str | None:
        """Why y = proj + skip of batched maps cannot be a 1x1 layer over [proj; skip] (the spare form),
        or None: the projection gets the skip's channel count more output channels of zero weights
        (spare), which the CPU's uploads of the skip's codes write over, batch by batch
        (kcc.ir.kpu_ops.KpuChannelPatch); weights [I I], as the pair form's."""
        if not (_is_kpu(proj) and not proj.op.depthwise and proj.inputs[1].is_constant and proj.inputs[2].is_constant):
            return f"'{proj.name}' is not a KPU conv layer (a depthwise layer has no spare channels)"
        if id(proj) in self.stacked:
            return f"'{proj.name}' is already written into another buffer in KPU RAM"
        nb, c, hh, w = proj.shape
        cx = skip.shape[1]
        if (off := _off_line(proj, hh, w)) is not None:
            return off
        wide = (nb, c + cx, hh, w)
        if not (layer_fits(proj.inputs[0].shape, c + cx, proj.op.kernel) and layer_fits(wide, n.shape[1], 1)):
            return f"{c + cx} channels of {hh}x{w} exceed the KPU's limits"
        peak = self.live.peak_keeping((proj,), proj, n, kpu_bytes(wide))
        if peak > KPU_RAM_SIZE:
            return f"KPU RAM: with {cx} spare channels, {peak} B alive at once > {KPU_RAM_SIZE} B"
        return None

    def _faster_spare(self, n: Node, proj: Node, skip: Node) -> bool:
        """Today's CPU add (as `_faster`) against the spare channels' cycles, the add's layer and the
        skip's upload (and download, for a KPU layer's skip its KPU readers alone read)."""
        cpu = cpu_cycles("kpu_download_byte") * proj.type.size + _per_element("dequantize", proj)
        cpu += _per_element("dequantize", skip) + _per_element("binary", n)
        cpu += _per_element("quantize", n) + _upload(n)
        kpu = _upload(skip)
        if self._kpu(skip) and all(self._kpu(u) for u in self.users[skip] if u is not n):  # else downloaded anyway
            kpu += cpu_cycles("kpu_download_byte") * skip.type.size
        kpu += _layer_cycles(proj.inputs[0].shape, skip.shape[1], proj.op.kernel)
        kpu += _layer_cycles((*proj.shape[:1], proj.shape[1] + skip.shape[1], *proj.shape[2:]), n.shape[1], 1)
        return kpu < cpu

    def _problem(self, n: Node) -> tuple[str, Node, Node] | str:
        """(form, projection, skip) of an add the KPU serves, or why not ("" for an add that is no
        residual connection): "fused", one layer over [skip; h]; else "pair", one layer over [skip;
        projection] (weights [I I]) after the projection."""
        if n.op.op != "add" or len(n.inputs) != 2 or not n.inputs[0].shape == n.inputs[1].shape == n.shape:
            return "not an add of two maps of one shape"
        if n.type.rank != 4:
            return "not a map"
        batched = n.shape[0] != 1
        a, b = n.inputs
        order = [(p, x) for p, x in ((a, b), (b, a)) if _residual(p, x)]
        if not order:
            return ""
        if not (self._kpu(a) and self._kpu(b)):
            cpu = b if self._kpu(a) else a
            # a skip the CPU makes (deeplab's phase split: a strided slice per phase) is uploaded into
            # the buffer by a 1x1 identity layer; the adds after it then read KPU layers
            order = [(p, x) for p, x in order if self._kpu(p) and x is cpu and self._uploadable(x, batched)]
            if not order:
                return f"its operand '{cpu.name}' is a CPU {cpu.op.kind}, not a KPU layer's output"
        reader = self._float_reader(n)
        if reader is not None:
            return (f"its sum is read in float by '{reader.name}' ({reader.op.kind}): a KPU layer would "
                    f"round it to 8 bits")
        pairs = [(p, x) for p, x in order if self.users[p] == [n] and id(p) not in self.outputs]
        if batched:  # each batch is a whole map in KPU RAM: only the spare form puts two side by side
            why = "not a batch-1 map, and no operand is a KPU layer read by the add alone"
            for proj, skip in pairs:
                why = self._spare_problem(n, proj, skip) or ""
                if not why:
                    if self._faster_spare(n, proj, skip):
                        return "spare", proj, skip
                    why = "estimated slower than the CPU add"
            return why
        for proj, skip in pairs:
            if self._fused_problem(n, proj, skip) is None:
                if self._faster(n, proj, skip, True):
                    return "fused", proj, skip
        why = "no operand is a KPU layer read by the add alone"
        for proj, skip in pairs or order:
            why = self._buffer_problem(skip, proj, n) or ""
            if not why:
                if self._faster(n, proj, skip, False):
                    return "pair", proj, skip
                why = "estimated slower than the CPU add"
        return why

    def _error(self, n: Node, proj: Node, skip: Node) -> float | None:
        """How much more the projection's weights round in the fused form than on a grid of their own,
        in output steps rms over its channels, from the samples' ranges (None without samples):
        channel c's weight step is d/k_c there (kcc.quant.kpu_params.stacked_weights), max|W_c|/127
        on its own (about: kpu_params.equalize_weights); the error of a step is step/sqrt(12) times
        |h| (rms per channel, summed over h's channels)."""
        h = proj.inputs[0]
        s_h, s_x, s_z = self.stats.scale(h), self.stats.scale(skip), self.stats.scale(n)
        if None in (s_h, s_x, s_z) or id(h) not in self.stats.sq:
            return None
        d = s_h / s_x
        w = np.abs(proj.inputs[1].data.reshape(proj.shape[1], -1).astype(np.float64))
        m = np.maximum(w.max(axis=1), 1e-30)
        k = np.maximum(np.minimum(STACK_LIMIT, np.floor(STACK_LIMIT * d / m)), 1.0)
        unit = math.sqrt(float(np.sum(self.stats.sq[id(h)]))) / math.sqrt(12.0) * s_z
        fused, own = d / k * unit, m / STACK_LIMIT * unit
        return float(np.sqrt(max(0.0, float(np.mean(fused ** 2 - own ** 2)))))

    def _float_reader(self, n: Node) -> Node | None:
        """A reader of n that reads its float value, or None. Today's CPU sum is read as 8-bit codes
        anyway by KPU layers (and data movement to them, on codes), so rounding it on the KPU costs
        nothing there; a float reader loses the sum's float bits: a CPU op, a graph output, or an
        add kept on the CPU (the next step of a residual stream, which the CPU keeps in float from
        add to add). An add that becomes a KPU layer reads 8-bit codes in KPU RAM, as the sum's
        KPU readers do: the stream is then rounded at every add, once more than on the CPU per
        block (measured on hand_landmark_lite_224 in docs/measurements.md)."""
        if id(n) in self.outputs:
            return n
        for u in self.users[n]:
            # data movement, or a channel concatenation (a CSP block's): read as codes where they are
            if isinstance(u.op, (O.Pad, O.StridedSlice, O.Reshape, O.Transpose)) or (
                    isinstance(u.op, O.Concat) and u.op.axis == 1):
                inner = self._float_reader(u)
                if inner is not None:
                    return inner
            elif not self._kpu(u):
                return u
        return None

    def _faster(self, n: Node, proj: Node, skip: Node, fused: bool) -> bool:
        """Cycles of today's form (download the projection, dequantize both, float add, quantize and
        upload for KPU readers) against the extra input channels of the fused layer, or the whole
        layer of the pair."""
        cpu = cpu_cycles("kpu_download_byte") * proj.type.size + _per_element("dequantize", proj)
        cpu += _per_element("dequantize", skip) + _per_element("binary", n)
        if not self._kpu(skip):  # a CPU skip: uploaded by an identity layer
            kpu_skip = _upload(skip) + _layer_cycles(skip.shape, skip.shape[1], 1)
        else:
            kpu_skip = 0.0
            if all(self._kpu(u) for u in self.users[skip] if u is not n):  # else downloaded anyway
                cpu += cpu_cycles("kpu_download_byte") * skip.type.size
        kpu_readers = id(n) not in self.outputs and all(self._kpu(u) for u in self.users[n])
        if fused:
            kpu = _layer_cycles((1, skip.shape[1] + proj.inputs[0].shape[1], *n.shape[2:]), n.shape[1], 1)
            kpu -= _layer_cycles(proj.inputs[0].shape, n.shape[1], 1)
        else:
            kpu = _layer_cycles((1, skip.shape[1] + proj.shape[1], *n.shape[2:]), n.shape[1], 1)
        kpu += kpu_skip
        if kpu_readers:
            cpu += _per_element("quantize", n) + _upload(n)
        else:  # CPU readers: the KPU sum is copied out and dequantized, the CPU one not
            kpu += cpu_cycles("kpu_download_byte") * n.type.size + _per_element("dequantize", n)
        return kpu < cpu

    def _spare(self, n: Node, proj: Node, skip: Node) -> Node:
        """The spare form (`_spare_problem`): the projection with the skip's channel count more output
        channels of zero weights, written over by the skip, and one 1x1 layer [I I] over them."""
        g = self.g
        c, cx, oc = proj.shape[1], skip.shape[1], n.shape[1]
        w, b = proj.inputs[1].data.astype(F32), proj.inputs[2].data.astype(F32)
        w = np.concatenate([w, np.zeros((cx, *w.shape[1:]), F32)])
        wide = g.add(proj.op, (self.map[id(proj.inputs[0])], g.constant(w, proj.name + "/spare_w"),
                               g.constant(np.concatenate([b, np.zeros(cx, F32)]), proj.name + "/spare_b")),
                     proj.name + "/spare")
        patched = g.add(KO.KpuChannelPatch(c), (wide, self.map[id(skip)]), n.name + "/patched")
        eye = np.zeros((oc, c + cx, 1, 1), F32)
        eye[np.arange(oc), np.arange(oc), 0, 0] = 1.0
        eye[np.arange(oc), c + np.arange(oc), 0, 0] = 1.0
        ins = (patched, g.constant(eye, n.name + "/residual_w"), g.constant(np.zeros(oc, F32), n.name + "/residual_b"))
        self.done.append((n.name, "spare"))
        return g.add(KO.FloatKpuConv(1, act=n.op.act), ins, n.name)

    def residual(self, n: Node) -> Node | None:
        if id(n) not in self.forms:
            return None
        form, proj, skip = self.forms[id(n)]
        if form == "spare":
            return self._spare(n, proj, skip)
        g = self.g
        cx, oc = skip.shape[1], n.shape[1]
        eye = np.zeros((oc, cx, 1, 1), F32)
        eye[np.arange(oc), np.arange(cx), 0, 0] = 1.0
        if form == "fused":
            h = proj.inputs[0]
            w, b = proj.inputs[1].data.astype(F32), proj.inputs[2].data.astype(F32)
        else:
            h, w, b = proj, eye, np.zeros(oc, F32)
        part = self.map[id(skip)]
        if not self._kpu(skip):  # a CPU skip (`_uploadable`)
            part = upload_layer(g, part, n.name + "/upload")
        stack = g.add(KO.KpuStack(), (part, self.map[id(h)]), n.name + "/stack")
        ins = (stack, g.constant(np.concatenate([eye, w], axis=1), n.name + "/residual_w"),
               g.constant(b, n.name + "/residual_b"))
        self.done.append((n.name, form))
        return g.add(KO.FloatKpuConv(1, act=n.op.act), ins, n.name)

    def run(self) -> Graph:
        self._decide()
        return copy_rewriting(self.src, self.g, self.map,
                              lambda n: self.residual(n) if isinstance(n.op, O.Binary) and n.op.op == "add" else None)


def residual_to_kpu(g: Graph, opts: CompileOptions, samples: list | None = None) -> tuple[Graph, list[tuple[str, str]], list[tuple[str, str]]]:
    """Rewrite each residual add the KPU serves (module docstring); returns the new graph, the adds
    rewritten with their form ("fused" or "pair"), and (add, reason) for the adds between KPU layers kept on the CPU. `samples`
    (calibration samples) let the precision check of `_Rewriter._error` run."""
    if opts.target == "cpu" or not any(isinstance(n.op, O.Binary) and n.op.op == "add" for n in g.nodes):
        return g, [], []
    rw = _Rewriter(g, opts, samples)
    out = rw.run()
    return out, rw.done, rw.kept
