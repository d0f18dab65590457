"""emit: a lowered IR graph -> a kmodel v4 model (`kcc.kmodel.KModel`).

Three steps:
1. **Storage.** Every node gets a place: graph inputs and computed tensors live in main memory;
   constants read as data (binary operands, matmul B) live in the constants blob (kmodel_v4.md §5);
   conv / matmul weights and biases are inlined into their bodies; a Reshape is free and aliases
   its input's storage (kmodel has no reshape op; ncc removes its memory_copy the same way).
2. **Memory plan.** Buffer lifetimes over the node order, packed with `kcc.alloc` (8-byte aligned,
   §7.1); `main_mem` is the plan's peak.
3. **Bodies.** `EMITTERS` maps each IR op class to a function building its kmodel body, one
   body per node (`lower_float` has already decomposed everything else).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kcc import kmodel as K
from kcc.alloc import Buffer, MemoryReport, plan_memory
from kcc.alloc.packing import align_up
from kcc.errors import UnsupportedModelError
from kcc.info_shapes import with_output_shapes
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.ir.types import DType
from kcc.kmodel.spec import BinaryOp, DataType, MemoryType, NnilOpcode, ReduceOp, ResizeMode, UnaryOp

MAIN_ALIGN = 8  # §7.1
KPU_ALIGN = 64  # §7.2
CONST_ALIGN = 8  # §5
FLT_MAX = float(np.finfo(np.float32).max)

_DT = {DType.float32: DataType.FLOAT32, DType.uint8: DataType.UINT8}


@dataclass
class Emitted:
    model: K.KModel
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[tuple[str, tuple[int, ...]]]
    node_names: list[str]  # kmodel node index -> IR node name
    kpu_peak: int = 0
    buffers: list[Buffer] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    memory: MemoryReport | None = None  # the plans of main memory and KPU RAM, for reports


# --------------------------------------------------------------------------- helpers
def shape4(shape: tuple[int, ...], fill: int = 1) -> K.Shape4:
    if len(shape) > 4:
        raise UnsupportedModelError(f"shape {shape} has more than 4 dimensions; kmodel v4 is 4-D")
    return K.Shape4.of(shape, fill)


def value_range(act: tuple[float, float]) -> K.ValueRange:
    """±inf (no clamp) is stored as ±FLT_MAX (§3.4)."""
    lo, hi = act
    return K.ValueRange(max(lo, -FLT_MAX), min(hi, FLT_MAX))


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).ravel()


class _Storage:
    """Where each node's tensor lives: (memory type, byte offset) after planning."""

    def __init__(self, g: Graph, inline: set[int]):
        self.g = g
        self.root: dict[int, Node] = {}  # alias resolution (Reshape -> its input)
        self.const_offset: dict[int, int] = {}
        users = g.users()
        self.kpu_inputs = {id(n) for n in g.inputs if n.dtype == DType.uint8 and n.type.rank == 4 and users[n]
                           and all(isinstance(u.op, KO.KpuUpload) for u in users[n]) and n not in g.outputs}
        blob = bytearray()
        for n in g.nodes:
            if isinstance(n.op, KO.KpuUpload) and id(n.inputs[0]) in self.kpu_inputs:
                self.root[id(n)] = n.inputs[0]  # the input already is in KPU RAM: no upload node
            elif isinstance(n.op, O.Reshape):
                self.root[id(n)] = self.root.get(id(n.inputs[0]), n.inputs[0])
            elif n.is_constant and id(n) not in inline:
                start = align_up(len(blob), CONST_ALIGN)
                blob.extend(bytes(start - len(blob)))
                self.const_offset[id(n)] = start
                blob.extend(np.ascontiguousarray(n.data).tobytes())
        self.constants = bytes(blob) + bytes(align_up(len(blob), CONST_ALIGN) - len(blob))
        self.offset: dict[int, int] = {}  # byte offset of a node's tensor within its root's
        self.elided: set[int] = set()  # concatenations whose inputs are computed in place
        outputs = {id(o) for o in g.outputs}
        for n in g.nodes:
            if self._in_place(n, users, outputs):
                at = 0
                for i in n.inputs:
                    self.root[id(i)], self.offset[id(i)] = n, at
                    at += i.type.nbytes
                self.elided.add(id(n))
        self.in_place = self._elementwise_in_place(g)
        self.main_offset: dict[int, int] = {}
        self.kpu_offset: dict[int, int] = {}
        self.downloads: dict[int, Node] = {}  # KPU layer -> its kpu_download (main_mem_output)

    def _in_place(self, n: Node, users: dict, outputs: set[int]) -> bool:
        """A concatenation whose inputs can be computed straight into its blocks, so that it needs
        no copy and its inputs no buffers of their own (a decomposed conv's stack of shifted views,
        kcc.passes.decompose_kernels, would otherwise hold every view twice at its peak): each block
        is contiguous (nothing outside the concatenated axis but size-1 dimensions), and each input
        is written by a CPU op of this model for this concatenation alone."""
        if not isinstance(n.op, O.Concat) or any(d != 1 for d in n.shape[:n.op.axis]):
            return False
        return len({id(i) for i in n.inputs}) == len(n.inputs) and all(
            _written_by_cpu(i) and id(i) not in self.root and id(i) not in outputs
            and len(users[i]) == 1 and users[i][0] is n for i in n.inputs)

    def _elementwise_in_place(self, g: Graph) -> set[int]:
        """Binary ops that write over an input of the output's shape read for the last time: the
        runtime's binary kernel reads a[i] and b[i] before it writes out[i] (nncase v0.2
        neutral_kernels.h, both the same-shape and the broadcasting loop), so one buffer serves, and
        a float PReLU (max/min/mul/add on the CPU) holds two maps instead of three at its peak. Not
        unary ops: that kernel declares its pointers `restrict`."""
        def value(x: Node) -> Node:  # a reshape reads its input's value
            while isinstance(x.op, O.Reshape):
                x = x.inputs[0]
            return x

        last = {id(value(i)): k for k, n in enumerate(g.nodes) for i in n.inputs}
        last.update((id(value(o)), len(g.nodes)) for o in g.outputs)
        done: set[int] = set()
        for k, n in enumerate(g.nodes):
            if not isinstance(n.op, O.Binary) or id(n) in self.root:
                continue
            for i in dict.fromkeys(n.inputs):
                if (i.type == n.type and last.get(id(i)) == k and sum(x is i for x in n.inputs) == 1
                        and _written_by_cpu(i) and (id(i) not in self.root or id(i) in done)):
                    self.root[id(n)] = i
                    done.add(id(n))
                    break
        return done

    def base(self, n: Node) -> Node:
        while id(n) in self.root:
            n = self.root[id(n)]
        return n

    def byte_offset(self, n: Node) -> int:
        """Where n's tensor starts within its base's buffer (an in-place concatenation's block)."""
        at = 0
        while id(n) in self.root:
            at += self.offset.get(id(n), 0)
            n = self.root[id(n)]
        return at

    def range(self, n: Node) -> K.MemoryRange:
        b = self.base(n)
        dt = _DT.get(n.dtype)
        if dt is None:
            raise UnsupportedModelError(f"tensor '{n.name}' has type {n.dtype.value}, which kmodel v4 cannot store")
        if id(b) in self.const_offset:
            return K.MemoryRange(MemoryType.CONST, dt, self.const_offset[id(b)], n.type.nbytes)
        if id(b) in self.kpu_offset:  # §7.3: KPU layout size, 64-byte aligned start
            return K.MemoryRange(MemoryType.K210_KPU, dt, self.kpu_offset[id(b)], K.kpu_bytes(shape4(n.shape)))
        return K.MemoryRange(MemoryType.MAIN, dt, self.main_offset[id(b)] + self.byte_offset(n), n.type.nbytes)


