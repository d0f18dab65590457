"""kpu_pools: which pools the KPU's pool unit computes, and max pools of maps in KPU RAM as KPU layers.

The pool unit pools a layer's output (kpu_semantics.md §3 step 5): `kpu_pool_code` is the code of the
unit that computes a model's pool exactly. legalize_kpu fuses such pools into the conv before them;
`pools_in_kpu_ram` serves the max pools left over whose input is a KPU layer made after placement.

A 3x3 stride-2 max pool (ResNet's, SqueezeNet's, ShuffleNet's stems) is no unit code, but it is two:
max(x[2i..2i+2]) = max(m[2i], m[2i+1]) with m[r] = max(x[r], x[r+1]), a max_2_s1 pool then a max_2_s2
one (`split_max_pool`). legalize_kpu fuses the first into the layer before it and leaves the rest
(`rest_of_split`) to `pools_in_kpu_ram`, which also makes every part a 1x1 KPU layer where the pool
reads a layer that took none. On codes the max is exact; max_2_s1's one tap past the map reads code
0, the grid's least, which never wins, as TFLite's padding never does. PyTorch's padding of 1 on an
even size (windows 2i-1..2i+1) is the same on m shifted one row down, m'[r] = m[r-1]: a 3x3 depthwise
copy (kcc.passes.kernel_forms.shift_weights) whose padding row, 0, never wins either when the map is
not negative (a ReLU's; otherwise the pool stays on the CPU).

TF's bilinear x2 with half-pixel centres (Keras UpSampling2D, BlazePalm's FPN) is, along one axis,
[1 2 1]/4 over the nearest x2 map with both ends clamped (`half_pixel_x2_on_kpu`). Two mean_2_s1 pools
compute it exactly over v[k] = x[max(0, (k-1)/2)], the nearest map one sample late: the first pool's
window (k, k+1) gives (x[i-1] + x[i])/2 at k = 2i and x[i] at 2i+1, the second then
(x[i-1] + 3 x[i])/4 and (3 x[i] + x[i+1])/4, TF's samples; v's repeated x[0] is TF's first clamp, the
pools' replicated last row and column its last. Both axes at once: a 2x2 window is the product of the
two 1-D means. The CPU builds v from x by data movement only, on uint8 codes: along an axis, v's odd
samples are x and its even ones x one sample late, [x[0], x[:-1]] (two slices, a concatenation), and
a concatenation of the two along a new innermost axis interleaves them (W first, where the blocks
are single bytes, then H, where they are rows). lower_to_neutral's form resizes in float (a 2h x 2w
resize_image) and takes 4 window taps an output element (kcc.passes.lower_to_neutral
`_half_pixel_x2`). Two KPU layers with identity weights average (in groups of MEAN_GROUP channels,
for the weights' bytes), each flooring as the KPU's mean pools do: the layer before
them adds both floors' expected bias to its output before rounding it where it can, else the KPU
layer after takes it (kcc.quant.floors); a CPU reader of a map
the CPU quantized reads it low by ~0.55 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from kcc.eval.kernels import kpu_pool
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import shift_copy
from kcc.ir.graph import Graph, Node, channel_range, depthwise_conv
from kcc.kmodel import kpu_row_layout
from kcc.passes.kernel_forms import shift_weights
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    MAX_CHANNELS,
    MIN_HW,
    cpu_cycles,
    kpu_layer_cost,
    kpu_map_cycles,
    layer_fits,
    upload_cycles,
)


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


def fused_pool(users: dict[Node, list[Node]], n: Node, outputs: list[Node]) -> O.Pool2D | None:
    """The pool legalize_kpu fuses into conv n, whose output map the KPU RAM then holds pooled (tiny
    YOLO's 3x3 conv and 2x2 max pool at 208x208: kcc.passes.channel_split need not cut it): n's one
    reader, a pool the unit computes."""
    readers = users.get(n, [])
    if not (isinstance(n.op, O.Conv2D) and not depthwise_conv(n) and n not in outputs and len(readers) == 1):
        return None
    pool = readers[0].op
    return pool if isinstance(pool, O.Pool2D) and kpu_pool_code(pool, *n.shape[2:]) else None


def split_max_pool(p: O.Pool2D, h: int, w: int, nonneg: bool) -> tuple[int, int] | None:
    """The shift (cy, cx) of the max_2_s1 map before max_2_s2 when pool p of an h x w map is those two
    exactly (module docstring), else None: a 3x3 stride-2 max pool whose windows along an axis are
    rows 2i..2i+2 of the map (TFLite SAME on an even size, VALID on an odd one: shift 0) or, on a map
    that is not negative (`nonneg`), rows 2i-1..2i+1 of an even size (PyTorch's padding 1: shift -1)."""
    def shift(size: int, pad: tuple[int, int]) -> int | None:
        if (pad == (0, 1) and size % 2 == 0) or (pad == (0, 0) and size % 2 == 1):
            return 0
        return -1 if pad == (1, 1) and size % 2 == 0 and nonneg else None
    if not (p.op == "max" and p.filter == (3, 3) and p.stride == (2, 2) and p.act == O.NO_CLAMP):
        return None
    cy, cx = shift(h, p.padding[0]), shift(w, p.padding[1])
    return None if cy is None or cx is None else (cy, cx)


def nonneg_layer(x: Node) -> bool:
    """x is a KPU layer's output that is never negative: its clamp's floor is 0 or more and it has no
    function, or it copies such a layer's values (a pick layer, kcc.ir.code_moves.shift_copy), or it is
    a map of them (kcc.passes.row_bands)."""
    if isinstance(x.op, O.Reshape):
        x = x.inputs[0]
    if isinstance(x.op, KO.KpuRowPatch):  # row bands: the map and the layers rewriting its rows
        return all(map(nonneg_layer, x.inputs))
    if not isinstance(x.op, KO.FloatKpuConv):
        return False
    if x.op.fn is None and x.op.act[0] >= 0:
        return True
    return shift_copy(x) is not None and nonneg_layer(x.inputs[0])


def rest_of_split(g: Graph, y: Node, name: str, shift: tuple[int, int]) -> Node:
    """What follows a split pool's max_2_s1 half, computed by y's layer: the shifted copy, if any,
    and the max_2_s2 half."""
    if shift != (0, 0):
        y = _shifted(g.add, y, shift, name)
    return g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,), name)


