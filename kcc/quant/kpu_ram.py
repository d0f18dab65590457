"""What lives in place in KPU RAM between KPU layers (kcc.quant.quantize): a concatenation of their
outputs, one buffer whose channel ranges they write (kcc.ir.kpu_ops.KpuConcat), a channel slice read
where it lies (KpuChannelView), and why not when not; the placement notes that say so. And how a
map gets there from main memory (`upload`)."""

from __future__ import annotations

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import shift_copy
from kcc.ir.graph import Graph, Node, channel_range
from kcc.kmodel import kpu_channel_offset, kpu_row_layout
from kcc.passes.kpu_live import KpuLive
from kcc.quant.domains import Domain, NodeQuant
from kcc.target.k210 import KPU_RAM_SIZE, dma_upload_width


def kpu_concat_problem(n: Node, table: dict[Node, NodeQuant], written_into: dict[Node, Node],
                       live: KpuLive | None = None) -> str | None:
    """Why concatenation `n` cannot be computed in place in KPU RAM (module docstring), or None.
    `written_into`: the KPU layers already written into another in-place concatenation. `live`: the
    graph's KPU RAM profile (kcc.passes.kpu_live), which holds an in-place concatenation whole from
    its first part to its last KPU reader: where that does not fit beside the layers between (a 1x1
    conv cut into output groups that each read its whole input, MobileNetV2 1.4 at 320x320), its parts
    are copied out and concatenated on the CPU instead."""
    if n.op.axis != 1 or n.type.rank != 4:
        return f"concatenation along axis {n.op.axis} (KPU RAM holds channel ranges only)"
    if n.shape[0] != 1:
        return f"batch {n.shape[0]} (in KPU RAM each batch is a whole map)"
    if len({id(p) for p in n.inputs}) != len(n.inputs):
        return "it reads one part twice"
    if table[n].domain is not Domain.CODES:
        uploads = [p for p in n.inputs if table[p].domain not in (Domain.KPU, Domain.CODES) and not kpu_reshape(p, table)]
        if uploads:
            return f"its part '{uploads[0].name}' is a CPU {uploads[0].op.kind}, not a KPU layer's output"
        return "its parts are on different quantization grids"
    for p in n.inputs:  # a CPU part on the grid (float, a uint8 conv's or an upsampling's codes) is uploaded into its range
        if table[p].domain not in (Domain.KPU, Domain.FLOAT, Domain.CPU_UINT8, Domain.CODES) and not kpu_reshape(p, table):
            return f"its part '{p.name}' is a CPU {p.op.kind}, not a KPU layer's output"
    _, _, h, w = n.shape
    at = 0
    for p in n.inputs:
        if kpu_channel_offset(w, h, at) is None:
            groups = kpu_row_layout(w).groups
            return (f"its part '{p.name}' starts at channel {at}, not a multiple of {groups} (the channels "
                    f"one 64-byte line of KPU RAM holds at width {w})")
        if written_into.get(p, n) is not n:
            return f"its part '{p.name}' is already written into '{written_into[p].name}' in KPU RAM"
        at += p.shape[1]
    peak = live.peak_over(n) if live is not None else 0
    if peak > KPU_RAM_SIZE:
        return f"KPU RAM: kept whole from its first part on, it would need {peak} B alive at once > {KPU_RAM_SIZE} B"
    return None


def same_kpu_bytes(n: Node) -> bool:
    """Reshape n leaves a map's bytes in KPU RAM as they are: one channel per line group at one width,
    so each channel's rows are consecutive lines either way (kcc.passes.row_pick's row bands)."""
    if not isinstance(n.op, O.Reshape):
        return False
    x = n.inputs[0]
    return (x.type.rank == n.type.rank == 4 and x.shape[0] == n.shape[0] == 1 and x.shape[3] == n.shape[3]
            and kpu_row_layout(n.shape[3]).groups == 1)


def kpu_reshape(n: Node, table: dict[Node, NodeQuant]) -> bool:
    """n is a KPU layer's output read as another map of the same bytes (`same_kpu_bytes`, or a
    batched fan's batches as one map, `fan_batches`)."""
    return (same_kpu_bytes(n) or fan_batches(n)) and table[n.inputs[0]].domain is Domain.KPU


