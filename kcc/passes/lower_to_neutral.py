"""lower_to_neutral: rewrite IR ops that no kmodel v4 neutral op expresses into ones that do.

After this pass every node maps onto exactly one kmodel body (see `kcc.emit`), except Reshape, which
is free (it aliases its input's buffer). Each rewrite keeps the original node's name on the node
that replaces it, so graph outputs keep their tflite names.

    prelu(x, a)          -> x + clamp((a-1)*x)    per-channel a (1x1 depthwise conv2d), or
                            max(x, a*x) / min(x, a*x) in runs of channels for slopes on both
                            sides of 1 (kcc.passes.float_prelu)
                          -> max(x, x*a)          other constant a, if 0 <= a <= 1 everywhere
                          -> max(x,0) + a*min(x,0)             otherwise
    x +-* c (c constant per channel), clamp(x) of 4-D x -> 1x1 depthwise conv2d (_binary, _clamp)
    x op s, s broadcast (a squeeze-excite gate [N, C, 1, 1], a spatial attention map [N, 1, H, W])
                         -> concats of copies of s to x's shape, then a same-shape binary or
                            quantized_binary (_same_shapes):
                            nncase's binary runs a flat loop on same-shape operands and a 4-D offset
                            loop otherwise (v0.2 neutral_kernels.h), when the copies cost less
    y + pad(x), zeros along channels (a BlazeBlock's stride-2 skip)
                         -> concat(y's other channels, x + y's channels of x) (_add_of_channel_pad)
    l2_normalize(x)      -> x * rsqrt(max(sum(x*x), eps^2))
    softmax(x, axis!=-1) -> transpose, softmax(last axis), transpose back   (kmodel_v4.md §8.10)
    reduce(keepdims=F)   -> reduce(keepdims=T), reshape         (kmodel reduce keeps dims, §8.7)
    mean/max over H, W   -> reduce_window2d over the whole map  (a global pool: a window tap costs
                            less than reduce's per-element offsets, kcc.target.k210's CPU_CYCLES)
    conv2d_transpose(b)  -> conv2d_transpose(no bias) + b       (nncase's kernel ignores its bias)
    resize               -> resize_image when nncase's formula equals TFLite's, else two matmuls
                            with constant interpolation matrices (exact: resizing is linear)
    bilinear x2, half-pixel centres -> resize_image x2 (plain) + 2x2 mean pool, stride 1, padded
                            top/left (_half_pixel_x2): a third of the matmuls' cost
    slice(pad(x))        -> pad(x) when the window keeps all of x (crop_as_pad), then as a pad:
    pad(x)               -> one concat per padded axis with constant fill blocks, when the cost model
                            says it is cheaper (_pad: a memcpy a block instead of an offset an element)
    resize of a 1x1 map  -> concats of copies (every mode samples the one pixel: a broadcast; an
                            ASPP image-pooling branch): a few bytes copied per output element
                            instead of resize_image's interpolation or the matmuls' taps
    nearest resize by integer factors (FPN's, YOLO's x2 upsampling) -> concats of copies (_repeat),
                            where they cost less than resize_image's index arithmetic per element
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kcc.errors import UnsupportedModelError
from kcc.eval import kernels
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_values, copy_rewriting
from kcc.ir.types import TensorType
from kcc.passes.float_prelu import depthwise, prelu
from kcc.target.k210 import CPU_NODE_CYCLES, cpu_cycles

if TYPE_CHECKING:
    from kcc.passes.manager import CompileContext

F32 = np.float32


class _Builder:
    """Copies a graph node by node into a new one, letting rules emit replacements."""

    def __init__(self, src: Graph):
        self.src = src
        self.g = Graph()
        self.map: dict[int, Node] = {}
        self.pads = pads_as_concats(src)  # the pads lowered to concatenations (_pad)

    def add(self, op: O.Op, inputs, name: str, note: str = "") -> Node:
        return self.g.add(op, inputs, name, note)

    def const(self, data: np.ndarray, name: str) -> Node:
        return self.g.constant(np.asarray(data), name)




def _binary(b: _Builder, n: Node, x: Node, y: Node) -> Node:
    """A 4-D map with a constant that varies along channels only becomes a 1x1 depthwise conv2d, which
    computes `bias + x*w` (kmodel_v4.md §8.3): x + c as (w 1, bias c), x - c as (1, -c), c - x as
    (-1, c), x * c as (c, 0); the same float32 result, without the broadcast binary's per-element
    offsets (kcc.target.k210 CPU_CYCLES "broadcast")."""
    op: O.Binary = n.op
    narrow = _add_of_channel_pad(b, n)
    if narrow is not None:
        return narrow
    for t, c, first in ((x, y, True), (y, x, False)):
        if op.op not in ("add", "sub", "mul") or t.is_constant or t.shape != n.shape:
            continue
        slopes = channel_values(t, c)
        if slopes is None:
            continue
        one = np.ones_like(slopes)
        w, bias = {"add": (one, slopes), "mul": (slopes, np.zeros_like(slopes)),
                   "sub": (one, -slopes) if first else (-one, slopes)}[op.op]
        return depthwise(b, t, w, op.act, n.name, bias)
    return b.add(op, _same_shapes(b, n, x, y, "binary"), n.name, n.note)


def _add_of_channel_pad(b: _Builder, n: Node) -> Node | None:
    """y + pad(x) with zeros along channels only (a stride-2 BlazeBlock's skip: MediaPipe's
    channel_padding after its max pool) -> y's channels outside x's range unchanged, x + y on x's:
    a concatenation of y's channel views (batch 1: no copy until the concatenation) and the narrower
    add, instead of the pad (54 cycles an element of its output, kcc.target.k210) and an add over
    channels of zeros. The same float32 values (y + 0 is y). None where the add is not that."""
    op: O.Binary = n.op
    if op.op != "add" or op.act != O.NO_CLAMP or n.shape[0] != 1 or n.type.rank != 4:
        return None
    for p, y in n.inputs, n.inputs[::-1]:
        pads = p.op.paddings if isinstance(p.op, O.Pad) and p.op.value == 0.0 else None
        if pads is None or any(pads[a] != (0, 0) for a in (0, 2, 3)) or y.is_constant or y.shape != n.shape:
            continue
        c, h, w = n.shape[1:]
        c0, c1 = pads[1][0], c - pads[1][1]
        ym = b.map[id(y)]

        def channels(a: int, z: int) -> Node:
            return b.add(O.StridedSlice((0, a, 0, 0), (1, z, h, w), (1, 1, 1, 1)), (ym,), f"{n.name}/channels{a}")

        mid = b.add(op, (b.map[id(p.inputs[0])], channels(c0, c1)), f"{n.name}/padded_channels", n.note)
        parts = ([channels(0, c0)] if c0 else []) + [mid] + ([channels(c1, c)] if c1 < c else [])
        return b.add(O.Concat(1), tuple(parts), n.name)
    return None


#: largest float copy of a broadcast operand (`repeats`): working memory (device RAM) beside the map
#: it multiplies; a squeeze-excite gate over a 112x112x32 map in float (1.5 MiB) is not repeated
EXPAND_BYTES = 1024 * 1024


def _quant_binary(b: _Builder, n: Node, x: Node, y: Node) -> Node:
    return b.add(n.op, _same_shapes(b, n, x, y, "quantized_binary"), n.name, n.note)


def repeats(operand: TensorType, to: tuple[int, ...], kernel: str) -> bool:
    """A broadcast operand of a binary op (nncase kernel `kernel`: binary, quantized_binary) of shape
    `to` is repeated to that shape (`_same_shapes`): the copies and the runtime's flat loop cost less
    than its 4-D offset loop (nncase v0.2 neutral_kernels.h), and, in float, the copy is at most
    EXPAND_BYTES (on codes it is smaller than the float operands it saves)."""
    size = int(np.prod(to, dtype=np.int64))
    if operand.rank != len(to) or operand.shape == tuple(to):
        return False
    if kernel == "binary" and size * operand.dtype.itemsize > EXPAND_BYTES:
        return False
    cycles = _expand_cycles(operand.shape, tuple(to), operand.dtype.itemsize) + size * cpu_cycles(kernel)
    return cycles < size * (cpu_cycles(kernel) + cpu_cycles("broadcast"))


def _same_shapes(b: _Builder, n: Node, x: Node, y: Node, kernel: str) -> tuple[Node, Node]:
    """Binary n's operands, a broadcast one repeated to n's shape where that pays (`repeats`)."""
    for t, u in ((x, y), (y, x)):
        if t.shape == n.shape and repeats(u.type, n.shape, kernel):
            wide = _expand(b, u, n.shape, u.name + "/expanded")
            return (x, wide) if t is x else (wide, y)
    return x, y


def _clamp(b: _Builder, n: Node, x: Node) -> Node:
    """clamp of a 4-D map: a 1x1 depthwise conv2d (w 1, bias 0) with the clamp fused, `0 + x*1` being
    x, rather than emit's binary add of a broadcast scalar 0 (kcc.emit._clamp_to_binary)."""
    if x.type.rank != 4:
        return b.add(n.op, (x,), n.name, n.note)
    return depthwise(b, x, np.ones(x.shape[1], F32), (n.op.lo, n.op.hi), n.name)