def _written_by_cpu(n: Node) -> bool:
    """n's tensor is written into main memory by a CPU node of its own (not a reshape, which aliases,
    nor a KPU layer's download or a KPU RAM tensor)."""
    return type(n.op) in EMITTERS and not isinstance(n.op, (O.Reshape, KO.KpuDownload, *KO.KPU_SPACE_OPS))


def _inline_constants(g: Graph) -> set[int]:
    """Constants that are only ever weights/biases of conv-like ops or matmul biases (inlined, §8.3)."""
    inline_slots = {O.Conv2D: (1, 2), O.Conv2DTranspose: (1, 2), O.MatMul: (2,)}
    users = g.users()
    out = set()
    for n in g.nodes:
        if not n.is_constant:
            continue
        uses = users[n]
        if uses and n not in g.outputs and all(
                any(u.inputs[k] is n for k in inline_slots.get(type(u.op), ())) and
                all(u.inputs[k] is not n for k in range(len(u.inputs)) if k not in inline_slots.get(type(u.op), ()))
                for u in uses):
            out.add(id(n))
    return out


def in_kpu_ram(n: Node, st: "_Storage") -> bool:
    """Outputs of kpu_upload and kpu_layer live in KPU RAM, and so does a uint8 graph input read only
    by uploads (the runtime uploads it itself, kpu_semantics.md §2); everything else in main memory."""
    return isinstance(n.op, KO.KPU_SPACE_OPS) or id(n) in st.kpu_inputs


