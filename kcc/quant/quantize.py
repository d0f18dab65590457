"""quantize: float graph with FloatKpuConv layers + calibrated ranges -> the uint8 K210 graph.

Every KPU layer reads and writes uint8 in KPU RAM; the rest of the graph stays float32 on the CPU.
Data crosses between the two through explicit ops, created lazily per tensor:

    float x --quantize--> u8 (main) --kpu_upload--> u8 (KPU RAM) --kpu_layer--> u8 (KPU RAM)
    u8 (KPU RAM) --kpu_download--> u8 (main) --dequantize--> float

Consecutive KPU layers therefore hand data over in KPU RAM directly, and data-movement ops between
two layers (pad, strided_slice, reshape, transpose) run on uint8 in main memory with the producing
layer's quant param ("range broadcast", kpu_semantics.md §4.2), so no requantization is needed.
A Pad's value is quantized with that param (0.0 -> the zero point, matching the KPU's own border).
So does a concatenation of uint8 tensors on one grid (kcc.quant.policy.share_concat_grids).
A channel concatenation of KPU layers that KPU layers read is computed in place in KPU RAM instead
(`KpuConcat`, kcc.emit.storage): each producing layer writes its channel range of one buffer, with no
copy-out, CPU concatenation or upload. That needs one grid for all parts, batch 1, and every part's
first channel on a 64-byte line of its own (a multiple of the channels that share a line at the
map's width, kmodel_v4.md §7.3); where a part misses any of it, the concatenation runs on the CPU as
before, and its placement says why (`kpu_concat_problem`). A float conv among the parts (the wide
channels of a depthwise layer cut by its weights' ranges, kcc.passes.channel_split) is calibrated,
put on the concatenation's grid (kcc.quant.policy.share_concat_grids), quantized and uploaded into its
channel range.

A layer on row bands (kcc.passes.row_bands) keeps the map where its layers wrote it: a reshape that
keeps a map's bytes is read in place (also as a part of an in-place concatenation), the band edges'
layers write their rows into the bulk's map on its grid (`KpuRowPatch`), a one-channel row slice is
a view (`KpuChannelView` rows), and a CPU reader gets the patched map through one identity layer.

A QuantResidual(x) (decompose_kernels' residual channels) becomes, on the grid q its stack is read
on: dequantize(quantize(x)) subtracted from x, quantized at gain times q's resolution. A KPU layer
reading only a residual (a summed term's twin) gets its output range from a bound
(kcc.quant.policy.residual_term_ranges).

A CPU pool whose output range is its input's grid (a pre-quantized model's pools: TFLite requires
it) runs on the codes too: dequantize with (0, 1), pool, quantize with (0, 1). Max and mean commute
with the affine map from codes to values, and float32 holds the codes and their sums exactly, so a
mean rounds half up exactly as TFLite's uint8 average pool does; the KPU's mean pools floor instead.
The final quantize scales by 1 + 2^-20 so that exact .5 ties round up on the K210 too, whose
float-to-int conversion rounds them to even (kpu_semantics.md §4.1).

Two steps: `analyze` decides, per node of the float graph and in its topological order, where the
node computes (`Domain`) and on which grid (`NodeQuant`), with each KPU layer's parameters; then
`_Rewriter` builds the quantized graph from that table, each crossing view made once, on demand.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_range
from kcc.ir.types import DType
from kcc.passes.kernel_forms import shift_weights
from kcc.passes.kpu_live import KpuLive
from kcc.passes.legalize_kpu import Placement
from kcc.passes.manager import CompileContext
from kcc.quant.analysis import _required, analyze
from kcc.quant.domains import Domain, NodeQuant, moves_values
from kcc.quant.kpu_params import LayerRanges, kpu_layer
from kcc.quant.kpu_ram import (
    NOT_BETWEEN_LAYERS,
    batch_part,
    fan_batches,
    gap_source,
    in_place_note,
    kpu_concat_problem,
    kpu_reshape,
    kpu_view_problem,
    row_view,
    same_kpu_bytes,
    upload,
    view_note,
)
from kcc.quant.params import GridRange, QuantParam
from kcc.quant.skip_codes import late_reads

# codes -> codes with ties rounded up: x*(1 + 2^-20) moves k + 1/2 up by >= 2^-21 (a float32 keeps it,
# |x| <= 255), and a non-tie mean of n codes is >= 1/(2n) away from a half, far more than 255*2^-20
CODE_ROUNDING_SCALE = 1.0 + 2.0 ** -20


def _drops_channels(n: Node) -> bool:
    """A slice that keeps only some channels: quantizing its input instead would quantize (and move)
    data it throws away."""
    return isinstance(n.op, O.StridedSlice) and n.shape[1] < n.inputs[0].shape[1]


# ----------------------------------------------------------------------------------------- rewrite
class _Rewriter:
    """Builds the quantized graph from `analyze`'s table. A node's forms (float, uint8 in main memory,
    uint8 in KPU RAM, quantized on a given grid) are made when first read, in the order they are
    read, and once: `_once` is the only cache."""

    def __init__(self, src: Graph, table: dict[Node, NodeQuant]):
        self.src = src
        self.table = table
        self.users = src.users()
        self.live = KpuLive(src)  # KPU RAM alive at each step, for in-place concatenations
        self.g = Graph()
        self.made: dict[tuple[str, Node, QuantParam | None], Node] = {}
        self.written_into: dict[Node, Node] = {}  # KPU layer -> the KpuConcat its output is part of
        self.uploads: dict[tuple[int, ...], Node] = {}  # parts on the CPU -> their codes' one upload
        self.placements: dict[Node, Placement] = {}  # concatenation between KPU layers -> where it runs
        self.late = late_reads(src, table)  # a pyramid's late reads of a map, from its codes

    def _once(self, form: str, n: Node, make: Callable[[], Node], grid: QuantParam | None = None) -> Node:
        key = (form, n, grid)
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def _dequantize(self, n: Node, x: Node, suffix: str = "/dequantize") -> Node:
        q = _required(n, self.table[n].grid)
        return self.g.add(KO.Dequantize(q.zero_point, q.scale), (x,), n.name + suffix)

    def float_of(self, n: Node) -> Node:
        """n as float32. Data movement of a uint8 tensor runs on the uint8 bytes (4x less memory and
        work) and is dequantized after: ncc's dequantize motion (kpu_semantics.md §4.4). Float nodes
        and the uint8 input's dequantize are made by `run`, in the graph's order."""
        if self.table[n].domain in (Domain.KPU, Domain.CODES, Domain.CPU_UINT8):
            return self._once("float", n, lambda: self._dequantize(n, self.u8_of(n)))
        return self.made[("float", n, None)]

    def u8_of(self, n: Node) -> Node:
        """n as uint8 in main memory, on its grid."""
        def make() -> Node:
            g, nq = self.g, self.table[n]
            if nq.domain is Domain.KPU:
                return g.add(KO.KpuDownload(), (self.layer_of(n),), n.name + "/download")
            if nq.domain is Domain.CPU_UINT8 and nq.convs:
                x8 = self.u8_of(n.inputs[0])
                runs = [g.add(op, (x8, g.constant(codes, f"{n.inputs[1].name}/u8")),
                              n.name if len(nq.convs) == 1 else f"{n.name}/channels({op.o0}, {op.o1})")
                        for op, codes in nq.convs]
                return runs[0] if len(runs) == 1 else g.add(O.Concat(1), tuple(runs), n.name)
            if nq.domain is Domain.CPU_UINT8 and nq.binary is not None:
                return g.add(nq.binary, tuple(self.u8_of(i) for i in n.inputs), n.name)
            if nq.domain is Domain.CPU_UINT8 and nq.table is not None:
                lut = g.constant(nq.table, n.name + "/table")
                return g.add(KO.QuantTable(), (self.u8_of(n.inputs[0]), lut), n.name)
            if nq.domain is Domain.CPU_UINT8:
                op, codes = nq.matmul
                # the input's codes on the grid analyze chose (its own, or the grid they move on)
                a8 = self.u8_of(n.inputs[0])
                return g.add(op, (a8, g.constant(codes, n.inputs[1].name + "/u8")), n.name)
            if isinstance(n.op, KO.KpuRowPatch):
                # its rows are written after its layer ran, so that layer's copy-out would miss them:
                # an identity layer copies the whole map out once they are (kcc.passes.row_bands)
                grid, c = nq.grid, n.shape[1]
                same = GridRange(*grid.real_range, grid)
                layer = kpu_layer(KO.FloatKpuConv(3, True), shift_weights(c, (0, 0)), np.zeros(c, np.float32),
                                  LayerRanges(grid, same, same))
                copy = g.add(layer, (self.kpu_of(n),), n.name + "/copy_out")
                return g.add(KO.KpuDownload(), (copy,), n.name + "/download")
            if nq.domain is Domain.CODES and moves_values(n):
                return g.add(_on_grid(n.op, nq.grid), (self.u8_of(n.inputs[0]),), n.name + "/u8")
            if nq.domain is Domain.CODES and isinstance(n.op, O.Concat):
                return g.add(n.op, tuple(self.u8_of(i) for i in n.inputs), n.name + "/u8")
            if nq.domain is Domain.CODES:  # a pool on the codes (module docstring)
                codes = g.add(KO.Dequantize(0, 1.0), (self.u8_of(n.inputs[0]),), n.name + "/codes")
                pooled = g.add(n.op, (codes,), n.name + "/pool_codes")
                return g.add(KO.Quantize(0, CODE_ROUNDING_SCALE), (pooled,), n.name + "/u8")
            return self.quantized(n, _required(n, nq.grid))
        return self._once("u8", n, make)

    def quantized(self, n: Node, q: QuantParam) -> Node:
        """float n quantized on q. Quantize *before* data movement: pad(x) -> quantize becomes
        quantize(x) -> pad on uint8, so the float copy of the larger, padded tensor is never made.
        Concatenations too: the stacked shifted views of a decomposed conv
        (kcc.passes.decompose_kernels) are made from one quantized copy of x, on uint8 (a quarter of
        the memory and traffic of float32). A slice that drops channels is quantized after, not
        before (_drops_channels)."""
        def make() -> Node:
            g = self.g
            if moves_values(n) and not _drops_channels(n):
                return g.add(_on_grid(n.op, q), (self.quantized(n.inputs[0], q),), n.name + "/u8")
            if isinstance(n.op, O.Concat) and not self._read_in_float(n):
                return g.add(n.op, tuple(self.quantized(i, q) for i in n.inputs), n.name + "/u8")
            if isinstance(n.op, KO.QuantResidual):
                # the residual of x on q, itself on q at `gain` times the resolution: codes z +- gain/2
                x = n.inputs[0]
                back = g.add(KO.Dequantize(q.zero_point, q.scale), (self.quantized(x, q),),
                             n.name + "/rounded")
                lost = g.add(O.Binary("sub"), (self.float_of(x), back), n.name + "/lost")
                return g.add(KO.Quantize(q.zero_point, q.scale * n.op.gain), (lost,), n.name + "/u8")
            return g.add(KO.Quantize(q.zero_point, q.scale), (self.float_of(n),), n.name + "/quantize")
        return self._once("quantized", n, make, q)

    def _float_read(self, r: Node, x: Node) -> Node:
        """Input x of float CPU op r: x's float, or for a late read (kcc.quant.skip_codes) the same
        concatenation made again from its parts' codes, right before r."""
        parts = self.late.get((id(r), id(x)))
        if parts is None:
            return self.float_of(x)
        return self._once("late", x, lambda: self.g.add(x.op, tuple(
            self._dequantize(p, self.u8_of(p), "/late") for p in parts), x.name + "/late"))

    def _read_in_float(self, n: Node) -> bool:
        """A CPU op reads float n (or n is a graph output): n's float copy is made anyway, so a
        concatenation is quantized whole from it; its parts, read by the concatenation alone, can
        then be computed into its blocks (kcc.emit.storage), not each kept alive until a quantize
        of its own (kcc.passes.part_groups' channel groups)."""
        return n in self.src.outputs or any(self.table[u].domain is Domain.FLOAT for u in self.users[n])

    def kpu_of(self, n: Node) -> Node:
        """n as uint8 in KPU RAM: a KPU layer's output, a concatenation of them computed in place
        (module docstring), or an upload."""
        if self.table[n].domain is Domain.KPU:
            return self.layer_of(n)
        if isinstance(n.op, KO.KpuStack):
            return self._once("kpu", n, lambda: self.kpu_stack(n))
        if isinstance(n.op, KO.KpuChannelPatch):
            return self._once("kpu", n, lambda: self.kpu_channel_patch(n))
        if isinstance(n.op, KO.KpuRowPatch):  # the parts write the map's rows in place (kcc.emit.storage)
            return self._once("kpu", n, lambda: self.g.add(
                n.op, (self.kpu_of(n.inputs[0]), *(self.layer_of(p) for p in n.inputs[1:])), n.name + "/kpu"))
        if (same_kpu_bytes(n) or fan_batches(n)) and self._in_kpu_ram(n.inputs[0]):
            return self._once("kpu", n, lambda: self.g.add(n.op, (self.kpu_of(n.inputs[0]),), n.name + "/kpu"))
        if isinstance(n.op, KO.KpuBatchStack):
            return self._once("kpu", n, lambda: self.kpu_batch_stack(n))
        rows = row_view(n, self.table)
        if rows is not None:  # rows of one channel, read in place (kcc.passes.row_bands' crops)
            c, r0, r1 = rows
            return self._once("kpu", n, lambda: self.g.add(
                KO.KpuChannelView(c, c + 1, (r0, r1)), (self.kpu_of(n.inputs[0]),), n.name + "/kpu"))
        if channel_range(n) is not None and ("kpu", n, None) not in self.made:
            problem = kpu_view_problem(n, self.table)
            if problem != NOT_BETWEEN_LAYERS and batch_part(n) is None:  # a batch is its conv's business
                self.placements[n] = Placement(n.name, "strided_slice", problem is None,
                                               problem or view_note(n))
            if problem is None:
                c0, c1 = channel_range(n)
                return self._once("kpu", n, lambda: self.g.add(
                    KO.KpuChannelView(c0, c1), (self.kpu_of(n.inputs[0]),), n.name + "/kpu"))
        parts = gap_source(n, self.users[n], self.table, self.written_into) if ("kpu", n, None) not in self.made else None
        if parts is not None:
            for p in parts:  # written into a map with a gap row / column (kcc.passes.gap_pick)
                self.written_into[p] = n
            return self._once("kpu", n, lambda: self.gap_concat(n, parts))
        if isinstance(n.op, O.Concat) and ("kpu", n, None) not in self.made:
            problem = kpu_concat_problem(n, self.table, self.written_into, self.live)
            if any(self.table[p].domain is Domain.KPU for p in n.inputs):  # a concatenation between KPU layers
                self.placements[n] = Placement(n.name, "concat", problem is None, problem or in_place_note(n, self.table))
            if problem is None:
                for p in n.inputs:
                    self.written_into[p] = n
                return self._once("kpu", n, lambda: self.g.add(
                    KO.KpuConcat(), tuple(self._part_of(p) for p in n.inputs), n.name + "/kpu"))
        return self._once("kpu", n, lambda: upload(self.g, self.u8_of(n), n.name))

    def _part_of(self, p: Node) -> Node:
        """Part p of an in-place KPU RAM concatenation: a KPU layer writes its range, a float part is
        uploaded into it, on the concatenation's grid (kcc.quant.policy.share_concat_grids)."""
        if self.table[p].domain is Domain.KPU:
            return self.layer_of(p)
        if kpu_reshape(p, self.table):
            return self.kpu_of(p)
        return upload(self.g, self.u8_of(p), p.name)

    def gap_concat(self, n: Node, parts: tuple[Node, ...]) -> Node:
        """Pad n of `parts` as one KPU RAM buffer with its gap (kcc.passes.gap_pick); the channel
        views its layers read in place are that conv's business: its placement says it, not one each."""
        layers = tuple(map(self.layer_of, parts))
        for p in parts:
            self.placements.pop(p.inputs[0], None)
        return self.g.add(KO.KpuConcat(n.op.paddings[2][1:] + n.op.paddings[3][1:]), layers, n.name + "/kpu")

    def kpu_stack(self, n: Node) -> Node:
        """A multi-grid stack: its parts write their channel ranges of one buffer (a KpuConcat);
        kcc.passes.residual_kpu and table_stream made sure each part starts on a line and is written
        nowhere else. A run of parts that are codes on the CPU (a PReLU's tables' channel groups,
        kcc.passes.table_stream) is one upload into the buffer, each part on its grid."""
        ins: list[Node] = []
        codes: list[Node] = []
        for p in (*n.inputs, None):
            if p is not None and self.table[p].domain is not Domain.KPU:
                codes.append(p)
                continue
            if codes:
                ins.extend(self._codes_parts(tuple(codes), f"{n.name}/codes{len(ins)}"))
                codes = []
            if p is None:
                break
            if self.written_into.get(p, n) is not n:
                raise KeyError(f"kpu_stack '{n.name}': part '{p.name}' is already written into "
                               f"'{self.written_into[p].name}'")
            self.written_into[p] = n
            ins.append(self.layer_of(p))
        return self.g.add(KO.KpuConcat(), tuple(ins), n.name + "/kpu")

    def _codes_parts(self, parts: tuple[Node, ...], name: str) -> list[Node]:
        """Codes on the CPU as parts of a buffer in KPU RAM: each part's own upload where KPU layers
        read it already (a decomposed conv's channel groups: the upload then writes into the buffer,
        where they read it), else one upload of them all (`codes_upload`)."""
        made = [self.made.get(("kpu", p, None)) for p in parts]
        if tuple(id(p) for p in parts) not in self.uploads and all(
                m is not None and isinstance(m.op, KO.KpuUpload) for m in made):
            return made
        return [self.codes_upload(parts, name)]

    def codes_upload(self, parts: tuple[Node, ...], name: str) -> Node:
        """The parts' codes, each on its own grid, concatenated in place on the CPU and uploaded once,
        however many buffers read them (a batched fan's and a stack's, kcc.passes.table_stream)."""
        key = tuple(id(p) for p in parts)
        if key not in self.uploads:
            codes = self.g.add(O.Concat(1), tuple(self.u8_of(p) for p in parts), name + "/u8")
            self.uploads[key] = upload(self.g, codes, name)
        return self.uploads[key]

    def kpu_batch_stack(self, n: Node) -> Node:
        """The groups' codes, each on its own grid, uploaded once (`codes_upload`) and read by the
        batched layer as [G, g, H, W] (the same bytes in KPU RAM: g is whole line groups,
        kcc.ir.kpu_ops.KpuBatchStack)."""
        return self.g.add(O.Reshape(n.shape), (self.codes_upload(n.inputs, n.name),), n.name + "/kpu")

    def kpu_channel_patch(self, n: Node) -> Node:
        """The map's layer, then one upload per batch of the patch's codes into its spare channels
        (kcc.emit.storage writes each at the line where channel c0 of its batch starts)."""
        g = self.g
        m, part = n.inputs
        layer = self.layer_of(m)
        x8 = self.u8_of(part)
        ups = []
        for b in range(part.shape[0]):
            one = x8 if part.shape[0] == 1 else g.add(
                O.StridedSlice((b, 0, 0, 0), (b + 1, *part.shape[1:]), (1, 1, 1, 1)), (x8,), f"{n.name}/b{b}")
            ups.append(g.add(KO.KpuUpload(), (one,), f"{n.name}/b{b}/upload"))
        return g.add(n.op, (layer, *ups), n.name + "/kpu")

    def _in_kpu_ram(self, n: Node) -> bool:
        """n is a KPU layer's output, or a map of them in place, that KPU layers read where it is (also
        read as another map of the same bytes)."""
        return (self.table[n].domain is Domain.KPU or isinstance(n.op, KO.KpuRowPatch)
                or ((same_kpu_bytes(n) or fan_batches(n)) and self._in_kpu_ram(n.inputs[0])))

    def layer_of(self, n: Node) -> Node:
        def make() -> Node:
            return self.g.add(self.table[n].layer, (self.kpu_of(n.inputs[0]),), n.name)
        return self._once("layer", n, make)

    def run(self) -> Graph:
        for n in self.src.nodes:
            domain = self.table[n].domain
            if domain is Domain.KPU:
                self.layer_of(n)
            elif domain is Domain.UINT8_INPUT:
                _required(n, self.table[n].grid)
                x = self.g.add(O.Input(n.op.index, n.shape, DType.uint8), (), n.name)
                self.made[("u8", n, None)] = x
                self.made[("float", n, None)] = self._dequantize(n, x)
            elif domain is Domain.CPU_UINT8:
                self.u8_of(n)
            elif domain is Domain.FLOAT:
                self.made[("float", n, None)] = self.g.add(n.op, tuple(self._float_read(n, i) for i in n.inputs),
                                                           n.name, n.note)
            # CODES: made on demand, on uint8, by u8_of / float_of
        self.g.outputs = [self.float_of(o) for o in self.src.outputs]
        self.g.remove_dead()
        return self.g


def _on_grid(op: O.Op, q: QuantParam) -> O.Op:
    """A data movement op applied to codes on grid q: a pad's value is quantized with q."""
    return O.Pad(op.paddings, float(q.quantize(op.value))) if isinstance(op, O.Pad) else op


def quantize(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Turn each FloatKpuConv into a quantized QuantKpuLayer over ctx.ranges (a fused activation's input
    range linked by ctx.pre_activations); the graph input becomes uint8 if the options ask. With the
    calibration's ctx.moments, KPU weights are rounded with their inputs in view
    (kcc.quant.weight_rounding); `--weight-equalization turned` turns channels over
    (kcc.quant.kpu_params.equalize_weights)."""
    ctx = ctx or CompileContext()
    opts = ctx.options
    table = analyze(g, ctx.ranges, opts.effective_input_type == "uint8", ctx.moments,
                    opts.weight_equalization == "turned", ctx.pre_activations, not opts.no_quantized_binary)
    rewriter = _Rewriter(g, table)
    out = rewriter.run()
    ctx.placements.extend(rewriter.placements.values())
    return out