def _l2_normalize(b: _Builder, n: Node, x: Node) -> Node:
    op: O.L2Normalize = n.op
    sq = b.add(O.Unary("square"), (x,), n.name + "/square")
    ss = b.add(O.Reduce("sum", (op.axis,), True), (sq,), n.name + "/sum")
    eps = b.const(np.array(op.eps * op.eps, F32), n.name + "/eps2")
    clamped = b.add(O.Binary("max"), (ss, eps), n.name + "/max_eps")
    inv = b.add(O.Unary("rsqrt"), (clamped,), n.name + "/rsqrt")
    return b.add(O.Binary("mul"), (x, inv), n.name)


def _softmax(b: _Builder, n: Node, x: Node) -> Node:
    op: O.Softmax = n.op
    last = x.type.rank - 1
    if op.axis == last:
        return b.add(op, (x,), n.name)
    perm = tuple(i for i in range(x.type.rank) if i != op.axis) + (op.axis,)
    inv = tuple(int(i) for i in np.argsort(perm))
    t = b.add(O.Transpose(perm), (x,), n.name + "/to_last")
    s = b.add(O.Softmax(last, op.beta), (t,), n.name + "/softmax")
    return b.add(O.Transpose(inv), (s,), n.name)


def _reduce(b: _Builder, n: Node, x: Node) -> Node:
    op: O.Reduce = n.op
    if (len(x.shape) == 4 and set(op.axes) == {2, 3} and op.op in ("mean", "max")
            and cpu_cycles("window_tap") < cpu_cycles("reduce")):
        _, _, h, w = x.shape
        r = b.add(O.Pool2D(op.op, (h, w), (1, 1)), (x,), n.name if op.keepdims else n.name + "/keepdims")
        return r if op.keepdims else b.add(O.Reshape(n.shape), (r,), n.name)
    if op.keepdims:
        return b.add(op, (x,), n.name)
    r = b.add(O.Reduce(op.op, op.axes, True), (x,), n.name + "/keepdims")
    return b.add(O.Reshape(n.shape), (r,), n.name)