def _plan(g: Graph, st: _Storage, compute: list[Node], solve_secs: float) -> MemoryReport:
    """Lifetimes over the compute order, then packing of main memory and of KPU RAM.

    A kpu_download has no node of its own: its producer layer writes it (main_mem_output), so it is
    born at the producer's step. Graph inputs are born before the first node, outputs live to the end.
    Each space gets `plan_memory`'s best deterministic plan (CP-SAT budget `solve_secs`).
    """
    step = {id(n): i for i, n in enumerate(compute)}
    for n in g.nodes:
        if isinstance(n.op, KO.KpuDownload):
            step[id(n)] = step[id(n.inputs[0])]
    last = len(compute)
    birth: dict[int, int] = {}
    death: dict[int, int] = {}
    base_of: dict[int, Node] = {}
    for n in g.nodes:
        b = st.base(n)
        if b.is_constant:
            continue
        base_of[id(b)] = b
        if isinstance(b.op, O.Input):
            birth[id(b)] = -1
        elif id(n) in step:  # an in-place concatenation is born with its first block
            birth[id(b)] = min(step[id(n)], birth.get(id(b), step[id(n)]))
        death.setdefault(id(b), birth.get(id(b), -1))
    for n in compute:
        for i in n.inputs:
            b = st.base(i)
            if id(b) in death:
                death[id(b)] = max(death[id(b)], step[id(n)])
    for o in g.outputs:
        b = st.base(o)
        if id(b) in death:
            death[id(b)] = last
    main, kpu = [], []
    for k in birth:
        node = base_of[k]
        if in_kpu_ram(node, st):
            kpu.append(Buffer(node.name, K.kpu_bytes(shape4(node.shape)), birth[k], death[k]))
        else:
            main.append(Buffer(node.name, node.type.nbytes, birth[k], death[k]))
    names = [n.name for n in compute]
    main_res = plan_memory(main, align=MAIN_ALIGN, solve_secs=solve_secs, step_names=names)
    kpu_res = plan_memory(kpu, align=KPU_ALIGN, solve_secs=solve_secs, capacity=K.KPU_RAM_SIZE,
                          space="KPU RAM", step_names=names)
    for k, b in base_of.items():
        if in_kpu_ram(b, st):
            st.kpu_offset[k] = kpu_res.plan.offsets[b.name]
        else:
            st.main_offset[k] = main_res.plan.offsets[b.name]
    return MemoryReport(main_res, len(st.constants), tuple(names), kpu_res if kpu else None)


# --------------------------------------------------------------------------- emitters
Emit = Callable[[Node, _Storage], K.Body]


def _conv2d(n: Node, st: _Storage) -> K.Body:
    op: O.Conv2D = n.op
    x, w, b = n.inputs
    return K.Conv2D(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape), groups=op.groups,
                    out_channels=n.shape[1], padding_h=K.Padding(*op.padding[0]), padding_w=K.Padding(*op.padding[1]),
                    filter_h=w.shape[2], filter_w=w.shape[3], stride_h=op.stride[0], stride_w=op.stride[1],
                    dilation_h=op.dilation[0], dilation_w=op.dilation[1], fused_activation=value_range(op.act),
                    weights=f32(w.data), bias=f32(b.data))


