"""The K210 KPU and the nncase v0.2 runtime as kcc compiles for them (kmodel_v4.md, kpu_semantics.md).

Format facts (the 64-byte line layout, the weight-load rule, the register fields ncc derives from a
layer's shapes, KPU RAM) are defined in `kcc.kmodel` and re-exported here (see `kcc.target`); the
placement limits and the cycle cost model are defined here.

**Cost model** (used by `kcc.latency` on kmodels, and through `kpu_map_cycles` / `kpu_layer_cost` by the
passes that price forms on graphs: decompose_kernels, prelu_kpu).
A KPU layer, per batch, at the KPU clock (ecosystem.md §3.3):

    cycles  = H_in x row_len(W_in) x ceil(C_in / groups(W_in)) x C_out     (depthwise: x C_out only)
    t_kpu   = (KPU_CYCLE_FACTOR x cycles + KPU_WEIGHT_CYCLES_PER_BYTE x weight bytes) / f_kpu
              + KPU_LAYER_US                                          (interrupt, layer FIFO, runtime)

row_len/groups are the 64-byte line layout (4 channels per line for W <= 16, 2 for W <= 32, else
ceil(W/64) lines per row): one KPU cycle per (input line, input-channel line group, output channel).
A stride-2 layer pays its full input resolution (the pool unit decimates afterwards).

A CPU node costs work units (elements, bytes, multiply-accumulates) x cycles per unit at the CPU
clock, plus CPU_NODE_CYCLES of interpreter dispatch. Costs come in two kinds (see `CPU_CYCLES`):
*measured* ones are taken from per-op board timings of the v0.2 runtime published in nncase issues;
*structural* ones (kernels nobody timed) are set from their loop structure relative to the measured
ones, then scaled together by STRUCTURAL_SCALE, the single factor fitted to the whole-model board
timings of slim-320 (65.6 ms) and RFB-320 (164.8 ms) (A10). `bench/latency_fit.py` redoes every
fit and prints the residuals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kcc.kmodel import (
    KPU_RAM_SIZE,
    KPU_WEIGHTS_PER_LOAD,
    MAX_WEIGHT_LOADS,
    KpuLayerArgument,
    KpuRowLayout,
    kpu_bytes,
    kpu_row_layout,
    kpu_rows,
    layer_fields,
    weight_loads,
)
from kcc.kmodel.layer import LAYER_FIELDS
from kcc.kmodel.spec import KPU_LINE_SIZE

# --------------------------------------------------------------------------- placement limits
KERNEL_SIZES = (1, 3)  # the KPU convolves 1x1 and 3x3 kernels only (kpu_semantics.md §3)
MAX_CHANNELS = 1 << LAYER_FIELDS["i_ch_num"][2]  # 10-bit channel fields: 1024 (kmodel_v4.md §9.3)
MIN_HW, MAX_H, MAX_W = 4, 256, 512  # ncc's KPU input limits (kpu_semantics.md §1)
# dma_parameter.channel_byte_num is 16 bits: out_w*out_h - 1 < 2^16
MAX_MAP_PIXELS = 1 << LAYER_FIELDS["channel_byte_num"][2]
#: general-purpose SRAM (0x80000000-0x805FFFFF): the 8 MiB minus the KPU's 2 MiB (ecosystem.md §3.1).
#: The runtime holds the kmodel file and its working memory there (kmodel_v4.md §7.1), so a model
#: needing more runs on no K210 whatever the firmware.
MAIN_MEMORY_SIZE = 6 << 20

# --------------------------------------------------------------------------- cost model
DEFAULT_MHZ = 400.0  # SDK examples: PLL0 800 MHz -> CPU 400, PLL1 400 MHz -> KPU 400 (ecosystem.md §3.1)

# --- KPU: least-squares fit to A1 (3x3 conv 128->128, 16-bit weights, 4x4..256x256 at 300 MHz), with the
# fixed part from the depthwise layers of #77/#95 whose compute is a few microseconds (bench/latency_fit.py).
KPU_CYCLE_FACTOR = 1.03
KPU_WEIGHT_CYCLES_PER_BYTE = 0.255
KPU_LAYER_US = 25.0
#: kmodel bytes of one KPU layer besides its weights (node header, layer argument, batch-norm and
#: activation tables, the activation table's 256-byte alignment), measured on kcc's kmodels: mean of
#: BlazePalm's 2110 layers of up to 32 output channels (64: ~650 B)
KPU_LAYER_BYTES = 480

CPU_NODE_CYCLES = 2000  # interpreter step, argument decoding, timing hooks (~5 us at 400 MHz)
STRUCTURAL_SCALE = 1.6  # fitted to A10 (bench/latency_fit.py), see the module docstring

#: cycles per work unit at the CPU clock: name -> (cycles, kind, where the number comes from)
CPU_CYCLES: dict[str, tuple[float, str, str]] = {
    "kpu_download_byte": (34.0, "measured", "nncase#95/#96: 26.6 ms to copy a 16x120x160 KPU output out"),
    "kpu_upload_byte": (26.0, "measured", "nncase#97: 20.4 ms for a 16x120x160 kpu_upload (W % 64 != 0)"),
    "kpu_upload_dma_byte": (0.6, "measured", "nncase#95: DMA upload of 230400 B in 329 us (W % 64 == 0)"),
    "dequantize": (12.0, "measured", "nncase#95/#96: 9.36 ms for 307200 elements"),
    "quantized_binary": (78.0, "measured", "nncase#97: 58.7 ms for 307200 same-shape elements"),
    "pad": (54.0, "measured", "A15 (nncase#99): 5-6 ms for slim-320's 1x128x16x20 pad"),
    "quantized_conv2d_mac": (33.0, "measured", "fit: RFB-320 with its 3 dilated convs on the CPU, 796.2 ms"),
    "matmul_mac": (38.0, "measured", "A5: a 1001x768 float FC on the CPU added 74 ms"),
    "quantize": (12.0, "structural", "same loop as dequantize"),
    "transpose": (50.0, "structural", "two 4-D offset computations per element, like pad"),
    "strided_slice": (50.0, "structural", "like transpose"),
    "broadcast": (170.0, "structural", "binary with broadcasting: 2 reduced offsets + 3 offsets per element"),
    "binary": (20.0, "structural", "float binary, same shapes: load, op, clamp, store"),
    "reduce": (150.0, "structural", "per input element: a reduced offset and 2 offsets"),
    "unary_libm": (150.0, "structural", "exp/log/sin/cos/rsqrt through libm"),
    "unary_simple": (20.0, "structural", "abs/neg/floor/ceil/square"),
    "table_lookup": (6.0, "structural", "one load per byte"),
    "nnil": (60.0, "structural", "a small stack-machine program per element"),
    "copy_byte": (1.0, "structural", "memcpy"),
    "concat_block": (40.0, "structural", "one memcpy call per (outer, input) block"),
    "softmax": (200.0, "structural", "max, exp, sum, divide per element"),
    "resize": (100.0, "structural", "bilinear: 4 loads and 3 lerps per output element"),
    "window_tap": (40.0, "structural", "reduce_window2d: offset + bounds per window tap"),
    "conv2d_mac": (40.0, "structural", "float conv2d: bounds + offset per tap"),
    "cpu_conv2d_mac": (20.0, "structural", "NHWC float conv: contiguous channel loop"),
    "quantized_matmul_mac": (30.0, "structural", "like quantized_conv2d"),
}


def kpu_map_cycles(in_c: int, in_h: int, in_w: int, out_c: int, depthwise: bool) -> int:
    """KPU cycles of one batch of a layer, from its map sizes (module docstring)."""
    lay = kpu_row_layout(in_w)
    lines = in_h * lay.row_len
    if depthwise:
        return lines * out_c
    return lines * math.ceil(in_c / lay.groups) * out_c


def kpu_layer_cycles(layer: KpuLayerArgument) -> int:
    """KPU cycles of one batch of a kmodel layer (module docstring)."""
    return kpu_map_cycles(layer.in_channels, layer.in_height, layer.in_width, layer.out_channels,
                          bool(layer.depth_wise_layer))


def kpu_layer_cost(cycles: float, weight_bytes: float) -> float:
    """A KPU layer's time in cycles at DEFAULT_MHZ, as kcc.latency prices it (module docstring):
    `cycles` of kpu_map_cycles over all batches, its weight loads and the per-layer overhead."""
    return KPU_CYCLE_FACTOR * cycles + KPU_WEIGHT_CYCLES_PER_BYTE * weight_bytes + KPU_LAYER_US * DEFAULT_MHZ


def layer_fits(x_shape: tuple[int, ...], oc: int, k: int, depthwise: bool = False, pool_stride: int = 1) -> bool:
    """A KPU layer from NCHW map x_shape to oc channels, kernel k, its pool keeping one pixel in
    pool_stride^2, meets the KPU's limits: channels, map size, weight loads (a depthwise layer's are
    few), and its input and output side by side in KPU RAM (legalize_kpu's checks)."""
    nb, c, h, w = x_shape
    s = pool_stride
    return (max(c, oc) <= MAX_CHANNELS and MIN_HW <= h <= MAX_H and MIN_HW <= w <= MAX_W
            and h * w <= MAX_MAP_PIXELS and (depthwise or weight_loads(oc, c, k, False)[1] + 1 <= MAX_WEIGHT_LOADS)
            and kpu_bytes(x_shape) + kpu_bytes((nb, oc, h // s, w // s)) <= KPU_RAM_SIZE)


def cpu_cycles(key: str) -> float:
    """Cycles per unit of `key`, structural costs scaled by STRUCTURAL_SCALE."""
    cycles, kind, _ = CPU_CYCLES[key]
    return cycles * (STRUCTURAL_SCALE if kind == "structural" else 1.0)


def _padded_upload_cycles(c: int, h: int, wide: int) -> float:
    """Rows of c x h padded to `wide` by one concatenation (two blocks a row), then uploaded by DMA."""
    return (2 * CPU_NODE_CYCLES + 2 * c * h * cpu_cycles("concat_block")
            + c * h * wide * (cpu_cycles("copy_byte") + cpu_cycles("kpu_upload_dma_byte")))


def dma_upload_width(shape: tuple[int, ...]) -> int | None:
    """The width W' (a multiple of 64) a batch-1 uint8 NCHW map of width W is uploaded at, or None.
    nncase's kpu_upload copies a map whose width is a multiple of 64 by DMA (0.6 cycles a byte) and
    any other row by row on the CPU (26; CPU_CYCLES). A map of one channel per 64-byte line (W > 32)
    has W''s layout in KPU RAM (ceil(W/64) lines a row, kmodel_v4.md §7.3): its rows padded to W' on
    the CPU by one concatenation (the padding any bytes of its own: a view, kcc.quant.kpu_ram.upload),
    then uploaded by DMA and read as the W-wide map, where that costs less."""
    n, c, h, w = shape
    layout = kpu_row_layout(w)
    if n != 1 or w % 64 == 0 or layout.groups != 1:
        return None
    wide = layout.row_len * KPU_LINE_SIZE
    slow = CPU_NODE_CYCLES + c * h * w * cpu_cycles("kpu_upload_byte")
    return wide if _padded_upload_cycles(c, h, wide) < slow else None


def upload_cycles(shape: tuple[int, ...]) -> float:
    """CPU cycles of uploading a uint8 NCHW map to KPU RAM as kcc emits it (`dma_upload_width`)."""
    n, c, h, w = shape
    wide = dma_upload_width(shape)
    if wide is not None:
        return _padded_upload_cycles(c, h, wide) + CPU_NODE_CYCLES
    key = "kpu_upload_dma_byte" if w % 64 == 0 else "kpu_upload_byte"
    return CPU_NODE_CYCLES + n * c * h * w * cpu_cycles(key)


@dataclass(frozen=True)
class KpuAxis:
    """A strided conv's window on the KPU's "same" conv along one axis (kcc.passes.legalize_kpu)."""

    pre: int  # rows/cols of zero pre-pad before (on the CPU)
    post: int  # after
    crop: int  # first kept row of the (pooled) KPU output
    step: int  # slice step after the layer (1 = none)
    count: int  # rows kept


def kpu_axis(size: int, pad_before: int, k: int, stride: int, out: int, pick: bool) -> KpuAxis:
    """Pre-pad and crop along one axis of a conv of kernel k, `stride`, `out` outputs from `size`
    rows with `pad_before` rows of padding, on the KPU's conv that pads k // 2: `pick`, stride 2 by
    the pool unit, which keeps rows 2i of the first floor(H/2) pairs (kmodel_v4.md §9.7)."""
    o = k // 2 - pad_before
    t = max(0, -o)
    if pick:
        t += (o + t) % 2
        first = (o + t) // 2  # index into the picked (halved) map
        need = 2 * (first + out)  # rows of KPU input so that floor(H'/2) >= first + out
        post = max(0, need - (size + t), MIN_HW - (size + t))
        return KpuAxis(t, post, first, 1, out)
    first = o + t
    need = first + stride * (out - 1) + 1
    post = max(0, need - (size + t), MIN_HW - (size + t))
    return KpuAxis(t, post, first, stride, out)


__all__ = [
    "CPU_CYCLES", "CPU_NODE_CYCLES", "DEFAULT_MHZ", "KERNEL_SIZES", "KPU_CYCLE_FACTOR", "KPU_LAYER_BYTES", "KPU_LAYER_US",
    "KPU_LINE_SIZE", "KPU_RAM_SIZE", "KPU_WEIGHT_CYCLES_PER_BYTE", "KPU_WEIGHTS_PER_LOAD", "MAIN_MEMORY_SIZE",
    "MAX_CHANNELS", "MAX_H", "MAX_MAP_PIXELS", "MAX_W", "MAX_WEIGHT_LOADS", "MIN_HW", "STRUCTURAL_SCALE",
    "KpuRowLayout", "cpu_cycles", "kpu_bytes", "kpu_layer_cycles", "kpu_row_layout", "kpu_rows",
    "kpu_layer_cost", "kpu_map_cycles", "layer_fields", "layer_fits", "weight_loads", "dma_upload_width",
    "upload_cycles", "KpuAxis", "kpu_axis",
]  # fmt: skip
