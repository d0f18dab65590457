"""Estimated K210 latency of a kmodel v4, node by node, before anything is flashed.

Users learn that a model is slow on the board (ecosystem.md §2 P4, §4.1); this module predicts it from
the kmodel alone, so it applies to ncc's files as well as kcc's (`kcc info --estimate`) and to every
compile (`kcc compile` summary, `--report`). Each node costs what the nncase v0.2 runtime does with
it on the board:

**KPU layer** (kpu_conv2d), per batch, at the KPU clock (ecosystem.md §3.3):

    cycles  = H_in x row_len(W_in) x ceil(C_in / groups(W_in)) x C_out     (depthwise: x C_out only)
    t_kpu   = (KPU_CYCLE_FACTOR x cycles + KPU_WEIGHT_CYCLES_PER_BYTE x weight bytes) / f_kpu
              + KPU_LAYER_US                                          (interrupt, layer FIFO, runtime)

row_len/groups are the 64-byte line layout (4 channels per line for W <= 16, 2 for W <= 32, else
ceil(W/64) lines per row): one KPU cycle per (input line, input-channel line group, output channel).
A stride-2 layer pays its full input resolution (the pool unit decimates afterwards). A layer with a
main-memory output is then copied out by the CPU (`kpu_download`, a byte loop over KPU RAM).

**CPU node**: work units (elements, bytes, multiply-accumulates) x cycles per unit at the CPU clock,
plus CPU_NODE_CYCLES of interpreter dispatch. Costs come in two kinds (see `CPU_CYCLES`):
*measured* ones are taken from per-op board timings of the v0.2 runtime published in nncase issues;
*structural* ones (kernels nobody timed) are set from their loop structure relative to the measured
ones, then scaled together by STRUCTURAL_SCALE, the single factor fitted to the whole-model board
timings of slim-320 (65.6 ms) and RFB-320 (164.8 ms) (A10). `bench/latency_fit.py` redoes every
fit and prints the residuals.

The model ignores caches, DMA/CPU overlap and 1x1-vs-3x3 differences inside the KPU (§6 open
questions); expect +-25% on a whole model, more on a single node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from kcc import kmodel as km

DEFAULT_MHZ = 400.0  # SDK examples: PLL0 800 MHz -> CPU 400, PLL1 400 MHz -> KPU 400 (ecosystem.md §3.1)

# --- KPU: least-squares fit to A1 (3x3 conv 128->128, 16-bit weights, 4x4..256x256 at 300 MHz), with the
# fixed part from the depthwise layers of #77/#95 whose compute is a few microseconds (bench/latency_fit.py).
KPU_CYCLE_FACTOR = 1.03
KPU_WEIGHT_CYCLES_PER_BYTE = 0.255
KPU_LAYER_US = 25.0

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

Work = list[tuple[str, float]]  # (CPU_CYCLES key, units)


def kpu_layer_cycles(layer: km.KpuLayerArgument) -> int:
    """KPU cycles of one batch of a layer (module docstring)."""
    lay = km.kpu_row_layout(layer.in_width)
    lines = layer.in_height * lay.row_len
    if layer.depth_wise_layer:
        return lines * layer.out_channels
    return lines * math.ceil(layer.in_channels / lay.groups) * layer.out_channels


def _elements(r: km.MemoryRange) -> int:
    return r.count


def _mac(out: km.MemoryRange, fh: int, fw: int, in_c: int, groups: int) -> float:
    return out.count * fh * fw * in_c / max(groups, 1)


def _binary(b: Any, flat: str) -> Work:
    n = b.out_shape.count
    work: Work = [(flat, n)]
    if tuple(b.in_a_shape) != tuple(b.in_b_shape):
        work.append(("broadcast", n))
    return work


def _unary(b: km.Unary) -> Work:
    simple = {km.UnaryOp.ABS, km.UnaryOp.NEG, km.UnaryOp.FLOOR, km.UnaryOp.CEIL, km.UnaryOp.SQUARE}
    return [("unary_simple" if b.unary_op in simple else "unary_libm", b.input.count)]


def _upload(b: km.KpuUpload) -> Work:
    dma = b.in_shape[3] % 64 == 0
    return [("kpu_upload_dma_byte" if dma else "kpu_upload_byte", b.input.size)]


def _window(b: km.ReduceWindow2D) -> Work:
    return [("window_tap", b.output.count * b.filter_h * b.filter_w)]


_WORK: dict[type, Callable[[Any], Work]] = {
    km.Binary: lambda b: _binary(b, "binary"),
    km.QuantizedBinary: lambda b: _binary(b, "quantized_binary"),
    km.Concat: lambda b: [("copy_byte", b.output.size), ("concat_block", b.outer_size * len(b.inputs))],
    km.Conv2D: lambda b: [("conv2d_mac", _mac(b.output, b.filter_h, b.filter_w, b.in_shape[1], b.groups))],
    km.QuantizedConv2D: lambda b: [("quantized_conv2d_mac",
                                    _mac(b.output, b.filter_h, b.filter_w, b.in_shape[1], b.groups))],
    km.CpuConv2D: lambda b: [("cpu_conv2d_mac", _mac(b.output, b.filter_h, b.filter_w, b.in_shape[3], 1))],
    km.CpuDepthwiseConv2D: lambda b: [("cpu_conv2d_mac", _mac(b.output, b.filter_h, b.filter_w, 1, 1))],
    km.CpuQuantizedConv2D: lambda b: [("quantized_conv2d_mac",
                                       _mac(b.output, b.filter_h, b.filter_w, b.in_shape[3], 1))],
    km.CpuQuantizedDepthwiseConv2D: lambda b: [("quantized_conv2d_mac", _mac(b.output, b.filter_h, b.filter_w, 1, 1))],
    km.Conv2DTranspose: lambda b: [("conv2d_mac", _mac(b.input, b.filter_h, b.filter_w, b.out_shape[1], b.groups))],
    km.Dequantize: lambda b: [("dequantize", b.input.count)],
    km.Quantize: lambda b: [("quantize", b.input.count)],
    km.MatMul: lambda b: [("matmul_mac", b.a_rows * b.a_cols * b.b_cols)],
    km.QuantizedMatMul: lambda b: [("quantized_matmul_mac", b.a_rows * b.a_cols * b.b_cols)],
    km.Pad: lambda b: [("pad", b.output.count)],
    km.Reduce: lambda b: [("reduce", b.input.count)],
    km.ReduceWindow2D: _window,
    km.CpuReduceWindow2D: _window,
    km.MemoryCopy: lambda b: [("copy_byte", b.input.size)],
    km.ResizeImage: lambda b: [("resize", b.output.count)],
    km.Softmax: lambda b: [("softmax", b.input.count)],
    km.Transpose: lambda b: [("transpose", b.input.count)],
    km.StridedSlice: lambda b: [("strided_slice", b.output.count)],
    km.Unary: _unary,
    km.TableLookup1D: lambda b: [("table_lookup", b.input.size)],
    km.NnilUnaryMethod: lambda b: [("nnil", b.input.count)],
    km.KpuUpload: _upload,
}


def cpu_cycles(key: str) -> float:
    """Cycles per unit of `key`, structural costs scaled by STRUCTURAL_SCALE."""
    cycles, kind, _ = CPU_CYCLES[key]
    return cycles * (STRUCTURAL_SCALE if kind == "structural" else 1.0)


@dataclass(frozen=True)
class NodeEstimate:
    """One kmodel node: time on the KPU (kpu_conv2d only) and on the CPU, in ms."""

    index: int
    opcode: str
    kpu_ms: float
    cpu_ms: float
    work: str  # what was counted, for people

    @property
    def ms(self) -> float:
        return self.kpu_ms + self.cpu_ms

    @property
    def unit(self) -> str:
        return "KPU" if self.opcode == "kpu_conv2d" else "CPU"


@dataclass(frozen=True)
class LatencyEstimate:
    nodes: tuple[NodeEstimate, ...]
    kpu_mhz: float
    cpu_mhz: float

    @property
    def total_ms(self) -> float:
        return sum(n.ms for n in self.nodes)

    @property
    def kpu_ms(self) -> float:
        return sum(n.kpu_ms for n in self.nodes)

    @property
    def cpu_ms(self) -> float:
        return sum(n.cpu_ms for n in self.nodes)

    def summary(self) -> str:
        """One line: total, KPU/CPU split, clocks."""
        return (f"Estimated K210 latency: {self.total_ms:.1f} ms (KPU {self.kpu_ms:.1f} ms, CPU {self.cpu_ms:.1f} ms; "
                f"KPU {self.kpu_mhz:g} MHz, CPU {self.cpu_mhz:g} MHz; first-order model, +-25%)")

    def by_opcode(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in self.nodes:
            out[n.opcode] = out.get(n.opcode, 0.0) + n.ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def table_lines(self, names: list[str] | None = None, top: int | None = None) -> list[str]:
        """Per-node table, slowest first when `top` is given (then only `top` rows)."""
        rows = sorted(self.nodes, key=lambda n: -n.ms)[:top] if top else list(self.nodes)
        total = self.total_ms or 1.0
        out = [f"  {'node':>4}  {'unit':4}  {'opcode':<18} {'ms':>8} {'%':>5}  work" + ("  name" if names else "")]
        for n in rows:
            name = f"  {names[n.index]}" if names and n.index < len(names) else ""
            out.append(f"  {n.index:>4}  {n.unit:4}  {n.opcode:<18} {n.ms:8.3f} {100 * n.ms / total:5.1f}  {n.work}{name}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"total_ms": round(self.total_ms, 3), "kpu_ms": round(self.kpu_ms, 3), "cpu_ms": round(self.cpu_ms, 3),
                "kpu_mhz": self.kpu_mhz, "cpu_mhz": self.cpu_mhz,
                "nodes": [{"index": n.index, "opcode": n.opcode, "unit": n.unit, "ms": round(n.ms, 4),
                           "kpu_ms": round(n.kpu_ms, 4), "cpu_ms": round(n.cpu_ms, 4), "work": n.work}
                          for n in self.nodes]}


def _kpu_node(i: int, body: km.KpuConv2D, kpu_mhz: float, cpu_mhz: float) -> NodeEstimate:
    cycles = kpu_layer_cycles(body.layer) * body.batches
    weights = body.weights.size
    kpu_ms = (KPU_CYCLE_FACTOR * cycles + KPU_WEIGHT_CYCLES_PER_BYTE * weights * body.batches) / (kpu_mhz * 1e3)
    kpu_ms += KPU_LAYER_US / 1e3
    work = f"{cycles / 1e3:.0f}k KPU cycles, {weights} B weights"
    cpu_ms = CPU_NODE_CYCLES / (cpu_mhz * 1e3)
    if body.main_mem_output.size:
        cpu_ms += body.main_mem_output.size * cpu_cycles("kpu_download_byte") / (cpu_mhz * 1e3)
        work += f", {body.main_mem_output.size} B copied out"
    return NodeEstimate(i, "kpu_conv2d", kpu_ms, cpu_ms, work)


def _cpu_node(i: int, node: km.Node, cpu_mhz: float) -> NodeEstimate:
    fn = _WORK.get(type(node.body))
    work = fn(node.body) if fn is not None else []
    cycles = CPU_NODE_CYCLES + sum(cpu_cycles(key) * units for key, units in work)
    text = ", ".join(f"{units:.0f} {key.replace('_', ' ')}" for key, units in work) or "not modelled"
    return NodeEstimate(i, node.name, 0.0, cycles / (cpu_mhz * 1e3), text)


def estimate(model: km.KModel | bytes, kpu_mhz: float = DEFAULT_MHZ, cpu_mhz: float = DEFAULT_MHZ) -> LatencyEstimate:
    """Per-node latency estimate of a kmodel v4 (a `KModel` or its bytes) at the given clocks."""
    if not (kpu_mhz > 0 and cpu_mhz > 0):
        raise ValueError("clock frequencies must be positive")
    if isinstance(model, (bytes, bytearray, memoryview)):
        model = km.read(bytes(model))
    nodes = []
    for i, node in enumerate(model.nodes):
        if isinstance(node.body, km.KpuConv2D):
            nodes.append(_kpu_node(i, node.body, kpu_mhz, cpu_mhz))
        else:
            nodes.append(_cpu_node(i, node, cpu_mhz))
    return LatencyEstimate(tuple(nodes), kpu_mhz, cpu_mhz)
