"""Per-layer quantization error: what each KPU layer computes on the board vs in float.

ncc v0.2 users compare whole-model outputs by hand (ecosystem.md §2 P5, §4.5); this finds *which*
layer loses the accuracy. For every calibration sample:

* the float reference is the legalized float graph (`CompileResult.float_graph`, the graph that was
  calibrated) run by kcc's float evaluator; each `FloatKpuConv` node's output is recorded;
* the board value is the compiled kmodel run by `kpu_sim` (bit-exact with the K210): the trace hook
  sees every `kpu_conv2d` node's KPU-RAM output, `kpu_offsets` turns that layout back into NCHW, and
  the layer's output quantization `out_q = (zero_point, scale)` dequantizes it, x = (q - z) / scale.

A layer holding a rounding residual (or a copy of one) is left out: it is 0 in float by construction
(`residual_layers`). Nodes are matched by name (`Emitted.node_names`: kmodel node index -> IR node name; a KPU layer keeps
the name of the float layer it was quantized from). Errors accumulate through the network, as on the
board: layer k sees the quantized output of layer k-1, so a layer's numbers include upstream error.

Per layer, over all samples: cosine similarity and SQNR = 10 log10(sum f^2 / sum (f - q)^2) dB, also
over the values inside the layer's output range only. Layers are ranked by one figure, `ranked_sqnr_db`
(the report's summary, table and plot all use it): the SQNR over all values, except for a layer whose
range clips on purpose (`deliberate_clipping`: softmax logits, kcc.quant.logits; l2-clipped ReLU
outputs, kcc.quant.policy), which is ranked by its rounding, the SQNR in range, with the clipped
share beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

import kpu_sim
from kcc import kmodel as km
from kcc.eval import interpreter
from kcc.ir import kpu_ops as KO
from kcc.ir.code_moves import moves_codes
from kcc.ir.graph import Graph
from kcc.quant.logits import softmax_logits
from kcc.quant.policy import _relu_clamped, output_sources

#: at most this many samples (the first ones, in the dataset's sorted order) are compared
MAX_SAMPLES = 100


@dataclass
class LayerError:
    """Running sums of one KPU layer over the samples, and the metrics derived from them."""

    name: str
    index: int  # kmodel node index
    shape: tuple[int, ...]
    ff: float = 0.0
    qq: float = 0.0
    fq: float = 0.0
    ee: float = 0.0
    max_abs: float = 0.0
    clipped: int = 0  # float values outside the range the layer's uint8 output can represent
    count: int = 0
    ff_in: float = 0.0  # signal and error power over the values the range holds
    ee_in: float = 0.0
    clipping: str = ""  # why the layer's range clips on purpose ('softmax logits'), "" if it should not

    def add(self, f: np.ndarray, q: np.ndarray, lo: float = -np.inf, hi: float = np.inf) -> None:
        """Accumulate one sample: float reference `f`, dequantized board value `q`, output range [lo, hi]."""
        f64, q64 = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
        inside = (f64 >= lo) & (f64 <= hi)
        self.clipped += int(f64.size - np.count_nonzero(inside))
        self.count += f64.size
        e = f64 - q64
        self.ff_in += float(f64[inside] @ f64[inside])
        self.ee_in += float(e[inside] @ e[inside])
        self.ff += float(f64 @ f64)
        self.qq += float(q64 @ q64)
        self.fq += float(f64 @ q64)
        self.ee += float(e @ e)
        self.max_abs = max(self.max_abs, float(np.abs(e).max(initial=0.0)))

    @property
    def cosine(self) -> float:
        if self.ff == 0.0 and self.qq == 0.0:
            return 1.0
        return self.fq / max(np.sqrt(self.ff * self.qq), 1e-300)

    @property
    def clipped_fraction(self) -> float:
        """Share of float values the calibrated range cuts off (l2 clipping, softmax-logit ranges)."""
        return self.clipped / max(self.count, 1)

    @property
    def sqnr_db(self) -> float:
        if self.ee == 0.0:
            return float("inf")
        return float(10 * np.log10(max(self.ff, 1e-300) / self.ee))

    @property
    def sqnr_in_range_db(self) -> float:
        """SQNR over the values the output range holds: what the layer's rounding costs, apart from
        what its range clips (on purpose for softmax logits, where only the largest matter)."""
        if self.ee_in == 0.0:
            return float("inf")
        return float(10 * np.log10(max(self.ff_in, 1e-300) / self.ee_in))

    @property
    def ranked_sqnr_db(self) -> float:
        """The figure layers are ranked by: the SQNR in range where the range clips on purpose (what
        is clipped there does not matter), else over all values (clipping then is an error too)."""
        return self.sqnr_in_range_db if self.clipping else self.sqnr_db

    def to_json(self) -> dict:
        sqnr, inside, ranked = self.sqnr_db, self.sqnr_in_range_db, self.ranked_sqnr_db
        return {"name": self.name, "node": self.index, "shape": list(self.shape), "cosine": round(self.cosine, 6),
                "sqnr_db": None if np.isinf(sqnr) else round(sqnr, 2),
                "sqnr_in_range_db": None if np.isinf(inside) else round(inside, 2),
                "ranked_sqnr_db": None if np.isinf(ranked) else round(ranked, 2),
                "max_abs_error": round(self.max_abs, 6),
                "clipped_fraction": round(self.clipped_fraction, 6), "clipped_on_purpose": self.clipping}


@dataclass
class QuantErrorReport:
    layers: list[LayerError] = field(default_factory=list)  # worst (lowest ranked_sqnr_db) first
    samples: int = 0
    total_samples: int = 0

    def to_json(self) -> dict:
        return {"samples": self.samples, "total_samples": self.total_samples,
                "layers": [layer.to_json() for layer in self.layers]}


def _kpu_nchw(raw: np.ndarray, body: km.FloatKpuConv) -> np.ndarray:
    """The uint8 NCHW output map of a kpu_conv2d from the bytes of its KPU-RAM range."""
    lay = body.layer
    shape = (body.batches, lay.out_channels, lay.out_height, lay.out_width)
    return raw[km.kpu_offsets(shape)]


def deliberate_clipping(float_graph: Graph, method: str = "no_clip") -> dict[str, str]:
    """KPU layer name -> why its calibrated range clips on purpose: logits feeding a softmax keep the
    top LOGIT_SPAN only (kcc.quant.logits, both methods); with `l2`, ReLU-clamped layers the model's
    outputs are not computed from get the histogram threshold (kcc.quant.policy.choose_ranges)."""
    why: dict[str, str] = {}
    if method == "l2":
        keep = output_sources(float_graph)
        why.update((n.name, "l2 calibration") for n in float_graph.nodes
                   if _relu_clamped(n) and n.name not in keep)
    why.update((n.name, "softmax logits") for n in softmax_logits(float_graph))
    return why


def residual_layers(float_graph: Graph) -> set[str]:
    """KPU layers holding a rounding residual (kcc.ir.kpu_ops.QuantResidual, decompose_kernels' stacks
    of a float input) or a shifted copy of one: 0 in the float graph by construction (the residual
    only exists on a grid), so they have no float reference to be compared with."""
    out: set[str] = set()
    for n in float_graph.nodes:
        if not isinstance(n.op, KO.FloatKpuConv):
            continue
        x = n.inputs[0]
        while isinstance(x.op, KO.KpuChannelView):
            x = x.inputs[0]
        if isinstance(x.op, KO.QuantResidual) or (x.name in out and moves_codes(n)):
            out.add(n.name)
    return out


def layer_out_q(graph: Graph) -> dict[str, tuple[int, float]]:
    """IR name -> (zero_point, scale) of every quantized KPU layer of the emitted graph."""
    return {n.name: n.op.out_q for n in graph.nodes if isinstance(n.op, KO.QuantKpuLayer)}


def float_layer_outputs(float_graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Output of every float FloatKpuConv node of the legalized graph on input `x`."""
    found: dict[str, np.ndarray] = {}

    def observe(node, value):
        if isinstance(node.op, KO.FloatKpuConv):
            found[node.name] = np.array(value, np.float32, copy=True)

    interpreter.run(float_graph, [x], observe)
    return found


