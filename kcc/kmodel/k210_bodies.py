"""Node bodies of the K210 ops: `kpu_upload` (§9.1) and `kpu_conv2d` (§9.2).

kpu_conv2d layout:

    off 0    main_mem_output (memory_range; all zero when unused)
    off 16   batches (i32), reserved0 (i32)
    off 24   layer: 12 x u64 registers (§9.3)
             P1 zero bytes, batch-norm table (oc x u64)      P1 = layer.bwsx_base_addr
             P2 zero bytes, activation table (144 bytes)      P2 = layer.active_addr
             P3 zero bytes, weights (u8)                      P3 = layer.para_start_addr

The three register fields hold *skip counts*, not addresses. kcc chooses them so that the
activation table starts on a 256-byte-aligned **file** offset and the batch-norm and weight tables
on 8-byte ones (kcc.kmodel.spec, KPU_*_ALIGNMENT: what the KPU needs; ncc >= beta1 aligns all three
to 256), which is why `pack()` needs the body's absolute file offset: `kcc.kmodel.write` passes it.
The emitter never computes P1-P3.
"""

from __future__ import annotations

import math
import struct
from typing import Any, ClassVar

import numpy as np

from kcc.errors import KmodelError
from kcc.kmodel.codec import Body, body_dataclass
from kcc.kmodel.kpu_layout import kpu_bytes, kpu_row_layout
from kcc.kmodel.layer import (
    LAYER_FIELDS,
    TABLE_SKIP_FIELDS,
    KpuActivationTable,
    KpuBatchNormTable,
    KpuLayerArgument,
)
from kcc.kmodel.spec import (
    KPU_ACT_ALIGNMENT,
    KPU_BN_ALIGNMENT,
    KPU_LINE_SIZE,
    KPU_WEIGHTS_ALIGNMENT,
    DataType,
    MemoryType,
    Opcode,
)
from kcc.kmodel.types import ABSENT_RANGE, MemoryRange, Reader, Shape4, Writer


def _pad_to(pos: int, alignment: int) -> int:
    return -pos % alignment


def aligned_table_padding(offset: int, out_channels: int) -> tuple[int, int, int]:
    """(P1, P2, P3) that put the three tables of a body at file offset `offset` on their alignments."""
    pos = offset + 24 + KpuLayerArgument.SIZE
    p1 = _pad_to(pos, KPU_BN_ALIGNMENT)
    pos += p1 + KpuBatchNormTable.ENTRY_SIZE * out_channels
    p2 = _pad_to(pos, KPU_ACT_ALIGNMENT)
    pos += p2 + KpuActivationTable.SIZE
    p3 = _pad_to(pos, KPU_WEIGHTS_ALIGNMENT)
    return p1, p2, p3


@body_dataclass
class KpuUpload(Body):
    """§9.1: NCHW uint8 in main memory -> KPU layout (only the valid bytes are written).

    `output.size` is `kpu_bytes(in_shape)`.
    """

    OPCODE: ClassVar[Opcode] = Opcode.KPU_UPLOAD
    input: MemoryRange
    output: MemoryRange
    in_shape: Shape4


