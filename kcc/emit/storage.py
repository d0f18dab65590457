"""Where each tensor of a lowered graph lives in a kmodel v4 (emit step 1).

Graph inputs and computed tensors live in main memory; constants read as data (binary operands,
matmul B) live in the constants blob (kmodel_v4.md §5); conv / matmul weights and biases are inlined
into their bodies; a Reshape is free and aliases its input's storage (kmodel has no reshape op; ncc
removes its memory_copy the same way), and so is a strided slice that is one contiguous range of its
input's bytes (a channel range of a batch-1 map: a view at a byte offset, no node); constants of one
repeated element (a pad's fill blocks) share one fill; a concatenation may be computed in place, and
a binary op or a float depthwise 1x1 conv may write over an input it reads for the last time. KPU layers and uploads
live in KPU RAM (§7.2); a concatenation of KPU layers there (kcc.ir.kpu_ops.KpuConcat) is one buffer
whose channel ranges its parts are written into, each at the line where its first channel starts
(§7.3, kcc.kmodel.kpu_channel_offset); a channel view of a map there (kcc.ir.kpu_ops.KpuChannelView)
is the map's storage from the line where its first channel starts.
"""

from __future__ import annotations

from typing import Collection

import numpy as np

from kcc import kmodel as K
from kcc.alloc.packing import align_up
from kcc.errors import UnsupportedModelError
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.ir.types import DType
from kcc.kmodel.spec import KPU_LINE_SIZE, DataType, MemoryType

MAIN_ALIGN = 8  # §7.1
KPU_ALIGN = 64  # §7.2
CONST_ALIGN = 8  # §5
FLT_MAX = float(np.finfo(np.float32).max)

_DT = {DType.float32: DataType.FLOAT32, DType.uint8: DataType.UINT8}


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