def _conv2d_transpose(n: Node, st: _Storage) -> K.Body:
    op: O.Conv2DTranspose = n.op
    x, w, b = n.inputs
    return K.Conv2DTranspose(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape),
                             out_shape=shape4(n.shape), groups=op.groups, padding_h=K.Padding(*op.padding[0]),
                             padding_w=K.Padding(*op.padding[1]), filter_h=w.shape[2], filter_w=w.shape[3],
                             stride_h=op.stride[0], stride_w=op.stride[1], dilation_h=op.dilation[0],
                             dilation_w=op.dilation[1], fused_activation=value_range(op.act),
                             weights=f32(w.data), bias=f32(b.data))


def _matmul(n: Node, st: _Storage) -> K.Body:
    a, b, bias = n.inputs
    return K.MatMul(input_a=st.range(a), input_b=st.range(b), output=st.range(n), a_rows=a.shape[0],
                    a_cols=a.shape[1], b_cols=b.shape[1], fused_activation=value_range(n.op.act), bias=f32(bias.data))


def _binary(n: Node, st: _Storage) -> K.Body:
    a, b = n.inputs
    return K.Binary(input_a=st.range(a), input_b=st.range(b), output=st.range(n),
                    binary_op=BinaryOp[n.op.op.upper()], in_a_shape=shape4(a.shape), in_b_shape=shape4(b.shape),
                    out_shape=shape4(n.shape), fused_activation=value_range(n.op.act))


# ------------------------------------------------------------------ nnil programs (§10)
def _nnil(*items: object) -> bytes:
    """Assemble nnil: NnilOpcode members, and floats (pushed with ldc_r4)."""
    out = bytearray()
    for it in items:
        if isinstance(it, NnilOpcode):
            out.append(int(it))
        else:
            out.append(int(NnilOpcode.LDC_R4))
            out.extend(struct.pack("<f", float(it)))
    return bytes(out)


N = NnilOpcode
_NNIL_UNARY: dict[str, bytes] = {
    # 1 / (1 + exp(-x))
    "logistic": _nnil(N.LDC_R4_1, N.LDC_R4_1, N.LDA_0, N.NEG, N.EXP, N.ADD, N.DIV, N.RET),
    # tanh(x) = 2 / (1 + exp(-2x)) - 1: saturates to ±1 instead of inf/inf = NaN
    "tanh": _nnil(2.0, N.LDC_R4_1, N.LDA_0, -2.0, N.MUL, N.EXP, N.ADD, N.DIV, N.LDC_R4_1, N.SUB, N.RET),
    # sqrt(x) = exp(0.5 * log(x)); exact 0 at x = 0 (exp(-inf)), NaN below like sqrtf
    "sqrt": _nnil(N.LDA_0, N.LOG, 0.5, N.MUL, N.EXP, N.RET),
    # round half to even: (x + 1.5*2^23) - 1.5*2^23 in float32 arithmetic (exact for |x| < 2^22;
    # nnil has no round instruction)
    "round": _nnil(N.LDA_0, 12582912.0, N.ADD, 12582912.0, N.SUB, N.RET),
    # x * clamp(x + 3, 0, 6) / 6
    "hard_swish": _nnil(N.LDA_0, N.LDA_0, 3.0, N.ADD, N.LDC_R4_0, 6.0, N.CLAMP, N.MUL, 6.0, N.DIV, N.RET),
}


def _unary(n: Node, st: _Storage) -> K.Body:
    x = n.inputs[0]
    name = n.op.op
    if name.upper() in UnaryOp.__members__:
        return K.Unary(input=st.range(x), output=st.range(n), unary_op=UnaryOp[name.upper()])
    if name not in _NNIL_UNARY:
        raise UnsupportedModelError(f"'{n.name}': unary op {name} has no kmodel v4 lowering")
    return K.NnilUnaryMethod(input=st.range(x), output=st.range(n), program=_NNIL_UNARY[name])


def _leaky_relu(n: Node, st: _Storage) -> K.Body:
    # x >= 0 ? x : a*x  ==  max(x, a*x) for a <= 1, min(x, a*x) for a > 1
    pick = N.MAX if n.op.alpha <= 1 else N.MIN
    prog = _nnil(N.LDA_0, N.LDA_0, float(n.op.alpha), N.MUL, pick, N.RET)
    return K.NnilUnaryMethod(input=st.range(n.inputs[0]), output=st.range(n), program=prog)