@body_dataclass
class KpuConv2D(Body):
    """One KPU layer run `batches` times (§9.2, §9.7).

    `layer.bwsx_base_addr`, `layer.active_addr` and `layer.para_start_addr` are ignored when
    packing: the writer stores the skip counts there. `table_padding` is None for bodies laid
    out by kcc's rule (`aligned_table_padding`: everything kcc emits); a body read from a file
    that used another alignment (ncc beta: 256/256/256, alpha: 8/256/128) keeps its explicit
    (P1, P2, P3) so that it is rewritten byte for byte.
    """

    OPCODE: ClassVar[Opcode] = Opcode.KPU_CONV2D
    OUTPUTS: ClassVar[tuple[str, ...]] = ("output", "main_mem_output")

    main_mem_output: MemoryRange = ABSENT_RANGE
    batches: int = 1
    reserved0: int = 0
    layer: KpuLayerArgument
    batch_norm: KpuBatchNormTable
    activation: KpuActivationTable
    weights: np.ndarray
    table_padding: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batches < 1:
            raise KmodelError(f"kpu_conv2d: field batches must be >= 1, got {self.batches}")
        if len(self.batch_norm) != self.layer.out_channels:
            raise KmodelError(
                f"kpu_conv2d: batch_norm has {len(self.batch_norm)} entries, layer has "
                f"{self.layer.out_channels} output channels"
            )
        weights = np.ascontiguousarray(self.weights, dtype=np.uint8).reshape(-1)
        if weights.size != self.layer.weights_count:
            raise KmodelError(
                f"kpu_conv2d: field weights has {weights.size} bytes, the layer needs {self.layer.weights_count}"
            )
        if weights.flags.writeable:
            weights = weights.copy()
            weights.setflags(write=False)
        object.__setattr__(self, "weights", weights)
        if self.table_padding is not None:
            object.__setattr__(self, "table_padding", tuple(int(p) for p in self.table_padding))

    def _pack_tail(self, w: Writer, offset: int) -> None:
        oc = self.layer.out_channels
        p1, p2, p3 = self.table_padding or aligned_table_padding(offset, oc)
        regs = self.layer.registers(bwsx_base_addr=p1, active_addr=p2, para_start_addr=p3)
        w.raw(struct.pack("<12Q", *regs))
        w.zeros(p1)
        w.raw(self.batch_norm.words().tobytes())
        w.zeros(p2)
        w.raw(self.activation.pack())
        w.zeros(p3)
        w.raw(self.weights.tobytes())

    @classmethod
    def _unpack_tail(cls, r: Reader, values: dict[str, Any], offset: int) -> dict[str, Any]:
        fields = KpuLayerArgument.decode(struct.unpack("<12Q", r.take(KpuLayerArgument.SIZE, "layer")))
        layer = KpuLayerArgument(**fields)
        oc = layer.out_channels
        p1, p2, p3 = (fields[name] for name in TABLE_SKIP_FIELDS)
        r.take(p1, "batch-norm padding (bwsx_base_addr)")
        words = r.array("<u8", oc, "batch_norm")
        batch_norm = KpuBatchNormTable.from_words(words)
        r.take(p2, "activation padding (active_addr)")
        activation = KpuActivationTable.unpack(r.take(KpuActivationTable.SIZE, "activation"))
        r.take(p3, "weights padding (para_start_addr)")
        weights = r.array("u1", layer.weights_count, "weights")
        if (p1, p2, p3) == aligned_table_padding(offset, oc):
            table_padding = None  # canonical: the writer recomputes the skips, so store 0 in the layer
            layer = KpuLayerArgument(**(fields | dict.fromkeys(TABLE_SKIP_FIELDS, 0)))
        else:
            table_padding = (p1, p2, p3)
        return dict(
            layer=layer, batch_norm=batch_norm, activation=activation, weights=weights, table_padding=table_padding
        )

    def kpu_input(self) -> MemoryRange:
        """The input map in KPU RAM, from `image_src_addr` and the input size registers."""
        shape = (self.batches, self.layer.in_channels, self.layer.in_height, self.layer.in_width)
        start = self.layer.image_src_addr * KPU_LINE_SIZE
        return MemoryRange(MemoryType.K210_KPU, DataType.UINT8, start, kpu_bytes(shape))

    def kpu_output(self) -> MemoryRange:
        """The output map in KPU RAM, from `image_dst_addr` and the output size registers."""
        shape = (self.batches, self.layer.out_channels, self.layer.out_height, self.layer.out_width)
        start = self.layer.image_dst_addr * KPU_LINE_SIZE
        return MemoryRange(MemoryType.K210_KPU, DataType.UINT8, start, kpu_bytes(shape))

    def ranges(self) -> dict[str, MemoryRange]:
        out = {"input": self.kpu_input(), "output": self.kpu_output()}
        if self.main_mem_output.size:
            out["main_mem_output"] = self.main_mem_output
        return out


KPU_WEIGHTS_PER_LOAD = 30720  # §9.3 "weight loads": ncc keeps each load <= 30 KiB
MAX_WEIGHT_LOADS = 1 << LAYER_FIELDS["load_time"][2]  # load_time (loads - 1) is a 6-bit field: 64 loads


