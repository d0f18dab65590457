"""`kcc compile --report DIR`: what the compiler decided and what it will cost, in one folder.

Answers the questions ncc leaves to trial and error on the board (ecosystem.md §4.1-4.5):
* placement: every conv / fully-connected / pool, on the KPU or the CPU, and why (`Placement`);
* per-layer quantization error on the calibration set (`kcc.quant_error`), worst layers first;
* memory: main memory, KPU RAM and the device-fit verdict (`kcc.alloc.report.MemoryReport`);
* estimated K210 latency per node and in total (`kcc.latency`).

`build(...)` computes everything (nothing is written if it fails); `write(report, dir)` writes
`report.md`, `report.json` and the plots `quant_error.png` and `latency.png` (`kcc.plots`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kcc import __version__
from kcc.alloc.names import short_name
from kcc.errors import KccError
from kcc.latency import LatencyEstimate, estimate
from kcc.options import CompileOptions
from kcc.progress import Progress, track
from kcc.quant_error import MAX_SAMPLES, QuantErrorReport, measure

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

    def to_json(self) -> dict[str, Any]:
        return {
            "kcc": __version__, "model": self.model, "options": self.options,
            "kmodel": {"bytes": self.kmodel_bytes, "nodes": self.nodes, "kpu_layers": self.kpu_layers},
            "inputs": [{"name": n, "shape": list(s)} for n, s in self.inputs],
            "outputs": [{"name": n, "shape": list(s)} for n, s in self.outputs],
            "placement": self.placements,
            "quant_error": self.quant_error.to_json() if self.quant_error else {"note": self.quant_error_note},
            "latency": self.latency.to_json() | {"names": self.node_names},
            "memory": {"summary": self.memory_summary, "buffers": self.memory_table},
        }


def _samples(result, options: CompileOptions, program_dtype: np.dtype, limit: int):
    """(float graph input, kmodel input) per calibration file, the first `limit` in sorted order."""
    from kcc.dataset import list_files, load_image, load_raw

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
    from kcc.quant.params import get_quant_param

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
    report = Report(
        model=model_name, options=_options_json(options), kmodel_bytes=len(result.kmodel), nodes=len(model.nodes),
        kpu_layers=kpu_layers, inputs=em.inputs, outputs=em.outputs, node_names=list(em.node_names),
        placements=[asdict(p) for p in result.placements], latency=estimate(model, kpu_mhz, cpu_mhz))
    if em.memory is not None:
        report.memory_summary = em.memory.summary_lines(len(result.kmodel))
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
        import kpu_sim

        dtype = kpu_sim.load(result.kmodel).inputs[0].dtype
        pairs, used, total = _samples(result, options, dtype, max_samples)
        report.quant_error = measure(result.kmodel, em.node_names, result.float_graph, result.graph,
                                     track(pairs, used, "per-layer error", progress), total=total)
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
    if r.quant_error and r.quant_error.layers:
        worst = r.quant_error.layers[0]
        clip = f", {100 * worst.clipped_fraction:.1f}% of its values clipped" if worst.clipped else ""
        summary.append(["worst KPU layer", f"`{short_name(worst.name)}`: SQNR {_fmt_db(worst.sqnr_in_range_db)} dB "
                        f"in range, cosine {worst.cosine:.4f}{clip}"])
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
                  "the values inside the layer's output range; worst (in range) first. "
                  "*clipped* is the share of float values outside the range the layer's uint8 output can hold: "
                  "deliberate for softmax logits (only the largest matter) and l2-clipped ReLU outputs, "
                  "otherwise a sign of an unrepresentative calibration set.", "",
                  f"![quantization error]({QUANT_PNG})", ""]
        lines += _table(["layer", "node", "shape", "SQNR dB", "in range", "cosine", "max abs error", "clipped"],
                        [[f"`{short_name(e.name)}`", str(e.index), _shape(e.shape), _fmt_db(e.sqnr_db),
                          _fmt_db(e.sqnr_in_range_db),
                          f"{e.cosine:.5f}", f"{e.max_abs:.4g}", f"{100 * e.clipped_fraction:.2f}%"]
                         for e in qe.layers])
    lines += ["", "## Estimated K210 latency", "",
              "First-order cost model of `kcc/latency.py` (KPU cycles per 64-byte line and channel, CPU cycles per "
              "element, fitted to published board timings; expect +-25%).", "", f"![latency]({LATENCY_PNG})", ""]
    lines += _table(["opcode", "ms", "%"], [[op, f"{ms:.2f}", f"{100 * ms / max(lat.total_ms, 1e-9):.1f}"]
                                           for op, ms in lat.by_opcode().items()])
    lines += ["", "Every node:", ""]
    lines += _table(["node", "unit", "opcode", "ms", "work", "name"],
                    [[str(n.index), n.unit, n.opcode, f"{n.ms:.3f}", n.work,
                      f"`{short_name(r.node_names[n.index])}`" if n.index < len(r.node_names) else ""]
                     for n in lat.nodes])
    lines += ["", "## Memory", ""]
    if r.memory_summary:
        lines += ["```", *r.memory_summary, "", *r.memory_table, "```"]
    else:
        lines.append("No memory plan was recorded.")
    return "\n".join(lines) + "\n"


def write(r: Report, directory: Path) -> list[Path]:
    """Write report.md, report.json and the PNG plots into `directory` (created if needed)."""
    from kcc import plots
    from kcc.cli import write_atomic

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KccError(f"cannot create report directory '{directory}': {e.strerror}") from None
    paths = [directory / MD, directory / JSON, directory / LATENCY_PNG]
    write_atomic(paths[0], markdown(r).encode())
    write_atomic(paths[1], (json.dumps(r.to_json(), indent=1) + "\n").encode())
    write_atomic(paths[2], plots.latency_png(r.latency, r.node_names))
    if r.quant_error is not None and r.quant_error.layers:
        paths.append(directory / QUANT_PNG)
        write_atomic(paths[3], plots.quant_error_png(r.quant_error))
    return paths