class Storage:
    """Where each node's tensor lives: (memory type, byte offset) after planning."""

    def __init__(self, g: Graph, inline: set[int], emitted: Collection[type]):
        self.g = g
        self.emitted = emitted  # the op types that have a kmodel body (emit.EMITTERS)
        self.root: dict[int, Node] = {}  # alias resolution (Reshape -> its input)
        self.offset: dict[int, int] = {}  # byte offset of a node's tensor within its root's
        self.const_offset: dict[int, int] = {}
        self.views: set[int] = set()  # slices that are a contiguous byte range of their input: no node
        self.order = {id(v): k for k, v in enumerate(g.nodes)}  # the run order (emit.plan): patches come after
        users = g.users()
        self._outputs = outputs = {id(o) for o in g.outputs}
        self.kpu_inputs = {id(n) for n in g.inputs if n.dtype == DType.uint8 and n.type.rank == 4 and users[n]
                           and all(isinstance(u.op, KO.KpuUpload) for u in users[n]) and n not in g.outputs}
        blob = bytearray()
        # constants of one repeated element (a pad's fill blocks) share one fill of the largest size
        units = {id(n): _fill_unit(n) for n in g.nodes if n.is_constant and id(n) not in inline}
        fill_bytes: dict[bytes, int] = {}
        for n in g.nodes:
            if (unit := units.get(id(n))) is not None:
                fill_bytes[unit] = max(fill_bytes.get(unit, 0), n.type.nbytes)
        fill_at: dict[bytes, int] = {}
        for n in g.nodes:
            if isinstance(n.op, KO.KpuUpload) and id(n.inputs[0]) in self.kpu_inputs:
                self.root[id(n)] = n.inputs[0]  # the input already is in KPU RAM: no upload node
            elif isinstance(n.op, O.Reshape):  # (of a view: the view's offset too, byte_offset)
                x = n.inputs[0]
                self.root[id(n)] = x if id(x) in self.views else self.root.get(id(x), x)
            elif (at := self._contiguous_slice(n)) is not None:
                self.root[id(n)], self.offset[id(n)] = n.inputs[0], at
                self.views.add(id(n))
            elif isinstance(n.op, KO.KpuConcat):
                self._kpu_concat(n)
            elif isinstance(n.op, KO.KpuChannelView):
                self._kpu_channel_view(n)
            elif isinstance(n.op, KO.KpuRowPatch):
                self._kpu_row_patch(n)
            elif isinstance(n.op, KO.KpuChannelPatch):
                self._kpu_channel_patch(n)
            elif n.is_constant and id(n) not in inline:
                unit = units[id(n)]
                if unit is not None and unit in fill_at:  # the fill's prefix (kcc.passes.lower_to_neutral._pad)
                    self.const_offset[id(n)] = fill_at[unit]
                    continue
                start = align_up(len(blob), CONST_ALIGN)
                blob.extend(bytes(start - len(blob)))
                self.const_offset[id(n)] = start
                if unit is not None:
                    fill_at[unit] = start
                    blob.extend(unit * (fill_bytes[unit] // len(unit)))
                else:
                    blob.extend(np.ascontiguousarray(n.data).tobytes())
        self.constants = bytes(blob) + bytes(align_up(len(blob), CONST_ALIGN) - len(blob))
        self.elided: set[int] = set()  # concatenations whose inputs are computed in place
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

    def _contiguous_slice(self, n: Node) -> int | None:
        """The byte offset of a strided slice in main memory whose elements are one contiguous range of
        its input's bytes (NCHW: a range of channels of a batch-1 map, of rows of one channel...), else
        None. Such a slice is a view: its readers read the input's buffer from that offset, and no
        strided_slice node copies it (~50 cycles an element on the CPU, kcc.target.k210); the input's
        buffer lives until the view's last reader (emit.plan follows `base`). Not a graph output's (it
        stays a tensor of its own) nor a constant's."""
        if not isinstance(n.op, O.StridedSlice) or id(n) in self._outputs:
            return None
        x = n.inputs[0]
        if x.is_constant or isinstance(x.op, KO.KPU_SPACE_OPS) or id(x) in self.kpu_inputs:
            return None
        first = n.op.contiguous_offset(x.shape)
        return None if first is None else first * n.dtype.itemsize

    def _kpu_concat(self, n: Node) -> None:
        """Each part of an in-place KPU RAM concatenation is written into it, at the line where its
        first channel starts (kcc.quant.kpu_ram.kpu_concat_problem made sure there is one)."""
        _, _, h, w = n.shape
        at = 0
        for i in n.inputs:
            offset = K.kpu_channel_offset(w, h, at)
            # a KPU layer writes its range (also through a reshape that keeps its bytes, a pick layer
            # in row bands: kcc.passes.row_pick), an upload copies a CPU part into it
            writer = i.inputs[0] if isinstance(i.op, O.Reshape) and self.root.get(id(i)) is i.inputs[0] else i
            dma = isinstance(i.op, KO.KpuChannelView) and i.op.width is not None  # an upload padded for DMA
            writer = i.inputs[0] if dma else writer
            part = isinstance(writer.op, KO.QuantKpuLayer) or ((writer is i or dma) and isinstance(
                writer.op, KO.KpuUpload) and id(writer.inputs[0]) not in self.kpu_inputs)
            if not part or id(writer) in self.root or offset is None:
                raise UnsupportedModelError(f"'{n.name}': part '{i.name}' cannot be written into the "
                                            f"concatenation in KPU RAM")
            self.root[id(writer)], self.offset[id(writer)] = n, offset
            at += i.shape[1]

    def _kpu_row_patch(self, n: Node) -> None:
        """A map with rows written over in place (kcc.ir.kpu_ops.KpuRowPatch) is its map's storage;
        each part's layer writes its rows there, at the line where they start, after the map's own
        layer ran (the node order is the run order, emit.plan)."""
        x, parts = n.inputs[0], n.inputs[1:]
        _, c, h, w = x.shape
        lay = K.kpu_row_layout(w)
        order = self.order
        for p, r in zip(parts, n.op.starts):
            if (lay.groups != 1 or not isinstance(p.op, KO.QuantKpuLayer) or id(p) in self.root
                    or order[id(p)] < order[id(x)]):
                raise UnsupportedModelError(f"'{n.name}': part '{p.name}' cannot write its rows of '{x.name}' "
                                            f"in KPU RAM")
            self.root[id(p)], self.offset[id(p)] = x, r * lay.row_len * KPU_LINE_SIZE
        self.root[id(n)] = x

    def _kpu_channel_patch(self, n: Node) -> None:
        """A batched map whose spare channels c0.. the CPU's uploads write over, one per batch, after
        the map's layer ran (kcc.ir.kpu_ops.KpuChannelPatch): the map's storage; upload b writes at the
        line where channel c0 of batch b starts (a layer's batches lie one map's size apart, nncase's
        kpu_conv2d)."""
        x, parts = n.inputs[0], n.inputs[1:]
        nb, c, h, w = x.shape
        at = K.kpu_channel_offset(w, h, n.op.c0)
        order = self.order
        for b, p in enumerate(parts):
            if (at is None or not isinstance(p.op, KO.KpuUpload) or id(p) in self.root or order[id(p)] < order[id(x)]
                    or not isinstance(x.op, KO.QuantKpuLayer)):
                raise UnsupportedModelError(f"'{n.name}': part '{p.name}' cannot write channels {n.op.c0}.. of "
                                            f"batch {b} of '{x.name}' in KPU RAM")
            self.root[id(p)], self.offset[id(p)] = x, b * K.kpu_bytes((1, c, h, w)) + at
        self.root[id(n)] = x

    def _kpu_channel_view(self, n: Node) -> None:
        """A view of channels [c0, c1) of a map in KPU RAM is that map's storage from the line where c0
        starts (kcc.ir.kpu_ops.KpuChannelView): its readers extend the map's lifetime (emit.plan
        follows `base`)."""
        src = n.inputs[0]
        _, _, h, w = src.shape
        offset = K.kpu_channel_offset(w, h, n.op.c0)
        if n.op.rows is not None:  # rows of one channel: consecutive lines with one channel per line group
            lay = K.kpu_row_layout(w)
            offset = None if lay.groups != 1 or offset is None else offset + n.op.rows[0] * lay.row_len * KPU_LINE_SIZE
        if n.op.width is not None and K.kpu_row_layout(n.op.width) != K.kpu_row_layout(w):
            offset = None  # a narrower map of other lines a row
        if offset is None or not (isinstance(self.base(src).op, KO.KPU_SPACE_OPS) or id(src) in self.kpu_inputs):
            raise UnsupportedModelError(f"'{n.name}': channels {n.op.c0}..{n.op.c1 - 1} of '{src.name}' cannot "
                                        f"be read in place in KPU RAM")
        self.root[id(n)], self.offset[id(n)] = src, offset

    def _in_place(self, n: Node, users: dict, outputs: set[int]) -> bool:
        """A concatenation whose inputs can be computed straight into its blocks, so that it needs
        no copy and its inputs no buffers of their own (a decomposed conv's stack of shifted views,
        kcc.passes.decompose_kernels, would otherwise hold every view twice at its peak): each block
        is contiguous (nothing outside the concatenated axis but size-1 dimensions), and each input
        is written by a CPU op of this model for this concatenation alone."""
        if not isinstance(n.op, O.Concat) or any(d != 1 for d in n.shape[:n.op.axis]):
            return False
        return len({id(i) for i in n.inputs}) == len(n.inputs) and all(
            self._written_by_cpu(i) and id(i) not in self.root and id(i) not in outputs
            and len(users[i]) == 1 and users[i][0] is n for i in n.inputs)

    def _elementwise_in_place(self, g: Graph) -> set[int]:
        """Binary ops that write over an input of the output's shape read for the last time: the
        runtime's binary and quantized_binary kernels read a[i] and b[i] before they write out[i]
        (nncase v0.2 neutral_kernels.h, both the same-shape and the broadcasting loop), so one buffer serves, and
        a float PReLU (max/min/mul/add on the CPU) holds two maps instead of three at its peak. Not
        unary ops: that kernel declares its pointers `restrict`. A float depthwise 1x1 conv of the output's
        shape may too (the form lower_to_neutral gives a per-channel PReLU/binary/clamp): the float
        conv2d kernel has no `restrict` and, with one input and one output channel per group, a 1x1
        window, stride 1 and no padding, reads in[i] just before it writes out[i], in order (nncase
        v0.2.0-beta4 kernels/neutral/neutral_kernels.h, conv2d, lines 133-193)."""
        def value(x: Node) -> Node:  # a reshape, and a slice view, read their input's value
            while isinstance(x.op, O.Reshape) or id(x) in self.views:
                x = x.inputs[0]
            return x

        last = {id(value(i)): k for k, n in enumerate(g.nodes) for i in n.inputs}
        last.update((id(value(o)), len(g.nodes)) for o in g.outputs)
        done: set[int] = set()
        for k, n in enumerate(g.nodes):
            if not (isinstance(n.op, (O.Binary, KO.QuantBinary)) or _pointwise_conv(n)) or id(n) in self.root:
                continue
            for i in dict.fromkeys(n.inputs[:1] if isinstance(n.op, O.Conv2D) else n.inputs):
                if (i.type == n.type and last.get(id(i)) == k and sum(x is i for x in n.inputs) == 1
                        and self._written_by_cpu(i) and (id(i) not in self.root or id(i) in done)):
                    self.root[id(n)] = i
                    done.add(id(n))
                    break
        return done

    def _written_by_cpu(self, n: Node) -> bool:
        """n's tensor is written into main memory by a CPU node of its own (not a reshape, which aliases,
        nor a KPU layer's download or a KPU RAM tensor)."""
        return type(n.op) in self.emitted and not isinstance(
            n.op, (O.Reshape, KO.KpuDownload, KO.KpuRowPatch, KO.KpuChannelPatch, *KO.KPU_SPACE_OPS))

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
            raise UnsupportedModelError(
                f"tensor '{n.name}' has type {n.dtype.value}, which kmodel v4 cannot store")
        if id(b) in self.const_offset:
            return K.MemoryRange(MemoryType.CONST, dt, self.const_offset[id(b)], n.type.nbytes)
        if id(b) in self.kpu_offset:  # §7.3: KPU layout size, 64-byte aligned start
            return K.MemoryRange(MemoryType.K210_KPU, dt, self.kpu_offset[id(b)] + self.byte_offset(n),
                                 K.kpu_bytes(shape4(n.shape)))
        start = self.main_offset[id(b)] + self.byte_offset(n)
        return K.MemoryRange(MemoryType.MAIN, dt, start, n.type.nbytes)


def _fill_unit(n: Node) -> bytes | None:
    """The bytes of a constant's one element when it has several, all equal (a fill), else None."""
    flat = np.ascontiguousarray(n.data).ravel()
    if flat.size < 2 or not (flat == flat[0]).all():
        return None
    return flat[:1].tobytes()


def _pointwise_conv(n: Node) -> bool:
    """A float conv2d whose output element i depends on input element i alone, at the same index:
    one input and one output channel per group, a 1x1 window, stride 1, no padding."""
    if not isinstance(n.op, O.Conv2D) or n.dtype != DType.float32:
        return False
    op, (x, w) = n.op, n.inputs[:2]
    return (op.groups == x.shape[1] == w.shape[0] and w.shape[1:] == (1, 1, 1) and op.stride == (1, 1)
            and op.padding == ((0, 0), (0, 0)) and x.type == n.type)


def in_kpu_ram(n: Node, st: Storage) -> bool:
    """Outputs of kpu_upload and kpu_layer live in KPU RAM, and so does a uint8 graph input read only
    by uploads (the runtime uploads it itself, kpu_semantics.md §2); everything else in main memory."""
    return isinstance(n.op, KO.KPU_SPACE_OPS) or id(n) in st.kpu_inputs


def inline_constants(g: Graph) -> set[int]:
    """Constants that are only ever weights/biases of conv-like ops or matmul biases (inlined, §8.3)."""
    inline_slots = {O.Conv2D: (1, 2), O.Conv2DTranspose: (1, 2), O.MatMul: (2,), KO.QuantConv: (1,)}
    users = g.users()
    out = set()
    for n in g.nodes:
        if not n.is_constant:
            continue
        uses = users[n]
        if uses and n not in g.outputs and all(
                any(u.inputs[k] is n for k in inline_slots.get(type(u.op), ())) and
                all(u.inputs[k] is not n for k in range(len(u.inputs))
                    if k not in inline_slots.get(type(u.op), ()))
                for u in uses):
            out.add(id(n))
    return out