def weight_loads(out_channels: int, in_channels: int, filter_size: int,
                 depthwise: bool) -> tuple[int, int, int]:
    """(para_size, load_time, o_ch_num_coef) by ncc's rule (§9.3 "Weight loads"): whole output
    channels per load, at most KPU_WEIGHTS_PER_LOAD bytes a load; a depthwise layer loads once. A
    channel larger than one load still gets one channel a load (`layer_problems` reports it)."""
    if depthwise:
        return out_channels * filter_size * filter_size, 0, out_channels - 1
    one = filter_size * filter_size * in_channels
    per_load = max(1, min(out_channels, KPU_WEIGHTS_PER_LOAD // one))
    return one * per_load, math.ceil(out_channels / per_load) - 1, per_load - 1


def map_fields(in_chw: tuple[int, int, int], out_chw: tuple[int, int, int]) -> dict[str, int]:
    """The register fields ncc derives from a layer's input and output map shapes (C, H, W): sizes,
    the 64-byte line layout of both maps (§7.3) and the DMA byte counts (§9.3)."""
    c, h, w = in_chw
    oc, oh, ow = out_chw
    lin, lout = kpu_row_layout(w), kpu_row_layout(ow)
    return dict(
        i_ch_num=c - 1, o_ch_num=oc - 1,
        i_row_wid=w - 1, i_col_high=h - 1, o_row_wid=ow - 1, o_col_high=oh - 1,
        channel_switch_addr=lin.row_len * h, row_switch_addr=lin.row_len, coef_group=lin.groups,
        wb_channel_switch_addr=lout.row_len * oh, wb_row_switch_addr=lout.row_len, wb_group=lout.groups,
        channel_byte_num=ow * oh - 1, dma_total_byte=ow * oh * oc - 1)


def load_fields(out_channels: int, in_channels: int, filter_size: int, depthwise: bool) -> dict[str, int]:
    """`weight_loads` as register fields."""
    return dict(zip(("para_size", "load_time", "o_ch_num_coef"),
                    weight_loads(out_channels, in_channels, filter_size, depthwise)))


def layer_fields(in_chw: tuple[int, int, int], out_chw: tuple[int, int, int], filter_size: int,
                 depthwise: bool) -> dict[str, int]:
    """Every register field ncc derives from a layer's shapes: what an emitter writes and what
    `layer_problems` checks a file against."""
    return map_fields(in_chw, out_chw) | load_fields(out_chw[0], in_chw[0], filter_size, depthwise)


def layer_problems(body: KpuConv2D) -> list[str]:
    """Register fields that disagree with the values ncc derives from the layer's shape (§9.3).

    The runtime does not check these, but the KPU reads them, so an emitter should produce an
    empty list. All 1039 kpu_conv2d layers of the real ncc files pass, except the first layer of
    the 2019-08 dev build `history/8678f7f/yolo.kmodel`, whose 320x240 output overflows the
    16-bit `channel_byte_num` (ncc silently wrapped it). Each entry is one short sentence.
    """
    layer = body.layer
    problems: list[str] = []

    def expect(name: str, want: int) -> None:
        got = getattr(layer, name)
        if got != want:
            width = LAYER_FIELDS[name][2]
            note = f" (does not fit in {width} bits)" if want >= 1 << width else ""
            problems.append(f"{name} is {got}, expected {want}{note}")

    in_w, in_h, out_w, out_h = layer.in_width, layer.in_height, layer.out_width, layer.out_height
    ic, oc, f = layer.in_channels, layer.out_channels, layer.filter_size
    stride = layer.pool_type.stride
    want = map_fields((ic, in_h, in_w), (oc, out_h, out_w))
    want.update(o_row_wid=in_w // stride - 1, o_col_high=in_h // stride - 1)  # the pool unit's output
    for name, value in want.items():
        expect(name, value)
    if layer.depth_wise_layer:
        if ic != oc:
            problems.append(f"depthwise layer has {ic} input but {oc} output channels")
    elif f * f * ic > KPU_WEIGHTS_PER_LOAD:
        problems.append(f"one output channel needs {f * f * ic} weight bytes, "
                        f"over {KPU_WEIGHTS_PER_LOAD} per load")
        return problems
    for name, value in load_fields(oc, ic, f, bool(layer.depth_wise_layer)).items():
        expect(name, value)
    out_bytes = body.batches * oc * out_h * out_w
    if body.main_mem_output.size and body.main_mem_output.size != out_bytes:
        problems.append(f"main_mem_output holds {body.main_mem_output.size} bytes, the output is {out_bytes}")
    return problems