def fan_batches(n: Node) -> bool:
    """Reshape n reads the G batches of a layer over a KpuBatchStack as one batch-1 map of G x m
    channels: the same bytes in KPU RAM, m being whole line groups (kcc.passes.kernel_forms.batchable_fan)."""
    if not isinstance(n.op, O.Reshape) or not isinstance(n.inputs[0].op, KO.FloatKpuConv):
        return False
    x = n.inputs[0]
    nb, m, h, w = x.shape
    return (isinstance(x.inputs[0].op, KO.KpuBatchStack) and n.shape == (1, nb * m, h, w)
            and m % kpu_row_layout(w).groups == 0)


def batch_part(n: Node) -> Node | None:
    """The part of a KpuBatchStack whose batch n reads: n a channel slice of `fan_batches` that is one
    whole batch; else None. That part's grid is n's (each batch keeps its group's grid)."""
    if not isinstance(n.op, O.StridedSlice) or not fan_batches(n.inputs[0]):
        return None
    r = channel_range(n)
    fan = n.inputs[0].inputs[0]
    m = fan.shape[1]
    if r is None or r[1] - r[0] != m or r[0] % m:
        return None
    return fan.inputs[0].inputs[r[0] // m]


NOT_BETWEEN_LAYERS = "its input is not a KPU layer's output"


def row_view(n: Node, table: dict[Node, NodeQuant]) -> tuple[int, int, int] | None:
    """(c, r0, r1) if n is a StridedSlice keeping rows r0..r1-1 of channel c of a KPU layer's map with
    one channel per line group, whole rows, on the map's codes: read in place in KPU RAM
    (kcc.ir.kpu_ops.KpuChannelView `rows`)."""
    if not isinstance(n.op, O.StridedSlice) or n.type.rank != 4:
        return None
    x = n.inputs[0]
    (b0, c0, r0, x0), (b1, c1, r1, x1), steps = n.op.begin, n.op.end, n.op.strides
    ok = ((b0, b1, x0, x1) == (0, 1, 0, x.shape[3]) and c1 - c0 == 1 and tuple(steps) == (1, 1, 1, 1)
          and n.shape == (1, 1, r1 - r0, x.shape[3]) and kpu_row_layout(x.shape[3]).groups == 1
          and table[x].domain is Domain.KPU and table[n].domain is Domain.CODES)
    return (c0, r0, r1) if ok else None


def kpu_view_problem(n: Node, table: dict[Node, NodeQuant]) -> str | None:
    """Why the channel slice `n` (`channel_range`) cannot be read in place in KPU RAM by the KPU
    layers reading it (kcc.ir.kpu_ops.KpuChannelView), or None; `NOT_BETWEEN_LAYERS` when its input
    is no KPU layer's output (a slice on the CPU, as before, and no placement of its own)."""
    x = n.inputs[0]
    if table[x].domain is not Domain.KPU and not kpu_reshape(x, table):
        return NOT_BETWEEN_LAYERS
    if table[n].domain is not Domain.CODES:
        return "it is not read on its input's grid"
    if n.shape[0] != 1:
        return f"batch {n.shape[0]} (in KPU RAM each batch is a whole map)"
    _, _, h, w = x.shape
    c0, _ = channel_range(n)
    if kpu_channel_offset(w, h, c0) is None:
        groups = kpu_row_layout(w).groups
        return (f"its first channel {c0} is not a multiple of {groups} (the channels one 64-byte line of "
                f"KPU RAM holds at width {w}): copied out, sliced on the CPU and uploaded")
    return None


def view_note(n: Node) -> str:
    c0, c1 = channel_range(n)
    return (f"in place in KPU RAM: KPU layers read channels {c0}..{c1 - 1} of '{n.inputs[0].name}' where "
            f"it lies, no copy-out, slice or upload")


def in_place_note(n: Node, table: dict[Node, NodeQuant] | None = None) -> str:
    """What runs where for in-place concatenation n: its KPU layers write their channel ranges, the CPU
    uploads its other parts into theirs (with `table`, the domains, to tell them apart)."""
    ranges, at, uploads = [], 0, 0
    for p in n.inputs:
        ranges.append(f"{at}..{at + p.shape[1] - 1}")
        at += p.shape[1]
        uploads += table is not None and table[p].domain is not Domain.KPU and not kpu_reshape(p, table)
    writers = (f"its {len(n.inputs)} KPU layers write" if not uploads else
               f"its {len(n.inputs) - uploads} KPU layer(s) and {uploads} upload(s) of CPU parts write")
    return f"in place in KPU RAM: {writers} channels {', '.join(ranges)} of one buffer"


def gap_source(n: Node, readers: list[Node], table: dict[Node, NodeQuant],
               written_into: dict[Node, Node]) -> tuple[Node, ...] | None:
    """The parts of the in-place concatenation that pad `n` lays out with a gap row / column
    (kcc.passes.gap_pick; kcc.ir.kpu_ops.KpuConcat `gap`), or None: n pads a concatenation of KPU
    layers (or one layer) by at most one row and one column, bottom and right, each part one line
    group of channels, the concatenation computable in place (`kpu_concat_problem`), and every
    reader is a pick layer that never picks the gap (a copy whose picked pixels are even rows and
    columns of an odd size, or the odd ones of an even size)."""
    if not (isinstance(n.op, O.Pad) and n.type.rank == 4 and n.shape[0] == 1 and readers):
        return None
    (b0, b1), (c0, c1), (top, gap_h), (left, gap_w) = n.op.paddings
    if (b0, b1, c0, c1, top, left) != (0,) * 6 or not {gap_h, gap_w} <= {0, 1} or not (gap_h or gap_w):
        return None
    x = n.inputs[0]
    parts = x.inputs if isinstance(x.op, O.Concat) and x.op.axis == 1 else (x,)
    if len(parts) > 1 and kpu_concat_problem(x, table, written_into) is not None:
        return None
    _, _, h, w = x.shape
    line = kpu_row_layout(w).groups
    if (kpu_row_layout(w + gap_w) != kpu_row_layout(w) or len({id(p) for p in parts}) != len(parts)
            or any(table[p].domain is not Domain.KPU or p.shape[1] > line for p in parts)
            or any(p.shape[1] % line for p in parts[:-1])):
        return None
    for r in readers:
        shift = shift_copy(r)
        if table[r].domain is not Domain.KPU or shift is None or r.op.pool not in ("left_top_2_s2", "right_top_2_s2"):
            return None
        if (gap_h and (h % 2 == 0 or shift[0])) or (gap_w and (w % 2 == 0 or shift[1] or r.op.pool != "left_top_2_s2")):
            return None  # the pick would read the gap
    return tuple(parts)


def upload(g: Graph, x8: Node, name: str) -> Node:
    """uint8 map x8 (main memory) uploaded to KPU RAM; by DMA, its rows padded to a multiple of 64
    bytes on the CPU, where that costs less (kcc.target.k210.dma_upload_width): the padding is x8's
    own first bytes (a view of them, no constant), which no KPU layer reads. Not the model's uint8
    input, which the user writes straight into KPU RAM when KPU layers alone read it (kcc.emit.storage)."""
    wide = dma_upload_width(x8.shape) if x8.type.rank == 4 and not isinstance(x8.op, O.Input) else None
    if wide is None:
        return g.add(KO.KpuUpload(), (x8,), name + "/upload")
    _, c, h, w = x8.shape
    flat = g.add(O.Reshape((c * h * w,)), (x8,), name + "/bytes")
    head = g.add(O.StridedSlice((0,), (c * h * (wide - w),), (1,)), (flat,), name + "/dma_fill")
    fill = g.add(O.Reshape((1, c, h, wide - w)), (head,), name + "/dma_fill4")
    rows = g.add(O.Concat(3), (x8, fill), name + "/dma_rows")
    up = g.add(KO.KpuUpload(), (rows,), name + "/upload")
    return g.add(KO.KpuChannelView(0, c, width=w), (up,), name + "/kpu")
