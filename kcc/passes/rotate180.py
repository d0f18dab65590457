"""rotate180: compute a model's spatial maps turned by 180°, when that puts its stride-2 layers on
the KPU's pick pools without any CPU pad or slice (issue #16, kpu_speed.md §2).

TFLite SAME padding with stride 2 on an even size pads only bottom/right: output i is centred on
input row 2i+1, which neither `left_top_2_s2` (rows 2i) nor `right_top_2_s2` (rows 2i, columns
2j+1) reaches directly. legalize_kpu serves it with a second, small KPU layer (kcc.passes.row_pick:
the conv at stride 1, then a pick layer taking its odd rows) when that fits KPU RAM, else pre-pads on
the CPU and crops, or slices. Turned by 180°
(row r -> H-1-r, column c -> W-1-c) that centre is H-2-2i = 2i' (i' = OH-1-i, H = 2*OH): the padding
moves to top/left and becomes the KPU's own symmetric padding of k//2, read by the left_top pick.

Every op between the graph inputs and the first tensor without spatial extent (H = W = 1, or no
longer a map) commutes with the rotation R (flip of axes H and W of an NCHW tensor):

    conv / pool (window k, stride s, padding (a, b))   R(f(x)) = f'(R(x)) with padding (b, a) and
                                                      the kernel turned, when (H + a + b - k) % s == 0
                                                      (the last window ends on the last padded row)
    element-wise ops, softmax, l2_normalize, concat,  unchanged; a constant operand is turned too
    reduce with keepdims
    pad                                               (before, after) swapped on H and W
    strided_slice, positive steps                     the same rows counted from the other end
    reduce over H and W                               its output has no spatial extent: R = identity

So the rotated graph reads R(input) (one CPU `strided_slice` with steps -1: the only flip added)
and computes R of every map, and the same values wherever H = W = 1. It is taken only when the
pass needs no other flip (a map output, a reshape of a map, a resize...), when what the stride-2
layers cost less turned outweighs the input flip (`_stride2_cost`, in flip elements: a layer with a
CPU pre-pad and crop, or a slice, counts its input and output elements, since a CPU pad costs about
as much per element as a flip, k210.CPU_COSTS "pad" and "strided_slice"; a layer row_pick serves
counts only its pick layer's KPU time, so a model whose every SAME layer row_pick serves stays as it
is: MobileNet's flip cost more than all its pick layers), and when no stride-2 conv or strided view
of the model keeps CPU work. A partial rotation (BlazeHand, whose decomposed 5x5 stride-2 convs keep
their strided views) changes which pixels some layers' ranges are calibrated on; it moved
BlazeHand's world-landmark output by 0.01 in cosine with float input, outside issue #16's
accuracy bar. Otherwise the graph is returned as is.
Float results are unchanged (the same products, summed in another order).
"""

from __future__ import annotations

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.passes import row_pick
from kcc.target.k210 import cpu_cycles


def _spatial(n: Node) -> bool:
    return len(n.shape) == 4 and n.shape[2:] != (1, 1)


def _flip_op(shape: tuple[int, ...]) -> O.StridedSlice:
    n, c, h, w = shape
    return O.StridedSlice((0, 0, h - 1, w - 1), (n, c, -1, -1), (1, 1, -1, -1))


def _turned(data: np.ndarray) -> np.ndarray:
    """A constant operand laid out like R(x): its last two axes are H and W (NCHW broadcasting)."""
    axes = tuple(range(max(0, data.ndim - 2), data.ndim))
    return np.ascontiguousarray(np.flip(data, axes)) if axes else data


def _aligned(size: int, pad: tuple[int, int], k: int, s: int, d: int) -> bool:
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) % s == 0


def _free_pick(size: int, pad_before: int, k: int, out: int) -> bool:
    """A stride-2 window the KPU serves as is: centred on input 2i (pad_before == k//2 of the 3x3
    or 1x1 kernel, a 2x2 one being a 3x3 one read a row earlier) and no row beyond the map."""
    k3, before = (3, pad_before + 1) if k == 2 else (k, pad_before)
    return k3 in (1, 3) and before == k3 // 2 and 2 * out <= size