def _reduce(n: Node, st: _Storage) -> K.Body:
    x = n.inputs[0]
    op = n.op.op
    init = {"mean": 0.0, "sum": 0.0, "min": FLT_MAX, "max": -FLT_MAX}[op]
    return K.Reduce(input=st.range(x), output=st.range(n), reduce_op=ReduceOp[op.upper()],
                    in_shape=shape4(x.shape), out_shape=shape4(n.shape), init_value=init)


def _pool2d(n: Node, st: _Storage) -> K.Body:
    op: O.Pool2D = n.op
    x = n.inputs[0]
    return K.ReduceWindow2D(input=st.range(x), output=st.range(n), reduce_op=ReduceOp[op.op.upper()],
                            in_shape=shape4(x.shape), padding_h=K.Padding(*op.padding[0]),
                            padding_w=K.Padding(*op.padding[1]), filter_h=op.filter[0], filter_w=op.filter[1],
                            stride_h=op.stride[0], stride_w=op.stride[1],
                            init_value=-FLT_MAX if op.op == "max" else 0.0, fused_activation=value_range(op.act))


def _softmax(n: Node, st: _Storage) -> K.Body:
    inner = n.shape[-1]
    return K.Softmax(input=st.range(n.inputs[0]), output=st.range(n), inner_size=inner,
                     outer_size=n.type.size // inner, beta=n.op.beta)


def _resize(n: Node, st: _Storage) -> K.Body:
    op: O.Resize = n.op
    mode = ResizeMode.BILINEAR if op.mode == "bilinear" else ResizeMode.NEAREST_NEIGHBOR
    return K.ResizeImage(input=st.range(n.inputs[0]), output=st.range(n), in_shape=shape4(n.inputs[0].shape),
                         out_h=op.size[0], out_w=op.size[1], mode=mode, align_corners=op.align_corners)


def _axis4(rank: int, axis: int) -> int:
    return axis + 4 - rank


def _concat(n: Node, st: _Storage) -> K.Body:
    axis = n.op.axis
    shape = n.shape
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64)) * n.dtype.itemsize
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    return K.Concat(output=st.range(n), inner_size=inner, outer_size=outer,
                    inputs=tuple(st.range(i) for i in n.inputs), dims=tuple(i.shape[axis] for i in n.inputs))


def _transpose(n: Node, st: _Storage) -> K.Body:
    x = n.inputs[0]
    extra = 4 - x.type.rank
    perm = tuple(range(extra)) + tuple(p + extra for p in n.op.perm)
    return K.Transpose(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape), perm=K.Shape4(*perm))


def _pad(n: Node, st: _Storage) -> K.Body:
    x = n.inputs[0]
    pads = [(0, 0)] * (4 - x.type.rank) + list(n.op.paddings)
    value = K.Scalar.of_float(n.op.value) if n.dtype == DType.float32 else K.Scalar.of_uint8(int(n.op.value))
    return K.Pad(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape),
                 paddings=K.Paddings4(*(K.Padding(*p) for p in pads)), pad_value=value)


def _strided_slice(n: Node, st: _Storage) -> K.Body:
    x = n.inputs[0]
    op: O.StridedSlice = n.op
    return K.StridedSlice(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape),
                          begin=shape4(op.begin, 0), end=shape4(op.end, 1), strides=shape4(op.strides, 1))


EMITTERS: dict[type, Emit] = {
    O.Conv2D: _conv2d,
    O.Conv2DTranspose: _conv2d_transpose,
    O.MatMul: _matmul,
    O.Binary: _binary,
    O.Unary: _unary,
    O.LeakyRelu: _leaky_relu,
    O.Reduce: _reduce,
    O.Pool2D: _pool2d,
    O.Softmax: _softmax,
    O.Resize: _resize,
    O.Concat: _concat,
    O.Transpose: _transpose,
    O.Pad: _pad,
    O.StridedSlice: _strided_slice,
}