def _shifted(add: Callable[[O.Op, tuple, str], Node], y: Node, shift: tuple[int, int], name: str) -> Node:
    """y copied shifted by `shift` (a 3x3 depthwise KPU layer), its nodes made by `add`."""
    c = y.shape[1]
    w = add(O.Constant(shift_weights(c, shift)), (), f"{name}/w_shift")
    b = add(O.Constant(np.zeros(c, np.float32)), (), f"{name}/b_shift")
    return add(KO.FloatKpuConv(3, True), (y, w, b), f"{name}/shift")


def _in_kpu_ram(x: Node) -> bool:
    """x is a KPU layer's output, or a map of its bytes as they lie (kcc.passes.row_bands' bands read
    as one map: one channel per line group, each channel's rows consecutive lines either way)."""
    if isinstance(x.op, O.Reshape) and x.shape[0] == 1 and x.inputs[0].shape[3] == x.shape[3]:
        return kpu_row_layout(x.shape[3]).groups == 1 and isinstance(x.inputs[0].op, KO.FloatKpuConv)
    return isinstance(x.op, KO.FloatKpuConv)


#: the end of a split pool's placement until its max_2_s2 half is placed (`split_note`)
REST_ON_CPU = ", max_2_s2 on the CPU"


def split_note(shift: tuple[int, int]) -> str:
    """The placement of a pool legalize_kpu split, its rest not yet placed."""
    moved = ", its map shifted by a 3x3 depthwise copy" if shift != (0, 0) else ""
    return f"max_2_s1 fused into the layer before it{moved}{REST_ON_CPU}"