def _conv2d_transpose(b: _Builder, n: Node, x: Node, w: Node, bias: Node) -> Node:
    op: O.Conv2DTranspose = n.op
    if bias.is_constant and not np.any(bias.data):
        return b.add(op, (x, w, bias), n.name)
    zero = b.const(np.zeros(bias.shape, F32), n.name + "/no_bias")
    conv = b.add(O.Conv2DTranspose(op.out_shape, op.stride, op.padding, op.dilation, op.groups),
                 (x, w, zero), n.name + "/conv")
    b4 = b.add(O.Reshape((1, bias.shape[0], 1, 1)), (bias,), n.name + "/bias4")
    return b.add(O.Binary("add", op.act), (conv, b4), n.name)


def native_resize_ok(op: O.Resize, in_hw: tuple[int, int]) -> bool:
    """True when nncase's resize_image kernel computes exactly what TFLite does for `op`."""
    if op.half_pixel_centers and op.mode == "bilinear":
        return False
    if op.mode == "bilinear":
        return True  # nncase: scale = in/out or (in-1)/(out-1) with align_corners, same weights
    if op.align_corners or op.half_pixel_centers:  # nncase nearest knows neither flag
        for size_in, size_out in zip(in_hw, op.size):
            ours = kernels._resize_nearest_axis(size_in, size_out, op.align_corners, op.half_pixel_centers)
            plain = kernels._resize_nearest_axis(size_in, size_out, False, False)
            if not np.array_equal(ours, plain):
                return False
    return True