def _stride2_cost(n: Node, padding: tuple) -> tuple[float, bool]:
    """What stride-2 conv n costs beyond its own KPU layer with `padding`, in elements of the input flip
    (the gate's unit), and whether that is CPU work: nothing when the pick serves it as is; the pick
    layer of kcc.passes.row_pick (its KPU time over a flip element's CPU time, k210 cost model); or,
    when legalize_kpu pre-pads and crops (or slices) on the CPU, its input and output elements (a CPU
    pad costs about as much per element as a flip, a crop or slice too)."""
    kh, kw = n.inputs[1].shape[2:]
    x = n.inputs[0]
    (h, w), (oh, ow) = x.shape[2:], n.shape[2:]
    if _free_pick(h, padding[0][0], kh, oh) and _free_pick(w, padding[1][0], kw, ow):
        return 0.0, False
    if kh == kw and row_pick.serves(x.shape, n.shape, padding, kh, n.op.stride, n.op.groups > 1):
        return row_pick.pick_cycles(x.shape, n.shape[1]) / cpu_cycles("strided_slice"), False
    return float(np.prod(x.shape) + np.prod(n.shape)), True


class _Rotation:
    def __init__(self, src: Graph):
        self.src = src
        self.g = Graph()
        self.map: dict[int, Node] = {}
        self.turned: set[int] = set()  # ids of new nodes holding R(value) of a map
        self.flips: list[tuple[Node, bool]] = []  # (flipped node, at a graph input)
        self.freed = 0.0  # what the stride-2 layers cost less turned, in input flip elements (_stride2_cost)
        self.worse = 0  # stride-2 layers the KPU served alone (as is or with a pick layer), and no longer would
        self.left = 0  # stride-2 layers (or strided views) that keep a CPU pad or slice after the rotation

    def _flip(self, new: Node, at_input: bool = False) -> Node:
        self.flips.append((new, at_input))
        return self.g.add(_flip_op(new.shape), (new,), new.name + "/rot180")

    def plain(self, i: Node) -> Node:
        new = self.map[id(i)]
        return self._flip(new) if id(new) in self.turned else new

    def turned_(self, i: Node) -> Node:
        """The new node holding R(i)."""
        new = self.map[id(i)]
        if i.is_constant:  # any rank: its last axes broadcast against H and W
            turned = _turned(i.data)
            return new if np.array_equal(turned, i.data) else self.g.constant(turned, i.name + "/rot180")
        if id(new) in self.turned or not _spatial(i):
            return new
        return self._flip(new)

    def _count_stride2(self, n: Node, old: tuple, new: tuple) -> None:
        op = n.op
        if not (isinstance(op, O.Conv2D) and op.stride == (2, 2) and op.dilation == (1, 1)):
            return
        (before, was_cpu), (after, now_cpu) = _stride2_cost(n, old), _stride2_cost(n, new)
        self.freed += before - after
        self.worse += now_cpu and not was_cpu
        self.left += now_cpu

    def _windowed(self, n: Node) -> Node | None:
        op = n.op
        x = n.inputs[0]
        if isinstance(op, O.Conv2D):
            if not all(i.is_constant for i in n.inputs[1:]):
                return None
            k, dil = n.inputs[1].shape[2:], op.dilation
        else:
            k, dil = op.filter, (1, 1)
        if not all(_aligned(x.shape[2 + a], op.padding[a], k[a], op.stride[a], dil[a]) for a in (0, 1)):
            return None
        padding = tuple((b, a) for a, b in op.padding)
        new_op = O.Conv2D(op.stride, padding, op.dilation, op.groups, op.act) if isinstance(op, O.Conv2D) \
            else O.Pool2D(op.op, op.filter, op.stride, padding, op.act)
        self._count_stride2(n, op.padding, padding)
        ins = [self.turned_(x)]
        if isinstance(op, O.Conv2D):
            ins.append(self.g.constant(_turned(n.inputs[1].data), n.inputs[1].name + "/rot180"))
            ins.append(self.map[id(n.inputs[2])])
        return self.g.add(new_op, ins, n.name, n.note)

    def _rotated(self, n: Node) -> Node | None:
        """n computed on R of its inputs, giving R of its value; None where it does not commute."""
        op = n.op
        if not any(id(self.map[id(i)]) in self.turned for i in n.inputs):
            return None  # nothing rotated reaches it: computed as it was
        if isinstance(op, (O.Conv2D, O.Pool2D)):
            return self._windowed(n)
        if isinstance(op, O.Pad):
            p = op.paddings
            return self.g.add(O.Pad((p[0], p[1], p[2][::-1], p[3][::-1]), op.value),
                              (self.turned_(n.inputs[0]),), n.name, n.note)
        if isinstance(op, O.StridedSlice):
            if any(s < 0 for s in op.strides):
                return None
            self.left += op.strides[2] > 1 or op.strides[3] > 1  # a polyphase view of a decomposed conv
            begin, end = list(op.begin), list(op.end)
            for a in (2, 3):
                d, s, count = n.inputs[0].shape[a], op.strides[a], n.shape[a]
                begin[a] = d - 1 - (op.begin[a] + s * (count - 1))
                end[a] = begin[a] + s * (count - 1) + 1
            return self.g.add(O.StridedSlice(tuple(begin), tuple(end), op.strides),
                              (self.turned_(n.inputs[0]),), n.name, n.note)
        if isinstance(op, O.Reduce):
            if op.keepdims or {2, 3} <= set(op.axes):
                return self.g.add(op, (self.turned_(n.inputs[0]),), n.name, n.note)
            return None
        if isinstance(op, (O.Unary, O.Clamp, O.LeakyRelu, O.Softmax, O.L2Normalize, O.Binary, O.PRelu,
                           O.Concat)):
            if any(len(i.shape) != 4 and not i.is_constant for i in n.inputs):
                return None
            ins = tuple(self.turned_(i) for i in n.inputs)
            if isinstance(op, O.Concat) and op.axis in (2, 3):  # R([a; b]) = [R(b); R(a)] along H or W
                ins = ins[::-1]
            return self.g.add(op, ins, n.name, n.note)
        return None

    def run(self) -> Graph:
        for n in self.src.nodes:
            if isinstance(n.op, O.Input):
                new = self.g.add(n.op, (), n.name, n.note)
                self.map[id(n)] = new
                if _spatial(n):
                    self.map[id(n)] = self._flip(new, at_input=True)
                    self.turned.add(id(self.map[id(n)]))
                continue
            new = None if n.is_constant else self._rotated(n)
            if new is not None and _spatial(n):
                self.turned.add(id(new))
            if new is None:
                new = self.g.add(n.op, tuple(self.plain(i) for i in n.inputs), n.name, n.note)
            self.map[id(n)] = new
        self.g.outputs = [self.plain(o) for o in self.src.outputs]
        self.g.remove_dead()
        return self.g

    def worth_it(self) -> bool:
        live = {id(n) for n in self.g.nodes}
        flips = [(n, at_input) for n, at_input in self.flips if id(n) in live]
        flipped = sum(int(np.prod(n.shape)) for n, _ in flips)
        only_inputs = all(at_input for _, at_input in flips)
        return only_inputs and self.worse == self.left == 0 and self.freed > flipped


def rotate180(g: Graph) -> Graph:
    """`g` computed in 180°-rotated spatial coordinates when that frees stride-2 layers of their CPU
    pad/slice for more than the one input flip costs (module docstring); else `g` itself."""
    if not any(isinstance(n.op, O.Conv2D) and n.op.stride == (2, 2) for n in g.nodes):
        return g
    r = _Rotation(g)
    out = r.run()
    return out if r.worth_it() else g