def pools_in_kpu_ram(g: Graph, placements: list) -> Graph:
    """A max pool left on the CPU whose input is a KPU layer's output (a layer made after the pools
    were placed: prelu_kpu's, residual_kpu's; or a depthwise layer, which kcc never pools) becomes a
    1x1 KPU layer with identity weights and the pool, reading the map in KPU RAM: on its input's grid
    it moves the max of the codes exactly (kcc.ir.code_moves.shift_copy; non-depthwise, the pairing
    nncase itself makes). Taken when it costs less than the pool's window taps on the CPU
    (kcc.target.k210's costs). The placements (kcc.passes.legalize_kpu.Placement) of the pools it
    takes say so."""
    done = {}
    for n in list(g.nodes):
        x = n.inputs[0] if n.inputs else None
        if not (isinstance(n.op, O.Pool2D) and n.op.op == "max" and _in_kpu_ram(x)):
            continue
        code = kpu_pool_code(n.op, *x.shape[2:])
        shift = None if code else split_max_pool(n.op, *x.shape[2:], nonneg_layer(x))
        codes = [code] if code else ["max_2_s1", "max_2_s2"] if shift is not None else []
        c, h, w = x.shape[1:]
        if not codes or c > MAX_CHANNELS or min(h, w) < MIN_HW:
            continue
        layers = len(codes) * kpu_layer_cost(kpu_map_cycles(c, h, w, c, False), c * c)
        if shift not in (None, (0, 0)):
            layers += kpu_layer_cost(kpu_map_cycles(c, h, w, c, True), 9 * c)
        if layers >= n.type.size * n.op.filter[0] * n.op.filter[1] * cpu_cycles("window_tap"):
            continue
        eye = g.insert_before(n, O.Constant(np.eye(c, dtype=np.float32)[:, :, None, None]), (), n.name + "/eye")
        zero = g.insert_before(n, O.Constant(np.zeros(c, np.float32)), (), n.name + "/zero")
        y = x
        for i, code in enumerate(codes):
            last = i == len(codes) - 1
            y = g.insert_before(n, KO.FloatKpuConv(1, False, code), (y, eye, zero), n.name if last else f"{n.name}/{code}")
            if i == 0 and shift not in (None, (0, 0)):
                y = _shifted(lambda op, ins, name: g.insert_before(n, op, ins, name), y, shift, n.name)
        what = "a 1x1 KPU layer with identity weights pools" if len(codes) == 1 else \
            "two 1x1 KPU layers with identity weights pool"
        moved = ", the first's map shifted by a 3x3 depthwise copy" if shift not in (None, (0, 0)) else ""
        done[n.name] = f"{' then '.join(codes)}: {what} the map in KPU RAM{moved}"
        g.substitute(n, y, "/cpu")
    if done:
        g.remove_dead()
    placements[:] = [replace(p, on_kpu=True, reason=done[p.node] if not p.reason.endswith(REST_ON_CPU) else
                             f"{p.reason[:-len(REST_ON_CPU)]}, then {done[p.node]}")
                     if p.op == "pool2d" and p.node in done else p for p in placements]
    return g


def _uploaded_groups(x: Node, users: dict[Node, list[Node]]) -> list[Node] | None:
    """The channel slices of float x that KPU layers read (a decomposed conv's channel groups,
    kcc.passes.kernel_forms `_group_source`: each quantized and uploaded on its own), in order, when
    they are disjoint and cover all of x's channels and none is read with its rounding residual (its
    grid too coarse for its readers: kcc.ir.kpu_ops.QuantResidual); else None."""
    parts = sorted((s for s in users[x] if channel_range(s) is not None
                    and any(isinstance(u.op, KO.FloatKpuConv) for u in users[s])), key=lambda s: channel_range(s))
    if any(isinstance(u.op, KO.QuantResidual) for s in [x, *parts] for u in users[s]):
        return None
    ends = [0] + [channel_range(s)[1] for s in parts]
    if not parts or ends[-1] != x.shape[1] or any(channel_range(s)[0] != e for s, e in zip(parts, ends)):
        return None
    return parts