def _clamp_to_binary(g: Graph) -> None:
    """Clamp(x, lo, hi) -> binary add(x, 0) with fused clamp [lo, hi]: one neutral node that every
    v0.2 runtime runs (nnil's clamp needs beta3+)."""
    zero = None
    for n in list(g.nodes):
        if isinstance(n.op, O.Clamp):
            if zero is None:
                zero = g.insert_before(g.nodes[0], O.Constant(np.zeros((), np.float32)), (), "clamp_zero")
            n.op = O.Binary("add", (n.op.lo, n.op.hi))
            n.inputs = (n.inputs[0], zero)


def _copy_outputs_that_are_not_computed(g: Graph) -> None:
    """A graph output that is a constant or an input (or a reshape of one) gets a real copy node, so
    every output range points at main memory written by this model. Copy = binary add 0."""
    for k, o in enumerate(list(g.outputs)):
        base = o
        while isinstance(base.op, O.Reshape):
            base = base.inputs[0]
        if isinstance(base.op, (O.Input, O.Constant)):
            zero = g.constant(np.zeros((), np.float32), f"{o.name}/copy_zero")
            copy = g.add(O.Binary("add"), (o, zero), f"{o.name}/copy")
            g.outputs[k] = copy


def emit(graph: Graph, max_solve_secs: float = 60.0) -> Emitted:
    """Build the kmodel of a lowered float graph. `graph` is modified (clamp rewrite).
    `max_solve_secs`: the allocator budget (`--max-allocator-solve-secs`, 0 = first fit only)."""
    g = graph
    output_names = [o.name for o in g.outputs]
    _clamp_to_binary(g)
    _copy_outputs_that_are_not_computed(g)
    for n in g.nodes:
        if type(n.op) not in EMITTERS and not isinstance(n.op, (O.Input, O.Constant, O.Reshape, KO.KpuDownload)):
            raise UnsupportedModelError(f"'{n.name}': op {n.op.kind} has no kmodel v4 emitter "
                                        f"(run lower_float first)")
    st = _Storage(g, _inline_constants(g))
    st.downloads = {id(n.inputs[0]): n for n in g.nodes if isinstance(n.op, KO.KpuDownload)}
    for n in g.nodes:  # KPU layers read KPU RAM, everything else main memory (§9.1)
        for i in n.inputs:
            want_kpu = isinstance(n.op, (KO.KpuLayer, KO.KpuDownload)) or (
                isinstance(n.op, KO.KpuUpload) and id(i) in st.kpu_inputs)
            if in_kpu_ram(st.base(i), st) != want_kpu:
                raise UnsupportedModelError(f"'{n.name}' ({n.op.kind}) reads '{i.name}' from the wrong memory "
                                            f"(a kpu_upload or kpu_download is missing)")
    compute = [n for n in g.nodes if type(n.op) in EMITTERS and id(n) not in st.elided
               and (st.base(n) is n or id(n) in st.offset or id(n) in st.in_place)]
    mem = _plan(g, st, compute, max_solve_secs)
    peak, kpu_peak = mem.main.peak, mem.kpu.peak if mem.kpu else 0
    buffers = [b for r in mem.spaces for b in r.buffers]
    offsets = {name: off for r in mem.spaces for name, off in r.plan.offsets.items()}
    nodes = [EMITTERS[type(n.op)](n, st) for n in compute]
    inputs = g.inputs
    model = K.KModel(
        main_mem=max(peak, MAIN_ALIGN), inputs=[st.range(i) for i in inputs],
        input_shapes=[shape4(i.shape) for i in inputs], outputs=[st.range(o) for o in g.outputs],
        constants=st.constants, nodes=nodes)
    model = with_output_shapes(model, [o.shape for o in g.outputs])  # the format has none (§5): info_shapes.py
    mem = dataclasses.replace(mem, constants=len(model.constants))  # the record is part of the blob
    return Emitted(model, [(i.name, i.shape) for i in inputs], [(name, o.shape) for name, o in zip(output_names, g.outputs)],
                   [n.name for n in compute], kpu_peak, buffers, offsets, mem)


__all__ = ["emit", "Emitted", "EMITTERS", "shape4"]

from kcc import emit_kpu  # noqa: E402,F401  (registers the K210 emitters into EMITTERS)
