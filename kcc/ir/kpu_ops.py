"""IR ops of the K210 path: the float KPU layer used for calibration, and the quantized ops.

Float stage (after `legalize_kpu`, evaluated by `kcc.eval` for calibration):
    FloatKpuConv   one KPU layer in real numbers: "same" conv (pad k//2) + bias -> clamp -> f -> pool

Quantized stage (after `quantize`, executed bit-exactly only by kpu_sim):
    Quantize / Dequantize   f32 <-> u8 with nncase's inverted scale (kmodel_v4.md §3.4)
    QuantResidual           gain x (x - x rounded to its grid): 0 in the float stage, expanded by
                            `quantize` into quantize/dequantize/sub/quantize on the CPU
    KpuUpload               u8 NCHW main memory -> KPU RAM layout (§9.1)
    QuantKpuLayer                one kpu_conv2d: encoded conv/BN/activation/pool parameters (§9.2-9.7)
    KpuDownload             KPU RAM -> u8 NCHW main memory; emitted as the producing layer's
                            main_mem_output, never as a node of its own (§9.1: no download op)
    KpuConcat               channel concatenation in KPU RAM: each producing layer writes its channel
                            range of one buffer (kcc.emit.storage), no node of its own either
    KpuChannelView          channels [c0, c1) of a map in KPU RAM, read in place by KPU layers: an
                            address inside the map (kcc.emit.storage), no node of its own either
    QuantMatMul / QuantConv / QuantBinary
                            nncase's uint8 CPU kernels (quantized_matmul, quantized_conv2d,
                            quantized_binary: kpu_semantics.md §4.4), on codes in main memory
    QuantTable              out = table[in] on codes in main memory (table_lookup1d, kmodel_v4.md
                            §8.18): a PReLU channel on the CPU (kcc.quant.cpu_table)

Both stages:
    KpuStack                KPU layers' outputs (or CPU tensors uploaded) side by side in one KPU RAM
                            buffer, each part on its own grid, read by 1x1 KPU layers only (a residual
                            add on the KPU, kcc.passes.residual_kpu, table_stream); a float
                            concatenation, quantized as a KpuConcat
    KpuRowPatch             a map in KPU RAM with some rows of some channels written over by other
                            KPU layers, in place (kcc.passes.row_pick's row bands): no node of its own
    KpuChannelPatch         a batched map in KPU RAM whose last channels, spare in its layer, the CPU
                            overwrites with another tensor's codes, batch by batch, in place
                            (kcc.passes.residual_kpu's batched adds): no node of its own
    KpuBatchStack           equal channel groups of a map as the batches of one map in KPU RAM, each
                            on its own grid but all with one zero point, read by one KPU layer that
                            copies codes (a decomposed 5x5's batched fan, kcc.passes.kernel_forms);
                            quantized, the groups' codes concatenated, uploaded once and reshaped

Tensors produced by KpuUpload, QuantKpuLayer, KpuConcat and KpuChannelView live in KPU RAM; every other
tensor in main memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from kcc.ir.ops import NO_CLAMP, Op, _check, conv_out
from kcc.ir.types import DType, TensorType

# KPU pool unit (kmodel_v4.md §9.7): name -> (code, stride)
KPU_POOLS: dict[str, tuple[int, int]] = {
    "bypass": (0, 1), "max_2_s2": (1, 2), "mean_2_s2": (2, 2), "max_4_s4": (3, 4), "mean_4_s4": (4, 4),
    "left_top_2_s2": (5, 2), "right_top_2_s2": (6, 2), "left_top_4_s4": (7, 4), "mean_2_s1": (8, 1),
    "max_2_s1": (9, 1),
}

#: pool codes that keep values: no pool, or one pixel of each 2x2 / 4x4 block
PICK_POOLS = ("bypass", "left_top_2_s2", "right_top_2_s2", "left_top_4_s4")
MAX_POOLS = ("max_2_s2", "max_4_s4", "max_2_s1")

# Element-wise functions the 16-segment activation table can absorb: name -> has a parameter
KPU_ACTIVATIONS = {"leaky_relu": True, "logistic": False, "tanh": False, "hard_swish": False,
                   "silu": False}


@dataclass(frozen=True)
class FloatKpuConv(Op):
    """A KPU layer in real numbers. Inputs: x [N,C,H,W], w [OC, C or 1, k, k], b [OC].

    y = pool(f(clamp(conv_same(x, w) + b, act))), conv_same pads k//2 on every side with zeros
    (the KPU pads with the input zero point, i.e. real 0). `fn` is None or (name, param).
    `floor_bias`: how far a mean pool's floor lowers its output on average, in steps, where the
    input's structure fixes it (None: (k-1)/(2k) for a k-tap window, kcc.quant.quantize).
    """

    kind: ClassVar[str] = "kpu_conv2d"
    kernel: int
    depthwise: bool = False
    pool: str = "bypass"
    act: tuple[float, float] = NO_CLAMP
    fn: tuple[str, float] | None = None
    floor_bias: float | None = None

    def infer_type(self, ins):
        _check(len(ins) == 3, "kpu_conv2d takes x, w, b")
        x, w, b = ins
        _check(self.kernel in (1, 3) and self.pool in KPU_POOLS, f"kpu_conv2d kernel {self.kernel} pool {self.pool}")
        _check(self.fn is None or self.fn[0] in KPU_ACTIVATIONS, f"kpu_conv2d activation {self.fn}")
        _check(x.rank == 4 and w.shape[2:] == (self.kernel, self.kernel), f"kpu_conv2d weights {w.shape}")
        n, c, h, wd = x.shape
        oc = w.shape[0]
        if self.depthwise:
            _check(w.shape[1] == 1 and oc == c, "depthwise kpu_conv2d needs OC == C and [C,1,k,k] weights")
        else:
            _check(w.shape[1] == c, f"kpu_conv2d weights {w.shape} vs {c} input channels")
        _check(b.shape == (oc,), "kpu_conv2d bias")
        s = KPU_POOLS[self.pool][1]
        return TensorType((n, oc, h // s, wd // s), DType.float32)


@dataclass(frozen=True)
class QuantResidual(Op):
    """What rounding x to a grid loses, times `gain`: gain * (x - dequantize(quantize(x))).

    A KPU layer reads 8-bit inputs, so a float tensor computed on the CPU (a PReLU, an add) loses
    up to half a step when a KPU layer reads it; a float conv on the CPU would not. Stacked next to
    x as extra input channels whose weights are divided by `gain`, the residual gives the layer
    about log2(gain) more bits of x (kcc.passes.decompose_kernels). The grid is the one the
    consuming layer reads x on, known only after calibration: before `quantize` the value is 0 (x
    is exact in float, nothing is lost) and `quantize` expands the op with that grid.
    """

    kind: ClassVar[str] = "quant_residual"
    gain: float

    def infer_type(self, ins):
        _check(len(ins) == 1 and ins[0].dtype == DType.float32, "quant_residual takes one f32 input")
        return ins[0]


@dataclass(frozen=True)
class Quantize(Op):
    kind: ClassVar[str] = "quantize"
    zero_point: int
    scale: float  # levels per unit

    def infer_type(self, ins):
        _check(len(ins) == 1 and ins[0].dtype == DType.float32, "quantize takes one f32 input")
        return TensorType(ins[0].shape, DType.uint8)


@dataclass(frozen=True)
class Dequantize(Op):
    kind: ClassVar[str] = "dequantize"
    zero_point: int
    scale: float

    def infer_type(self, ins):
        _check(len(ins) == 1 and ins[0].dtype == DType.uint8, "dequantize takes one u8 input")
        return TensorType(ins[0].shape, DType.float32)


@dataclass(frozen=True)
class KpuUpload(Op):
    kind: ClassVar[str] = "kpu_upload"

    def infer_type(self, ins):
        _check(len(ins) == 1 and ins[0].dtype == DType.uint8 and ins[0].rank == 4, "kpu_upload takes u8 NCHW")
        return ins[0]


@dataclass(frozen=True)
class KpuDownload(Op):
    kind: ClassVar[str] = "kpu_download"

    def infer_type(self, ins):
        _check(len(ins) == 1 and ins[0].dtype == DType.uint8, "kpu_download takes u8")
        return ins[0]


@dataclass(frozen=True, eq=False)
class QuantKpuLayer(Op):
    """One quantized kpu_conv2d with every encoded parameter (kpu_semantics.md §3, §4.3).

    `weights` u8 [OC][C or 1][k][k]; `bn` int64 [OC, 3] = (mul, shift, add); `act` the 16 segments
    as int64 [16, 4] = (x_start, mul, shift, bias). `out_q` is the output (zero_point, scale),
    kept for printing and for the Dequantize that may follow.
    """

    kind: ClassVar[str] = "kpu_layer"
    kernel: int
    depthwise: bool
    pool: str
    pad_value: int
    arg_x: int
    arg_w: int
    arg_add: int
    weights: np.ndarray
    bn: np.ndarray
    act_table: np.ndarray
    out_q: tuple[int, float]
    batches: int = 1

    def infer_type(self, ins):
        _check(len(ins) == 1 and ins[0].dtype == DType.uint8 and ins[0].rank == 4, "kpu_layer takes u8 NCHW")
        n, c, h, w = ins[0].shape
        oc = self.weights.shape[0]
        _check(self.bn.shape == (oc, 3) and self.act_table.shape == (16, 4), "kpu_layer tables")
        _check(self.weights.shape[1] == (1 if self.depthwise else c), "kpu_layer weights vs input channels")
        s = KPU_POOLS[self.pool][1]
        return TensorType((n, oc, h // s, w // s), DType.uint8)

    def attrs(self):
        return {"k": self.kernel, "dw": self.depthwise, "pool": self.pool, "out_q": self.out_q}


def _side_by_side(ins, dtype: DType, kind: str, least: int) -> TensorType:
    """The type of at least `least` batch-1 NCHW maps of one H x W and `dtype`, side by side along
    channels (KpuConcat, KpuStack)."""
    _check(len(ins) >= least and all(t.dtype == dtype and t.rank == 4 for t in ins),
           f"{kind} takes {dtype.value} NCHW maps")
    _, _, h, w = ins[0].shape
    _check(all(t.shape[0] == 1 and t.shape[2:] == (h, w) for t in ins),
           f"{kind} parts {[t.shape for t in ins]}: batch 1 and one H x W")
    return TensorType((1, sum(t.shape[1] for t in ins), h, w), dtype)


@dataclass(frozen=True)
class KpuConcat(Op):
    """Channel concatenation of KPU layers' outputs, computed in place: one KPU RAM buffer whose
    channel ranges the producing layers write (kmodel_v4.md §7.3: channel c of a map starts at
    (c // groups) * row_len * H lines + (c % groups) * row_pitch, so a part whose first channel is a
    multiple of `groups` starts on a line of its own). A part may also be a KpuUpload of a CPU
    result on the buffer's grid: the upload writes only its rows' valid bytes (kpu_semantics.md §2),
    into its range. Batch 1 only: a batch is one whole map.

    `gap` (rows, columns): the buffer is laid out as a map that many rows and columns larger, which
    nothing writes: each part then holds one line group of channels (its own layout is the buffer's,
    but for the gap). Its one reader, a pick layer, never picks them (kcc.passes.gap_pick)."""

    kind: ClassVar[str] = "kpu_concat"
    gap: tuple[int, int] = (0, 0)

    def infer_type(self, ins):
        t = _side_by_side(ins, DType.uint8, self.kind, 1)
        n, c, h, w = t.shape
        return TensorType((n, c, h + self.gap[0], w + self.gap[1]), t.dtype)



@dataclass(frozen=True)
class KpuChannelView(Op):
    """Channels [c0, c1) of a map in KPU RAM, read in place: a KPU layer reading the view reads its
    own (c1 - c0)-channel map at the line where channel c0 starts (kmodel_v4.md §7.3: channel c of a
    map starts at (c // groups) * row_len * H lines + (c % groups) * row_pitch, and the channels
    from a multiple of `groups` on are laid out as a map of their own). So c0 must be a multiple of
    the channels one line holds at the map's width (kcc.kmodel.kpu_channel_offset; checked where
    views are made, kcc.quant.quantize, and where they are placed, kcc.emit.storage). The source
    stays alive until its last view is read (its buffer's lifetime counts the views' readers).
    Batch 1 only: a layer with N batches would step by its own map's lines, not the source's.
    `rows` (r0, r1): rows r0..r1-1 of one channel only, of a map with one channel per line group
    (its rows are consecutive lines, kmodel_v4.md §7.3): a one-channel map of its own from the line
    where row r0 starts (kcc.passes.row_bands crops a layer's rows this way). `width`: the map read
    at that narrower width, whose rows take as many lines (an upload padded to a multiple of 64 for
    DMA, kcc.target.k210.dma_upload_width; checked where placed, kcc.emit.storage)."""

    kind: ClassVar[str] = "kpu_channel_view"
    c0: int
    c1: int
    rows: tuple[int, int] | None = None
    width: int | None = None

    def infer_type(self, ins):
        _check(len(ins) == 1 and ins[0].dtype == DType.uint8 and ins[0].rank == 4,
               "kpu_channel_view takes one u8 NCHW map")
        n, c, h, w = ins[0].shape
        _check(n == 1 and 0 <= self.c0 < self.c1 <= c,
               f"kpu_channel_view channels {self.c0}..{self.c1} of {ins[0].shape}: batch 1, a range inside")
        if self.rows is not None:
            r0, r1 = self.rows
            _check(self.c1 - self.c0 == 1 and 0 <= r0 < r1 <= h, f"kpu_channel_view rows {self.rows} of {ins[0].shape}")
            return TensorType((1, 1, r1 - r0, w), DType.uint8)
        _check(self.width is None or 0 < self.width <= w, f"kpu_channel_view width {self.width} of {ins[0].shape}")
        return TensorType((1, self.c1 - self.c0, h, self.width or w), DType.uint8)

    def attrs(self):
        return {"channels": (self.c0, self.c1), **({"rows": self.rows} if self.rows is not None else {}),
                **({"width": self.width} if self.width is not None else {})}


@dataclass(frozen=True)
class KpuStack(Op):
    """Channels of KPU layers side by side, in float (a concatenation along channels) for the 1x1
    KPU layers that alone read them. Unlike a Concat, each part keeps its own grid once quantized:
    a layer reads the buffer with one input offset and absorbs each part's zero point and scale
    in its bias and weights (kcc.quant.kpu_params.stacked_weights); 1x1 only, so no padding ever
    meets two zero points. Quantized, it is a KpuConcat (the parts write their channel ranges). A
    part may also be a tensor of the CPU on a grid of its own, uploaded into its range
    (kcc.passes.table_stream's skip groups)."""

    kind: ClassVar[str] = "kpu_stack"

    def infer_type(self, ins):
        return _side_by_side(ins, DType.float32, self.kind, 2)


@dataclass(frozen=True)
class KpuBatchStack(Op):
    """G batch-1 maps [1, g, H, W] as the G batches of one map [G, g, H, W] in KPU RAM (in float: a
    concatenation along batches). Each part keeps its own grid once quantized, and all of them share
    one zero point (kcc.quant.policy.share_batch_zero_points), so that the one KPU layer reading it,
    which copies codes (a fan of shifted copies: its pad value is the zero point, and its parameters
    are the same for any scale with one zero point, kcc.quant.kpu_params), serves every batch; the
    readers of its batch j (channel views of it reshaped to batch 1, `batch_part`) read part j's grid.
    g must be a multiple of the channels one 64-byte line holds at width W, so that the batches lie
    as a batch-1 map of G x g channels would (kmodel_v4.md §7.3): quantized, the parts' codes are
    concatenated along channels on the CPU, uploaded once and read as [G, g, H, W]."""

    kind: ClassVar[str] = "kpu_batch_stack"

    def infer_type(self, ins):
        t = _side_by_side(ins, DType.float32, self.kind, 2)
        g = ins[0].shape[1]
        _check(all(i.shape[1] == g for i in ins), f"{self.kind} parts {[i.shape for i in ins]}: equal groups")
        return TensorType((len(ins), g, *t.shape[2:]), DType.float32)


@dataclass(frozen=True)
class KpuChannelPatch(Op):
    """Map x [N, C, H, W] whose channels c0..C-1 (spare: the layer making x writes them with zero
    weights) are written over by s [N, C - c0, H, W], batch by batch, after x's layer ran: in float
    [x[:, :c0]; s]. A KPU layer writes batch b of its output at b times its own map's size (nncase's
    kpu_conv2d), so two layers cannot fill the channels of one batch side by side; the CPU's uploads
    can, each at the line where channel c0 of its batch starts (kcc.emit.storage). Read by one 1x1
    KPU layer only, as a stack: x's channels on x's grid, s's on s's (kcc.quant.kpu_params.
    stacked_weights). Quantized, the inputs are x's layer and one upload per batch."""

    kind: ClassVar[str] = "kpu_channel_patch"
    c0: int

    def infer_type(self, ins):
        x, parts = ins[0], ins[1:]
        _check(x.rank == 4 and 0 < self.c0 < x.shape[1] and len(parts) in (1, x.shape[0]),
               "kpu_channel_patch takes a map and one tensor, or one per batch")
        n, c, h, w = x.shape
        want = (n, c - self.c0, h, w) if len(parts) == 1 else (1, c - self.c0, h, w)
        for t in parts:
            _check(t.rank == 4 and t.shape == want, f"kpu_channel_patch part {t.shape}, want {want}")
        return x

    def attrs(self):
        return {"c0": self.c0}


@dataclass(frozen=True)
class KpuRowPatch(Op):
    """Map x [1, C, H, W] with one channel per line group (W > 32: channel c's H rows are row_len*H
    consecutive lines of KPU RAM, kmodel_v4.md §7.3), some of whose rows are written over: part k, a
    one-channel map [1, 1, R, W] of a KPU layer, replaces rows starts[k] .. starts[k] + R - 1 of x
    counted over all its channels in memory order (row r of channel c is row c*H + r), which may run
    from one channel into the next. The parts' layers write straight into x's buffer after x's own
    layer ran (kcc.emit.storage). Inputs: x, then the parts; float or uint8 (one grid)."""

    kind: ClassVar[str] = "kpu_row_patch"
    starts: tuple[int, ...]

    def infer_type(self, ins):
        x, parts = ins[0], ins[1:]
        _check(x.rank == 4 and x.shape[0] == 1 and len(parts) == len(self.starts) > 0,
               "kpu_row_patch takes a batch-1 map and one part per start row")
        _, c, h, w = x.shape
        for t, r in zip(parts, self.starts):
            _check(t.dtype == x.dtype and t.rank == 4 and t.shape[:2] == (1, 1) and t.shape[3] == w
                   and 0 <= r and r + t.shape[2] <= c * h, f"kpu_row_patch part {t.shape} at row {r} of {x.shape}")
        return x

    def attrs(self):
        return {"starts": self.starts}


@dataclass(frozen=True, eq=False)
class QuantMatMul(Op):
    """A uint8 matmul on the CPU, nncase's quantized_matmul (kmodel_v4.md §8.16, kpu_semantics.md §4.4):

        out[r][c] = clamp(carry_half_up((bias[c] + sum_k (a[r][k] + a_offset) * (b[k][c] + b_offset))
                          * mul, shift) + out_offset, 0, 255)

    Inputs: a u8 [M, K] (main memory), b u8 [K, N] (a constant: the weights on their grid).
    `bias` int32 [N]; `out_q` the output (zero_point, scale), for the Dequantize that may follow.
    """

    kind: ClassVar[str] = "quantized_matmul"
    a_offset: int
    b_offset: int
    bias: np.ndarray
    mul: int
    shift: int
    out_q: tuple[int, float]

    def infer_type(self, ins):
        _check(len(ins) == 2 and all(t.dtype == DType.uint8 and t.rank == 2 for t in ins),
               "quantized_matmul takes u8 [M,K] and [K,N]")
        a, b = ins
        _check(a.shape[1] == b.shape[0] and self.bias.shape == (b.shape[1],), "quantized_matmul shapes")
        return TensorType((a.shape[0], b.shape[1]), DType.uint8)

    def attrs(self):
        return {"a_offset": self.a_offset, "b_offset": self.b_offset, "mul": self.mul, "shift": self.shift,
                "out_q": self.out_q}


@dataclass(frozen=True)
class QuantTable(Op):
    """out[i] = table[in[i]], nncase's table_lookup1d (kmodel_v4.md §8.18; the runtime knows it since
    v0.2.0-beta3). Inputs: u8 codes of any shape, the table a u8 constant of 256 entries."""

    kind: ClassVar[str] = "table_lookup1d"

    def infer_type(self, ins):
        _check(len(ins) == 2 and all(t.dtype == DType.uint8 for t in ins) and ins[1].shape == (256,),
               "table_lookup1d takes u8 codes and a 256-entry u8 table")
        return TensorType(ins[0].shape, DType.uint8)


@dataclass(frozen=True, eq=False)
class QuantBinary(Op):
    """A binary op on uint8 codes on the CPU, nncase's quantized_binary (kmodel_v4.md §8.17):

        a' = mcs(a + a[0], a[1], a[2]),  b' likewise,
        out = clamp(mcs(op(a', b'), out[1], out[2]) + out[0], 0, 255)

    with mcs(v, mul, shift) = (v * mul + 2^(shift-1)) >> shift on int64, truncated to int32; each
    triple is (offset, mul, shift). Inputs u8 of broadcastable shapes (kcc.quant.cpu_binary)."""

    kind: ClassVar[str] = "quantized_binary"
    op: str
    a: tuple[int, int, int]
    b: tuple[int, int, int]
    out: tuple[int, int, int]
    out_q: tuple[int, float]

    def infer_type(self, ins):
        _check(len(ins) == 2 and all(t.dtype == DType.uint8 and t.rank == 4 for t in ins),
               "quantized_binary takes two u8 4-D tensors")
        _check(self.op in ("add", "sub", "mul", "min", "max"), f"quantized_binary op {self.op}")
        return TensorType(tuple(int(d) for d in np.broadcast_shapes(ins[0].shape, ins[1].shape)), DType.uint8)

    def attrs(self):
        return {"op": self.op, "a": self.a, "b": self.b, "out": self.out, "out_q": self.out_q}


@dataclass(frozen=True, eq=False)
class QuantConv(Op):
    """A uint8 conv on the CPU, nncase's quantized_conv2d (kmodel_v4.md §8.15, kpu_semantics.md §4.4),
    over output channels [o0, o1) of a conv the KPU does not take (kcc.quant.cpu_conv):

        out[o] = clamp(carry_half_up((bias[o] + sum (x + in_offset) * (w + w_offset)) * mul, shift)
                       + out_offset, 0, 255)

    Input: x u8 NCHW (main memory), the conv's whole input; a depthwise conv reads its channels
    [o0, o1) only (the emitter narrows the range: NCHW channels are contiguous). Weights: the
    group's uint8 codes [o1 - o0, C / groups, KH, KW], inlined into the body."""

    kind: ClassVar[str] = "quantized_conv2d"
    o0: int
    o1: int
    depthwise: bool
    stride: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    in_offset: int
    w_offset: int
    bias: np.ndarray
    mul: int
    shift: int
    out_q: tuple[int, float]

    def infer_type(self, ins):
        _check(len(ins) == 2 and all(t.dtype == DType.uint8 and t.rank == 4 for t in ins),
               "quantized_conv2d takes u8 NCHW x and u8 weights")
        x, w = ins
        oc = self.o1 - self.o0
        icg = 1 if self.depthwise else x.shape[1]
        _check(0 <= self.o0 < self.o1 and w.shape[:2] == (oc, icg) and self.bias.shape == (oc,),
               f"quantized_conv2d weights {w.shape} vs channels {self.o0}..{self.o1 - 1}")
        _check(not self.depthwise or self.o1 <= x.shape[1], "quantized_conv2d channels past its input")
        n, _, h, wd = x.shape
        oh = conv_out(h, self.padding[0], w.shape[2], self.stride[0], self.dilation[0])
        ow = conv_out(wd, self.padding[1], w.shape[3], self.stride[1], self.dilation[1])
        return TensorType((n, oc, oh, ow), DType.uint8)

    def attrs(self):
        return {"channels": (self.o0, self.o1), "depthwise": self.depthwise, "stride": self.stride,
                "padding": self.padding, "in_offset": self.in_offset, "w_offset": self.w_offset,
                "mul": self.mul, "shift": self.shift, "out_q": self.out_q}


KPU_SPACE_OPS = (KpuUpload, QuantKpuLayer, KpuConcat, KpuChannelView)  # ops whose output lives in KPU RAM