def measure(kmodel_bytes: bytes, node_names: list[str], float_graph: Graph, quant_graph: Graph,
            samples: Iterable[tuple[np.ndarray, np.ndarray]], total: int | None = None,
            tick: Callable[[], None] | None = None, method: str = "no_clip") -> QuantErrorReport:
    """Compare every KPU layer over `samples`: pairs (float graph input, kmodel input) of one sample.

    `method` is the calibration method (which ranges clip on purpose, `deliberate_clipping`);
    `tick()` is called after each sample (progress bars)."""
    program = kpu_sim.load(bytes(kmodel_bytes))
    out_q = layer_out_q(quant_graph)
    on_purpose = deliberate_clipping(float_graph, method)
    no_reference = residual_layers(float_graph)
    layers: dict[int, LayerError] = {}
    report = QuantErrorReport()
    for x_float, x_model in samples:
        reference = float_layer_outputs(float_graph, x_float)

        def trace(index, opcode, body, outs):
            if opcode is not km.Opcode.KPU_CONV2D or index >= len(node_names):
                return
            name = node_names[index]
            if name not in reference or name not in out_q or name in no_reference:
                return
            zero_point, scale = out_q[name]
            q = _kpu_nchw(outs[0], body)
            f = reference[name]
            if f.shape != q.shape:
                return
            layer = layers.setdefault(index, LayerError(name, index, f.shape,
                                                        clipping=on_purpose.get(name, "")))
            lo, hi = (0 - zero_point) / scale, (255 - zero_point) / scale
            layer.add(f, (q.astype(np.float32) - zero_point) / np.float32(scale), lo - 0.5 / scale, hi + 0.5 / scale)

        program.run([x_model], trace=trace)
        report.samples += 1
        if tick is not None:
            tick()
    report.total_samples = total if total is not None else report.samples
    report.layers = sorted(layers.values(), key=lambda e: (e.ranked_sqnr_db, e.sqnr_db, e.index))
    return report