def _repeat_factors(op: O.Resize, in_hw: tuple[int, int]) -> tuple[int, int] | None:
    """(fh, fw) when nearest resize `op` repeats every pixel fh x fw times (an integer upsampling,
    whichever of TFLite's flags: output row i reads input row i // fh), else None."""
    if op.mode != "nearest":
        return None
    factors = []
    for size_in, size_out in zip(in_hw, op.size):
        idx = kernels._resize_nearest_axis(size_in, size_out, op.align_corners, op.half_pixel_centers)
        f = size_out // size_in
        if size_out % size_in or not np.array_equal(idx, np.arange(size_out) // f):
            return None
        factors.append(f)
    return factors[0], factors[1]


def _repeat_steps(x: TensorType, f: tuple[int, int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The `_expand`s of `_repeat`: (shape, to) of each, x's rows of pixels then its rows repeated."""
    nb, c, h, w = x.shape
    rows = nb * c * h
    return [((rows, w, 1), (rows, w, f[1])), ((rows, 1, w * f[1]), (rows, f[0], w * f[1]))]


def _repeat(b: _Builder, n: Node, x: Node, f: tuple[int, int]) -> Node:
    """Nearest upsampling by integer factors (fh, fw) as concatenations of copies (`_expand`): each
    pixel fw times along a new innermost axis, then each row fh times (reshapes between are free)."""
    for i, (shape, to) in enumerate(_repeat_steps(x.type, f)):
        x = _expand(b, b.add(O.Reshape(shape), (x,), f"{n.name}/view{i}"), to, f"{n.name}/repeat{i}")
    return b.add(O.Reshape(n.shape), (x,), n.name)


def _interp_matrix(size_in: int, size_out: int, op: O.Resize) -> np.ndarray:
    """[size_in, size_out] matrix M with out = in @ M along one axis."""
    m = np.zeros((size_in, size_out), F32)
    cols = np.arange(size_out)
    if op.mode == "nearest":
        m[kernels._resize_nearest_axis(size_in, size_out, op.align_corners, op.half_pixel_centers), cols] = 1
    else:
        lo, hi, frac = kernels._resize_bilinear_axis(size_in, size_out, op.align_corners, op.half_pixel_centers)
        np.add.at(m, (lo, cols), 1 - frac)
        np.add.at(m, (hi, cols), frac)
    return m


def _expand_steps(shape: tuple[int, ...], to: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    """The concatenations that repeat a tensor of `shape` to `to`: (axis, shape after), innermost
    axis first, so that each copies whole rows already repeated."""
    steps, now = [], list(shape)
    for axis in reversed(range(len(shape))):
        if now[axis] != to[axis]:
            now[axis] = to[axis]
            steps.append((axis, tuple(now)))
    return steps


def _expand_cycles(shape: tuple[int, ...], to: tuple[int, ...], itemsize: int) -> float:
    """CPU cycles of `_expand` (kmodel concat, §8.2: a memcpy per (outer, input) block)."""
    cycles = 0.0
    for axis, after in _expand_steps(shape, to):
        blocks = int(np.prod(after[:axis + 1], dtype=np.int64))
        size = int(np.prod(after, dtype=np.int64)) * itemsize
        cycles += CPU_NODE_CYCLES + blocks * cpu_cycles("concat_block") + size * cpu_cycles("copy_byte")
    return cycles


def _expand(b: _Builder, x: Node, to: tuple[int, ...], name: str) -> Node:
    """x repeated along its size-1 axes to shape `to`: one concatenation of copies per axis
    (an ASPP image-pooling branch's 1x1 map to the map's size: N*C*(OW + OH) blocks in all)."""
    steps = _expand_steps(x.shape, to)
    for i, (axis, _) in enumerate(steps):
        x = b.add(O.Concat(axis), (x,) * to[axis], name if i == len(steps) - 1 else f"{name}/axis{axis}")
    return x if steps else b.add(O.Reshape(tuple(to)), (x,), name)  # nothing to repeat: an alias


#: most bytes of constant fills the pads lowered to concatenations may add to a model's kmodel: the
#: constants blob holds one fill per byte value (kcc.emit.storage), as large as the largest block of
#: that value, and device RAM is what BlazePalm runs out of (its 70 zero points' fills: ~43 KB)
PAD_FILL_BYTES = 16 * 1024


def _pad_steps(n: Node) -> tuple[list[tuple[int, int, int]], int, float, float]:
    """The concatenations a pad becomes (_pad), one (axis, before, after) per padded axis, innermost
    first; the largest fill block in bytes; and the CPU cycles of nncase's pad and of the concatenations."""
    op: O.Pad = n.op
    shape, item = list(n.inputs[0].shape), n.dtype.itemsize
    steps, block, concat = [], 0, 0.0
    for axis in reversed(range(len(shape))):
        before, after = op.paddings[axis]
        if before == after == 0:
            continue
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        block = max(block, outer * max(before, after) * inner * item)
        shape[axis] += before + after
        concat += (cpu_cycles("concat_block") * outer * (1 + (before > 0) + (after > 0)) + CPU_NODE_CYCLES
                   + cpu_cycles("copy_byte") * int(np.prod(shape, dtype=np.int64)) * item)
        steps.append((axis, before, after))
    return steps, block, cpu_cycles("pad") * n.type.size + CPU_NODE_CYCLES, concat


def crop_as_pad(n: Node) -> O.Pad | None:
    """A step-1 strided slice of a pad that keeps all of the pad's input, as one pad of that input
    (the slice's share of the pad's rows and columns): a shifted window the CPU would otherwise copy
    element by element becomes concatenations (`_pad`). BlazePalm's CPU stacks crop four 26x26
    windows of each 24x24 group padded to 29x29; the top-left one is such a pad."""
    if not (isinstance(n.op, O.StridedSlice) and isinstance(n.inputs[0].op, O.Pad)
            and all(s == 1 for s in n.op.strides)):
        return None
    x = n.inputs[0]
    pads = []
    for d, (before, _), b, e in zip(x.inputs[0].shape, x.op.paddings, n.op.begin, n.op.end):
        if b > before or e < before + d:  # the window cuts into the pad's input
            return None
        pads.append((before - b, e - before - d))
    return O.Pad(tuple(pads), x.op.value)


def _fold_crops_of_pads(g: Graph) -> Graph:
    """`crop_as_pad` on every slice of g (the pad it read stays for its other readers, if any)."""
    mapping: dict[int, Node] = {}
    out = Graph()

    def rewrite(n: Node) -> Node | None:
        op = crop_as_pad(n)
        return None if op is None else out.add(op, (mapping[id(n.inputs[0].inputs[0])],), n.name, n.note)
    return copy_rewriting(g, out, mapping, rewrite)


def pad_cycles(n: Node) -> float:
    """CPU cycles of pad n as lower_to_neutral emits it alone: concatenations when they are cheaper and
    their fills within PAD_FILL_BYTES (`pads_as_concats`), else nncase's pad."""
    steps, block, pad, concat = _pad_steps(n)
    return concat if steps and concat < pad and block <= PAD_FILL_BYTES else pad


def pads_as_concats(g: Graph) -> set[int]:
    """The pads `_pad` lowers: those the cost model says are cheaper as concatenations, by fill value
    (a value's pads share its fill), the most cycles saved per fill byte first, while the fills stay
    within PAD_FILL_BYTES."""
    groups: dict[bytes, list] = {}
    for k, n in enumerate(g.nodes):
        if isinstance(n.op, O.Pad):
            steps, block, pad, concat = _pad_steps(n)
            saved = pad - concat
            if steps and saved > 0:
                key = np.full(1, n.op.value, n.dtype.numpy).tobytes()
                grp = groups.setdefault(key, [0, 0.0, [], k])  # its first pad's place: ties go by graph order
                grp[0], grp[1] = max(grp[0], block), grp[1] + saved
                grp[2].append(id(n))
    chosen, spent = set(), 0
    for block, saved, ids, _ in sorted(groups.values(), key=lambda v: (-v[1] / max(v[0], 1), v[3])):
        if spent + block <= PAD_FILL_BYTES:
            spent += block
            chosen.update(ids)
    return chosen


def _pad(b: _Builder, n: Node, x: Node) -> Node:
    """A constant pad as one concatenation per padded axis, innermost first, with constant blocks of
    the pad value before and after: kmodel concat copies bytes, one memcpy a (outer index, input) block
    (~1.6 cycles a byte + ~64 a block, kcc.target.k210), where nncase's pad computes a 4-D offset per
    output element (54 cycles an element measured): deeplabv3's 257x257 input padded for its stride-2
    stem, 27 -> ~1 ms. Byte for byte the same tensor. Only the pads `pads_as_concats` chose."""
    op: O.Pad = n.op
    if id(n) not in b.pads:
        return b.g.add(op, (x,), n.name, n.note)
    steps = _pad_steps(n)[0]
    y = x
    for k, (axis, before, after) in enumerate(steps):
        def block(p: int, side: str) -> Node:
            blk = list(y.shape)
            blk[axis] = p
            return b.const(np.full(blk, op.value, n.dtype.numpy), f"{n.name}/{side}{axis}")
        parts = ([block(before, "before")] if before else []) + [y] + ([block(after, "after")] if after else [])
        y = b.add(O.Concat(axis), tuple(parts), n.name if k == len(steps) - 1 else f"{n.name}/axis{axis}")
    return y


def _half_pixel_x2(b: _Builder, n: Node, x: Node) -> Node:
    """TF's bilinear x2 with half-pixel centres (Keras UpSampling2D: BlazePalm's FPN) from ops nncase
    has. Along one axis it samples x at j - 1/4 and j + 1/4 (out 2j, 2j+1), clamped to the ends;
    nncase's plain x2 resize_image samples p(2j) = x(j), p(2j+1) = x(j + 1/2), clamped. Sampling is
    linear between neighbours, so the mean of two neighbouring plain samples is the half-pixel one:
    (p(2j-1) + p(2j)) / 2 = x(j - 1/4), (p(2j) + p(2j+1)) / 2 = x(j + 1/4); at out 0 the pair is
    p(0) alone (= x(0), TF's clamp), at the end p(2W-1) = x(W-1) = TF's clamp. Both axes: a 2x2 mean
    pool at stride 1 over p, padded one row and column at the top/left, padding not counted
    (kmodel reduce_window2d's mean, kmodel_v4.md §8.8). Equal to TF's up to float rounding."""
    plain = b.add(O.Resize("bilinear", n.shape[2:], False, False), (x,), n.name + "/plain_x2")
    return b.add(O.Pool2D("mean", (2, 2), (1, 1), ((1, 0), (1, 0))), (plain,), n.name)


def _resize(b: _Builder, n: Node, x: Node) -> Node:
    op: O.Resize = n.op
    nb, c, h, w = x.shape
    oh, ow = op.size
    if (h, w) == (1, 1) and oh * ow > 1:
        return _expand(b, x, n.shape, n.name)  # a broadcast
    if op.mode == "bilinear" and op.half_pixel_centers and not op.align_corners and (oh, ow) == (2 * h, 2 * w):
        return _half_pixel_x2(b, n, x)
    f = _repeat_factors(op, (h, w))
    if f is not None and sum(_expand_cycles(*step, x.dtype.itemsize) for step in _repeat_steps(x.type, f)) \
            < n.type.size * cpu_cycles("resize"):
        return _repeat(b, n, x, f)
    if native_resize_ok(op, (h, w)):
        plain = O.Resize(op.mode, op.size, op.align_corners and op.mode == "bilinear", False)
        return b.add(plain, (x,), n.name)
    # out = Rh^T . X . Rw per (n, c) plane, as two matmuls over flattened rows.
    rw = b.const(_interp_matrix(w, ow, op), n.name + "/rw")
    rh = b.const(_interp_matrix(h, oh, op), n.name + "/rh")
    zw = b.const(np.zeros(ow, F32), n.name + "/zw")
    zh = b.const(np.zeros(oh, F32), n.name + "/zh")
    rows = b.add(O.Reshape((nb * c * h, w)), (x,), n.name + "/rows")
    xw = b.add(O.MatMul(), (rows, rw, zw), n.name + "/resize_w")
    xw4 = b.add(O.Reshape((nb, c, h, ow)), (xw,), n.name + "/resize_w4")
    t = b.add(O.Transpose((0, 1, 3, 2)), (xw4,), n.name + "/swap_hw")
    cols = b.add(O.Reshape((nb * c * ow, h)), (t,), n.name + "/cols")
    xh = b.add(O.MatMul(), (cols, rh, zh), n.name + "/resize_h")
    xh4 = b.add(O.Reshape((nb, c, ow, oh)), (xh,), n.name + "/resize_h4")
    return b.add(O.Transpose((0, 1, 3, 2)), (xh4,), n.name)


_RULES = {
    O.Binary: _binary,
    KO.QuantBinary: _quant_binary,
    O.Clamp: _clamp,
    O.PRelu: prelu,
    O.L2Normalize: _l2_normalize,
    O.Softmax: _softmax,
    O.Reduce: _reduce,
    O.Conv2DTranspose: _conv2d_transpose,
    O.Resize: _resize,
    O.Pad: _pad,
}


def lower_to_neutral(graph: Graph, ctx: CompileContext | None = None) -> Graph:
    """Every op left for the CPU as kmodel neutral ops (module docstring); needs nothing of `ctx`."""
    graph = _fold_crops_of_pads(graph)
    b = _Builder(graph)
    for n in graph.nodes:
        if n.type.rank > 4 and not n.is_constant:
            raise UnsupportedModelError(f"tensor '{n.name}' ({n.op.kind}) is {n.type.rank}-D; "
                                        f"kmodel v4 supports at most 4-D tensors")
        ins = tuple(b.map[id(i)] for i in n.inputs)
        rule = _RULES.get(type(n.op))
        if rule is not None:
            new = rule(b, n, *ins)
        else:
            new = b.g.add(n.op, ins, n.name, n.note)
        b.map[id(n)] = new
    b.g.outputs = [b.map[id(o)] for o in graph.outputs]
    b.g.remove_dead()
    return b.g
