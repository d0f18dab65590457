"""`kcc compile --report DIR`: what the compiler decided and what it will cost, in one folder.

Answers the questions ncc leaves to trial and error on the board (ecosystem.md §4.1-4.5):
* placement: every conv / fully-connected / pool, on the KPU or the CPU, and why (`Placement`,
  pools in words by `kcc.report.summary.placements`);
* per-layer quantization error on the calibration set (`kcc.report.quant_error`), worst layers first, one
  ranking for the summary, the table and the plot;
* memory: main memory, KPU RAM and the device-fit verdict (`kcc.alloc.report.MemoryReport`);
* estimated K210 latency per node and in total (`kcc.latency`), and the CPU time by model op
  (`kcc.report.summary.cpu_work`).
Tensors are shown under the model's names (`kcc.alloc.names`), kcc's own tensors in words.

`build(...)` computes everything (nothing is written if it fails); `write(report, dir)` writes
`report.md`, `report.json` and the plots `quant_error.png` and `latency.png` (`kcc.report.plots`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import kpu_sim
from kcc import __version__
from kcc.alloc.names import in_words, model_name, short_name
from kcc.atomic import Outputs
from kcc.dataset import list_files, load_image, load_raw
from kcc.errors import KccError
from kcc.latency import LatencyEstimate, estimate
from kcc.options import CompileOptions
from kcc.progress import Progress, track
from kcc.quant.params import get_quant_param
from kcc.report import plots, summary
from kcc.report.quant_error import MAX_SAMPLES, QuantErrorReport, measure

MD, JSON, QUANT_PNG, LATENCY_PNG = "report.md", "report.json", "quant_error.png", "latency.png"


@dataclass
class Report:
    model: str
    options: dict[str, Any]
    kmodel_bytes: int
    nodes: int
    kpu_layers: int
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[tuple[str, tuple[int, ...]]]
    node_names: list[str]
    placements: list[dict[str, Any]]
    latency: LatencyEstimate
    memory_summary: list[str] = field(default_factory=list)
    memory_table: list[str] = field(default_factory=list)
    quant_error: QuantErrorReport | None = None
    quant_error_note: str = ""
    cpu_work: list[Any] = field(default_factory=list)  # kcc.report.summary.CpuWork, most time first

    def to_json(self) -> dict[str, Any]:
        return {
            "kcc": __version__, "model": self.model, "options": self.options,
            "kmodel": {"bytes": self.kmodel_bytes, "nodes": self.nodes, "kpu_layers": self.kpu_layers},
            "inputs": [{"name": n, "shape": list(s)} for n, s in self.inputs],
            "outputs": [{"name": n, "shape": list(s)} for n, s in self.outputs],
            "placement": self.placements,
            "quant_error": self.quant_error.to_json() if self.quant_error else {"note": self.quant_error_note},
            "latency": self.latency.to_json() | {"names": self.node_names,
                                                 "cpu_by_model_op": [w.to_json() for w in self.cpu_work]},
            "memory": {"summary": self.memory_summary, "buffers": self.memory_table},
        }


def _samples(result, options: CompileOptions, program_dtype: np.dtype, limit: int):
    """(float graph input, kmodel input) per calibration file, the first `limit` in sorted order."""
    shape = result.float_graph.inputs[0].shape
    files = list_files(options.dataset, options.dataset_format)
    used = files[:limit]

    def pairs():
        for f in used:
            if options.dataset_format == "image":
                x = load_image(f, shape, np.float32, options.mean, options.std)
                if program_dtype == np.uint8 and (options.input_mean is not None or options.input_std is not None):
                    yield x, load_image(f, shape, np.uint8)  # the raw pixels, as the board gets them
                    continue
            else:
                x = load_raw(f, shape, np.float32, options.mean, options.std)
            yield x, x if program_dtype == np.float32 else quantize_input(result, x)

    return pairs(), len(used), len(files)


def quantize_input(result, x: np.ndarray) -> np.ndarray:
    """A float sample as the uint8 model input, with the input's calibrated quantization.

    With --input-mean/--input-std that is the raw pixel (range [(0-m)/s, (1-m)/s]); without them the
    range is the dataset's own (ncc semantics), so the kmodel expects re-quantized pixels, not raw
    ones, and feeding those keeps the comparison about the layers, not about the input convention."""

    name = result.float_graph.inputs[0].name
    if name not in result.ranges:
        raise KccError(f"no calibrated range for the model input '{name}'")
    return get_quant_param(*result.ranges[name]).quantize(x)


def build(result, options: CompileOptions, model_name: str, kpu_mhz: float = 400.0, cpu_mhz: float = 400.0,
          progress: Progress | None = None, max_samples: int = MAX_SAMPLES) -> Report:
    """Everything a report shows, computed from a `CompileResult` (and, for uint8, the dataset)."""
    em = result.emitted
    model = em.model
    kpu_layers = sum(1 for n in model.nodes if n.name == "kpu_conv2d")
    known = summary.known_names(result)
    latency = estimate(model, kpu_mhz, cpu_mhz)
    report = Report(
        model=model_name, options=_options_json(options), kmodel_bytes=len(result.kmodel), nodes=len(model.nodes),
        kpu_layers=kpu_layers, inputs=em.inputs, outputs=summary.outputs(result),
        node_names=[in_words(n, 1 << 16, known) for n in em.node_names],
        placements=[asdict(p) for p in summary.placements(result, latency)], latency=latency,
        cpu_work=summary.cpu_work(result, latency))
    if em.memory is not None:
        report.memory_summary = em.memory.summary_lines(len(result.kmodel), timed=False)
        report.memory_table = em.memory.table_lines()
    if result.float_graph is None:
        report.quant_error_note = "not measured: --inference-type float has no quantized layers"
    elif options.dataset is None:
        report.quant_error_note = "not measured: no --dataset to compare float and uint8 layers on"
    elif kpu_layers == 0:
        report.quant_error_note = "not measured: no layer runs on the KPU"
    elif len(result.float_graph.inputs) != 1:
        report.quant_error_note = "not measured: the model has more than one input"
    else:
        dtype = kpu_sim.load(result.kmodel).inputs[0].dtype
        pairs, used, total = _samples(result, options, dtype, max_samples)
        report.quant_error = measure(result.kmodel, em.node_names, result.float_graph, result.graph,
                                     track(pairs, used, "per-layer error", progress), total=total,
                                     method=options.calibrate_method)
    return report


def _options_json(options: CompileOptions) -> dict[str, Any]:
    out = {}
    for key, value in asdict(options).items():
        out[key] = str(value) if isinstance(value, Path) else value
    return out


# --------------------------------------------------------------------------- Markdown
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in esc]


def _shape(s) -> str:
    return "x".join(map(str, s))


def _fmt_db(v: float) -> str:
    return "exact" if np.isinf(v) else f"{v:.1f}"


def _clipped(e) -> str:
    """The layer's clipped share, and whether that is on purpose (kcc.report.quant_error.deliberate_clipping)."""
    if not e.clipped:
        return ""
    share = f"{100 * e.clipped_fraction:.1f}% of its values clipped"
    return f"{share} on purpose ({e.clipping})" if e.clipping else share