def max_pools_of_uploaded_groups(g: Graph, placements: list) -> Graph:
    """A max pool the unit computes, left on the CPU over a float map whose channel groups are uploaded
    for KPU layers anyway (BlazePalm's stride-2 skips: the PReLU a decomposed 5x5 reads in groups)
    becomes one 1x1 KPU layer with identity weights and the pool per group, over the group's codes in
    KPU RAM (the max of codes on one grid is a code: kcc.ir.code_moves.shift_copy), their outputs
    concatenated. The pooled map is then on the groups' grids, those of the 5x5's input, where it was
    the float. Taken where it costs less than the window taps on the CPU, with the download and
    dequantization a CPU reader then pays (kcc.target.k210's costs)."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    done = {}
    for n in list(g.nodes):
        x = n.inputs[0] if n.inputs else None
        if not (isinstance(n.op, O.Pool2D) and n.op.op == "max") or isinstance(x.op, KO.FloatKpuConv):
            continue
        code = kpu_pool_code(n.op, *x.shape[2:])
        parts = _uploaded_groups(x, users) if code and x.shape[0] == 1 and min(x.shape[2:]) >= MIN_HW else None
        if parts is None:
            continue
        kpu_readers = id(n) not in outputs and all(isinstance(u.op, KO.FloatKpuConv) for u in users[n])
        kpu = 0.0
        for s in parts:
            c, h, w = s.shape[1:]
            kpu += kpu_layer_cost(kpu_map_cycles(c, h, w, c, False), c * c)
            if not kpu_readers:
                kpu += 2 * CPU_NODE_CYCLES + s.type.size // 4 * (cpu_cycles("kpu_download_byte") + cpu_cycles("dequantize"))
        if kpu >= n.type.size * n.op.filter[0] * n.op.filter[1] * cpu_cycles("window_tap"):
            continue
        pooled = []
        for i, s in enumerate(parts):
            c = s.shape[1]
            eye = g.insert_before(n, O.Constant(np.eye(c, dtype=np.float32)[:, :, None, None]), (), f"{n.name}/eye{i}")
            zero = g.insert_before(n, O.Constant(np.zeros(c, np.float32)), (), f"{n.name}/zero{i}")
            pooled.append(g.insert_before(n, KO.FloatKpuConv(1, False, code), (s, eye, zero), f"{n.name}/group{i}"))
        y = g.insert_before(n, O.Concat(1), tuple(pooled), n.name)
        done[n.name] = (f"{code}: a 1x1 KPU layer with identity weights pools each of the {len(parts)} channel "
                        f"groups a decomposed conv uploads")
        g.substitute(n, y, "/cpu")
    if done:
        g.remove_dead()
    placements[:] = [replace(p, on_kpu=True, reason=done[p.node]) if p.op == "pool2d" and p.node in done else p
                     for p in placements]
    return g


#: the placement of a half-pixel x2 upsampling `half_pixel_x2_on_kpu` takes
UPSAMPLING_FORM = ("two 1x1 KPU layers with identity weights and mean_2_s1 pools over the nearest x2 map one "
                   "sample late, which the CPU builds from the codes by slices and concatenations")


def _half_pixel_x2(n: Node) -> bool:
    op = n.op
    return (isinstance(op, O.Resize) and op.mode == "bilinear" and op.half_pixel_centers and not op.align_corners
            and n.type.rank == 4 and op.size == (2 * n.inputs[0].shape[2], 2 * n.inputs[0].shape[3]))


def _late(g: Graph, n: Node, x: Node, axis: int, suffix: str) -> Node:
    """x one sample late along `axis`: [x[0], x[:-1]] (two slices and a concatenation before n)."""
    def rows(a: int, b: int, name: str) -> Node:
        begin, end = [0] * 4, list(x.shape)
        begin[axis], end[axis] = a, b
        return g.insert_before(n, O.StridedSlice(tuple(begin), tuple(end), (1, 1, 1, 1)), (x,), f"{n.name}/{name}{suffix}")
    head = (rows(0, 1, "first"), rows(0, x.shape[axis] - 1, "head"))
    return g.insert_before(n, O.Concat(axis), head, f"{n.name}/late{suffix}")


def _interleaved(g: Graph, n: Node, even: Node, odd: Node, axis: int, suffix: str) -> Node:
    """[even[0], odd[0], even[1], odd[1], ...] along `axis` (2 or 3) of two batch-1 maps: each as
    blocks of one sample along a new axis after `axis`, concatenated there, and read back."""
    _, c, h, w = even.shape
    block = (1, c * h, w, 1) if axis == 3 else (1, c * h, 1, w)
    parts = tuple(g.insert_before(n, O.Reshape(block), (m,), f"{n.name}/{tag}{suffix}")
                  for m, tag in ((even, "even"), (odd, "odd")))
    pairs = g.insert_before(n, O.Concat(3 if axis == 3 else 2), parts, f"{n.name}/pairs{suffix}")
    out = (1, c, h, 2 * w) if axis == 3 else (1, c, 2 * h, w)
    return g.insert_before(n, O.Reshape(out), (pairs,), f"{n.name}/interleaved{suffix}")


def _upsampling_cycles(x: Node, n: Node, kpu_readers: bool) -> tuple[float, float]:
    """CPU cycles of the upsampling n of x as lower_to_neutral makes it (a 2h x 2w float resize and a
    2x2 mean window) and as `half_pixel_x2_on_kpu` does, with what each form's readers then pay: codes
    for KPU readers, floats for the others (kcc.target.k210's costs)."""
    _, c, h, w = x.shape
    out = n.type.size
    slices = c * h * w + c * h * (w - 1) + 2 * c * w + 2 * c * (h - 1) * w  # the first samples and heads
    blocks = 2 * (c * h + c * h * w) + 2 * (c + c * h)  # late W, pairs W, late H, pairs H
    cpu = 2 * CPU_NODE_CYCLES + out * (cpu_cycles("resize") + 4 * cpu_cycles("window_tap"))
    kpu = (14 * CPU_NODE_CYCLES + slices * cpu_cycles("strided_slice") + blocks * cpu_cycles("concat_block")
           + 3 * out * cpu_cycles("copy_byte") + upload_cycles((1, c, 2 * h, 2 * w))
           + sum(2 * kpu_layer_cost(kpu_map_cycles(k, 2 * h, 2 * w, k, False), k * k)
                 for k in (min(MEAN_GROUP, c - c0) for c0 in range(0, c, MEAN_GROUP))))
    if kpu_readers:
        cpu += out * cpu_cycles("quantize") + upload_cycles((1, c, 2 * h, 2 * w))
    else:
        kpu += out * (cpu_cycles("kpu_download_byte") + cpu_cycles("dequantize"))
    return cpu, kpu


def late_nearest_floors(h: int, w: int) -> tuple[float, float]:
    """How low the two means' floors leave their outputs on average, in steps, over the late nearest
    map of an h x w map of codes whose residues are all alike: counted on 512 maps of random codes
    (a fixed seed: the same figures every time). The first pool's windows repeat samples
    (those at odd rows and columns hold one code 4 times), so it floors less than 3/8; the second's
    inputs are correlated the same way (kcc.quant.floors `own_floor`). BlazePalm's 12x12: 0.202
    and 0.353 steps."""
    x = np.random.default_rng(0).integers(0, 256, (512, 1, h, w)).astype(np.float32)
    rows, cols = np.maximum(0, (np.arange(2 * h) - 1) // 2), np.maximum(0, (np.arange(2 * w) - 1) // 2)
    v = x[:, :, rows][:, :, :, cols]
    mean_v = kpu_pool("mean_2_s1", v)  # the means in real numbers (sums of codes / 4: exact)
    first = np.floor(mean_v)  # on codes the KPU floors them
    mean_first = kpu_pool("mean_2_s1", first)
    return (float(np.mean(mean_v - first, dtype=np.float64)),
            float(np.mean(mean_first - np.floor(mean_first), dtype=np.float64)))


#: channels of one mean layer: its identity weights take MEAN_GROUP^2 bytes of the kmodel, a layer
#: ~KPU_LAYER_BYTES more (kcc.target.k210); 32 keeps their sum near its least, ~47 B a channel a
#: layer against C bytes for one layer over all C (BlazePalm's 256: 256)
MEAN_GROUP = 32


def _means(g: Graph, n: Node, v: Node) -> Node:
    """The two mean_2_s1 layers over v, with the floors their inputs' structure fixes, in
    groups of MEAN_GROUP channels (channel views of v, on v's one grid: kcc.quant.policy
    `share_view_grids`), concatenated along channels (in KPU RAM for a KPU reader)."""
    nb, c, h, w = v.shape
    floors = late_nearest_floors(h // 2, w // 2)
    outs = []
    for c0 in range(0, c, MEAN_GROUP):
        c1, tag = min(c, c0 + MEAN_GROUP), (f"_{c0 // MEAN_GROUP}" if c > MEAN_GROUP else "")
        part = v if c <= MEAN_GROUP else g.insert_before(
            n, O.StridedSlice((0, c0, 0, 0), (nb, c1, h, w), (1, 1, 1, 1)), (v,), f"{n.name}/channels{tag}")
        eye = g.insert_before(n, O.Constant(np.eye(c1 - c0, dtype=np.float32)[:, :, None, None]), (), f"{n.name}/eye{tag}")
        zero = g.insert_before(n, O.Constant(np.zeros(c1 - c0, np.float32)), (), f"{n.name}/zero{tag}")
        y = g.insert_before(n, KO.FloatKpuConv(1, False, "mean_2_s1", floor_bias=floors[0]), (part, eye, zero),
                            f"{n.name}/mean_w{tag}")
        last = n.name if c <= MEAN_GROUP else f"{n.name}/mean_h{tag}"
        outs.append(g.insert_before(n, KO.FloatKpuConv(1, False, "mean_2_s1", floor_bias=floors[1]), (y, eye, zero),
                                    last))
    return outs[0] if len(outs) == 1 else g.insert_before(n, O.Concat(1), tuple(outs), n.name)


def half_pixel_x2_on_kpu(g: Graph) -> tuple[Graph, list[str]]:
    """Every TF half-pixel bilinear x2 upsampling as the nearest x2 map one sample late, built on the
    CPU, and two mean_2_s1 KPU layers (module docstring), where the KPU takes the map and it costs
    less than lower_to_neutral's resize and mean window; and the names of those it took."""
    users = g.users()
    outputs = {id(o) for o in g.outputs}
    done = []
    for n in list(g.nodes):
        if not _half_pixel_x2(n):
            continue
        x = n.inputs[0]
        nb, c, h, w = x.shape
        if nb != 1 or min(h, w) < 2 or not layer_fits(n.shape, c, 1):
            continue
        kpu_readers = id(n) not in outputs and all(isinstance(u.op, KO.FloatKpuConv) for u in users[n])
        cpu, kpu = _upsampling_cycles(x, n, kpu_readers)
        if kpu >= cpu:
            continue
        v = _interleaved(g, n, _late(g, n, x, 3, "_w"), x, 3, "_w")
        v = _interleaved(g, n, _late(g, n, v, 2, "_h"), v, 2, "_h")
        y = _means(g, n, v)
        done.append(n.name)
        g.substitute(n, y, "/cpu")
    if done:
        g.remove_dead()
    return g, done
