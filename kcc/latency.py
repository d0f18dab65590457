"""Estimated K210 latency of a kmodel v4, node by node, before anything is flashed.

Users learn that a model is slow on the board (ecosystem.md §2 P4, §4.1); this module predicts it from
the kmodel alone, so it applies to ncc's files as well as kcc's (`kcc info --estimate`) and to every
compile (`kcc compile` summary, `--report`). Each node costs what the nncase v0.2 runtime does with
it on the board:

**KPU layer** (kpu_conv2d): `kcc.target.k210.kpu_layer_cycles` per batch at the KPU clock, plus its
weight bytes and a fixed cost per run (a batched layer runs once a batch); a layer with a main-memory output is then copied out by the
CPU (`kpu_download`, a byte loop over KPU RAM).

**CPU node**: work units (elements, bytes, multiply-accumulates) x `kcc.target.k210.cpu_cycles` per
unit at the CPU clock, plus CPU_NODE_CYCLES of interpreter dispatch. The formulas, the constants and
where each comes from are in `kcc.target.k210`; this module counts each kmodel node's work (`_WORK`).
`bench/latency_fit.py` redoes every fit and prints the residuals.

The model ignores caches, DMA/CPU overlap and 1x1-vs-3x3 differences inside the KPU (§6 open
questions); expect +-25% on a whole model, more on a single node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kcc import kmodel as km
from kcc.target.k210 import (
    CPU_NODE_CYCLES,
    DEFAULT_MHZ,
    KPU_CYCLE_FACTOR,
    KPU_LAYER_US,
    KPU_WEIGHT_CYCLES_PER_BYTE,
    cpu_cycles,
    kpu_layer_cycles,
)

Work = list[tuple[str, float]]  # (CPU_CYCLES key, units)


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
    # the runtime runs a batched layer once a batch, each run with its own interrupt, register FIFO and
    # table loads (nncase v0.2 k210_ops.cpp `kpu_conv2d`: kpu_conv2d_normal and a wait per batch)
    kpu_ms += KPU_LAYER_US / 1e3 * body.batches
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