def _worst(e) -> str:
    """The summary's worst KPU layer, with the figure it was ranked by."""
    clip = _clipped(e)
    figure = f"SQNR {_fmt_db(e.ranked_sqnr_db)} dB{' in range' if e.clipping else ''}"
    name = short_name(model_name(e.name))
    return f"`{name}`: {figure}, cosine {e.cosine:.4f}" + (f"; {clip}" if clip else "")


def markdown(r: Report) -> str:
    lat = r.latency
    lines = [f"# kcc report: `{r.model}`", "",
             f"kcc {__version__}; kmodel v4, {r.kmodel_bytes} bytes, {r.nodes} nodes ({r.kpu_layers} KPU layers).", "",
             "Options: " + ", ".join(f"`{k}={v}`" for k, v in r.options.items() if v not in (None, False)), "",
             "## Summary", ""]
    summary = [["estimated K210 latency", f"{lat.total_ms:.1f} ms (KPU {lat.kpu_ms:.1f} ms, CPU {lat.cpu_ms:.1f} ms) "
                f"at KPU {lat.kpu_mhz:g} MHz / CPU {lat.cpu_mhz:g} MHz"]]
    on_kpu = sum(1 for p in r.placements if p["on_kpu"])
    summary.append(["placement", f"{on_kpu} on the KPU, {len(r.placements) - on_kpu} on the CPU"])
    if r.cpu_work:
        w = r.cpu_work[0]
        summary.append(["most CPU time", f"{w.kind} ({len(w.ops)} op(s), as {', '.join(w.opcodes)}): "
                        f"{w.ms:.1f} ms, {100 * w.share:.1f}% of the total"])
    if r.quant_error and r.quant_error.layers:
        summary.append(["worst KPU layer", _worst(r.quant_error.layers[0])])
    if r.memory_summary:
        summary.append(["device RAM", r.memory_summary[-1].removeprefix("Device RAM: ")])
    lines += _table(["", ""], summary)
    lines += ["", "Inputs and outputs (NCHW):", ""]
    lines += _table(["", "name", "shape"], [["input", n, _shape(s)] for n, s in r.inputs] +
                    [["output", n, _shape(s)] for n, s in r.outputs])
    lines += ["", "## Placement", "",
              "Every convolution, fully-connected layer and pool of the model, and where it runs.", ""]
    if r.placements:
        lines += _table(["op", "layer", "unit", "why / how"],
                        [[p["op"], f"`{short_name(p['node'])}`", "KPU" if p["on_kpu"] else "**CPU**", p["reason"]]
                         for p in r.placements])
    else:
        lines.append("No layer was considered for the KPU (`--inference-type float`).")
    lines += ["", "## Quantization error per KPU layer", ""]
    qe = r.quant_error
    if qe is None:
        lines.append(r.quant_error_note.capitalize() + ".")
    else:
        lines += [f"Float evaluator vs the simulated uint8 kmodel (bit-exact with the K210) on {qe.samples} of the "
                  f"{qe.total_samples} calibration samples. Errors accumulate: a layer's figures include what the "
                  "layers before it lost. SQNR = 10 log10(signal power / error power), over all values and over "
                  "the values inside the layer's output range. *clipped* is the share of float values "
                  "outside the range the layer's uint8 output can hold: on purpose for softmax logits (only "
                  "the largest matter) and l2-clipped ReLU outputs, otherwise a sign of an unrepresentative "
                  "calibration set. Worst first, by *ranked*: the SQNR in range where the range clips on "
                  "purpose, else over all values; the summary and the plot use the same figure.", "",
                  f"![quantization error]({QUANT_PNG})", ""]
        lines += _table(["layer", "node", "shape", "ranked SQNR dB", "all values", "in range", "cosine",
                         "max abs error", "clipped"],
                        [[f"`{short_name(model_name(e.name))}`", str(e.index), _shape(e.shape),
                          _fmt_db(e.ranked_sqnr_db), _fmt_db(e.sqnr_db), _fmt_db(e.sqnr_in_range_db),
                          f"{e.cosine:.5f}", f"{e.max_abs:.4g}",
                          f"{100 * e.clipped_fraction:.2f}%"
                          + (f" on purpose ({e.clipping})" if e.clipping else "")]
                         for e in qe.layers])
    lines += ["", "## Estimated K210 latency", "",
              "First-order cost model of `kcc/latency.py` (KPU cycles per 64-byte line and channel, CPU cycles per "
              "element, fitted to published board timings; expect +-25%).", "", f"![latency]({LATENCY_PNG})", ""]
    lines += _table(["opcode", "ms", "%"], [[op, f"{ms:.2f}", f"{100 * ms / max(lat.total_ms, 1e-9):.1f}"]
                                           for op, ms in lat.by_opcode().items()])
    if r.cpu_work:
        lines += ["", "CPU time by model op: every node's CPU time goes to the model op whose tensor it "
                  "computes or moves (a KPU layer's pre-pad, upload, copy out, crop and dequantize to the "
                  "layer).", ""]
        lines += _table(["model op", "ops", "ms", "%", "as kmodel opcodes", "largest"],
                        [[w.kind, str(len(w.ops)), f"{w.ms:.2f}", f"{100 * w.share:.1f}",
                          ", ".join(w.opcodes),
                          ", ".join(f"`{short_name(n)}` {ms:.2f} ms" for n, ms in w.ops[:3])]
                         for w in r.cpu_work])
    lines += ["", "Every node:", ""]
    lines += _table(["node", "unit", "opcode", "ms", "work", "name"],
                    [[str(n.index), n.unit, n.opcode, f"{n.ms:.3f}", n.work,
                      f"`{r.node_names[n.index]}`" if n.index < len(r.node_names) else ""]
                     for n in lat.nodes])
    lines += ["", "## Memory", ""]
    if r.memory_summary:
        lines += ["```", *r.memory_summary, "", *r.memory_table, "```"]
    else:
        lines.append("No memory plan was recorded.")
    return "\n".join(lines) + "\n"


def write(r: Report, directory: Path) -> list[Path]:
    """Write report.md, report.json and the PNG plots into `directory` (created if needed).

    All files are rendered first and published together (`kcc.atomic.Outputs`): a failure or a
    Ctrl-C leaves `directory` as it was, never a report.md linking a plot that is not there."""
    directory = Path(directory)
    files = {MD: markdown(r).encode(), JSON: (json.dumps(r.to_json(), indent=1) + "\n").encode(),
             LATENCY_PNG: plots.latency_png(r.latency, r.node_names)}
    if r.quant_error is not None and r.quant_error.layers:
        files[QUANT_PNG] = plots.quant_error_png(r.quant_error)
    with Outputs() as outputs:
        staging = outputs.directory(directory)
        for name, data in files.items():
            try:
                (staging / name).write_bytes(data)
            except OSError as e:
                raise KccError(f"cannot write '{directory / name}': {e.strerror}") from None
        outputs.commit()
    return [directory / name for name in files]
