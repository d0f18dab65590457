"""compile_model(): the whole compiler, top to bottom, one visible stage per line.

    import_tflite -> canonicalize -> [eliminate_dilated_conv -> lower_transpose_conv -> decompose_kernels
                                       -> legalize_kpu -> calibrate -> quantize]
                  -> lower_float
                  -> plan memory -> emit -> kmodel.write

(the bracketed K210 stages run for --inference-type uint8, the default).

Every graph stage goes through `checkpoint`, which runs the verifier and, with `--dump-ir DIR`,
writes `NN-<stage>.dot` and `NN-<stage>.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kcc import kmodel
from kcc.emit import Emitted, emit
from kcc.errors import DatasetError, UnsupportedModelError
from kcc.frontend.importer import import_model
from kcc.frontend.quantization import ModelQuantization
from kcc.ir.graph import Graph
from kcc.ir.printer import format_graph, to_dot
from kcc.options import CompileOptions
from kcc.passes.canonicalize import canonicalize
from kcc.passes.dilated_conv import eliminate_dilated_conv
from kcc.passes.transpose_conv import lower_transpose_conv
from kcc.passes.decompose_kernels import BULK_SAMPLES, NO_FORM, bulk_thresholds, decompose_kernels
from kcc.passes.legalize_kpu import Placement, legalize_kpu
from kcc.passes.lower_float import lower_float
from kcc.quant.quantize import calibration_view, quantize
from kcc.quant.weight_rounding import InputMoments
from kcc.weights_range import WeightRange, weights_ranges

Log = Callable[[str], None]
Progress = Callable[[int, "int | None", str], None]  # progress(done, total, stage), see kcc.progress


@dataclass
class CompileResult:
    kmodel: bytes
    graph: Graph  # the IR that was emitted
    emitted: Emitted  # memory plan and node map of the kmodel
    stages: list[str] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    float_graph: Graph | None = None  # the legalized float graph that was calibrated (uint8 only)
    weights_ranges: list[WeightRange] = field(default_factory=list)  # with options.dump_weights_range
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # calibrated ranges (uint8 only)
    report: Any = None  # kcc.report.Report, when kcc.compile() was asked for one

    @property
    def latency(self) -> Any:
        """Estimated K210 latency (kcc.latency.LatencyEstimate) at 400 MHz KPU and CPU clocks."""
        from kcc.latency import estimate
        return estimate(self.emitted.model)


class _Checkpoints:
    def __init__(self, dump_dir: Path | None):
        self.dump_dir = dump_dir
        self.names: list[str] = []
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, g: Graph) -> Graph:
        g.verify(name)
        self.names.append(name)
        if self.dump_dir is not None:
            stem = self.dump_dir / f"{len(self.names):02d}-{name}"
            stem.with_suffix(".txt").write_text(format_graph(g))
            stem.with_suffix(".dot").write_text(to_dot(g, name))
        return g


def compile_model(model: str | Path | bytes, options: CompileOptions = CompileOptions(),
                  log: Log = lambda line: None, progress: Progress | None = None) -> CompileResult:
    """Compile a .tflite model into kmodel v4 bytes. `progress` sees every calibration pass.
    A pre-quantized (uint8/int8) model needs no dataset: its own grids replace calibration."""
    checkpoint = _Checkpoints(options.dump_ir)
    log("1. Import graph...")
    imported = import_model(model)
    g = checkpoint("import", imported.graph)
    return compile_graph(g, options, log, checkpoint, progress=progress, quantization=imported.quantization)


def compile_graph(g: Graph, options: CompileOptions = CompileOptions(), log: Log = lambda line: None,
                  checkpoint: _Checkpoints | None = None, samples: list | None = None,
                  progress: Progress | None = None, quantization: ModelQuantization | None = None) -> CompileResult:
    """Every stage after import. `samples` (lists of input arrays) replaces `options.dataset`;
    `quantization` (a pre-quantized model's grids, kcc.frontend.import_model) replaces both."""
    checkpoint = checkpoint or _Checkpoints(options.dump_ir)
    placements: list[Placement] = []
    log("2. Optimize (canonicalize)...")
    g = checkpoint("canonicalize", canonicalize(g))
    weights = weights_ranges(g) if options.dump_weights_range else []
    float_graph, ranges = None, {}
    own_grids = _uses_own_grids(options, samples, quantization)
    if options.inference_type == "uint8":
        log("3. Map layers onto the KPU (legalize)...")
        g = checkpoint("eliminate_dilated_conv", eliminate_dilated_conv(g))
        g = checkpoint("lower_transpose_conv", lower_transpose_conv(g))
        # with its own grids a pre-quantized model is computed as TFLite's uint8 kernels do, bit for
        # bit on the KPU layers (kcc.quant.kpu_params): decomposed convs read 8-bit inputs as TFLite
        # does (no residual channels), mean pools round on the CPU instead of flooring on the KPU
        decisions: list = []
        bulk = {}
        if not own_grids:  # loaded here once, for the decomposition's statistics and for calibration
            samples = _samples(g, options, samples)
            bulk = bulk_thresholds(g, samples[:BULK_SAMPLES], options)
        g = checkpoint("decompose_kernels", decompose_kernels(g, options, decisions, residual=not own_grids, bulk=bulk))
        g, placements = legalize_kpu(g, options, fuse_mean_pools=not own_grids)
        kept = {d.node: d.reason for d in decisions if d.plan is None and d.reason != NO_FORM}
        placements = [replace(p, reason=f"{p.reason}; not decomposed: {kept[p.node]}") if p.node in kept and not p.on_kpu
                      else p for p in placements]
        g = float_graph = checkpoint("legalize_kpu", g)
        log("4. Calibrate activation ranges...")
        for note in quantization.notes() if quantization is not None else ():
            log(f"   warning: {note}")
        moments = None
        if own_grids:
            from kcc.quant.prequantized import prequantized_ranges
            ranges = prequantized_ranges(g, quantization, options, log)
        else:
            moments = InputMoments(g)
            ranges = _calibrate(g, options, log, samples, progress, moments)
        log("5. Quantize...")
        turn = options.weight_equalization == "turned"
        g = checkpoint("quantize", quantize(g, ranges, options.effective_input_type, moments, turn_channels=turn))
    log("6. Lower the remaining ops to kmodel neutral ops...")
    g = checkpoint("lower_float", lower_float(g))
    log("7. Plan buffers and emit kmodel v4...")
    emitted = emit(g, options.max_allocator_solve_secs)
    data = kmodel.write(emitted.model)
    return CompileResult(data, g, emitted, checkpoint.names, placements, float_graph, weights, ranges)


def _uses_own_grids(options: CompileOptions, samples: list | None, quantization: ModelQuantization | None) -> bool:
    """A pre-quantized model compiled without a dataset keeps its own grids (kcc.quant.prequantized)."""
    return quantization is not None and quantization.fully_quantized and samples is None and options.dataset is None


def _samples(g: Graph, options: CompileOptions, samples: list | None) -> list:
    """The calibration samples: `samples` as given, else the dataset's, loaded once."""
    from kcc.dataset import iter_dataset, list_files

    if samples is not None:
        return samples
    if options.dataset is None:
        raise DatasetError("--dataset is required to calibrate a uint8 model",
                           hint="pass --dataset DIR, or --inference-type float")
    if len(g.inputs) != 1:
        raise UnsupportedModelError(f"calibration supports single-input models; this one has {len(g.inputs)}")
    files = list_files(options.dataset, options.dataset_format)
    return [[s.data] for s in iter_dataset(options.dataset, options.dataset_format, g.inputs[0].shape,
                                           np.float32, options.mean, options.std, files)]


def _calibrate(g: Graph, options: CompileOptions, log: Log, samples: list | None = None,
               progress: Progress | None = None, moments: InputMoments | None = None) -> dict[str, tuple[float, float]]:
    """Ranges of every tensor `quantize` needs, measured on the dataset (kpu_semantics.md §4.2);
    `moments` collects the KPU layers' input statistics in the same pass."""
    from kcc.quant.calibrate import input_range_override, input_views
    from kcc.quant.policy import choose_ranges

    inputs = g.inputs
    samples = _samples(g, options, samples)
    n_outputs = len(g.outputs)
    view, points = calibration_view(g)
    n_samples = len(samples)
    if progress is not None:
        from kcc.progress import counted
        samples = counted(samples, progress)  # one bar per pass over the data
    ranges = choose_ranges(g, view, samples, points, options.calibrate_method, moments)
    view.outputs = view.outputs[:n_outputs]  # drop the calibration-only outputs again
    view.remove_dead()
    if options.input_mean is not None or options.input_std is not None:
        # the stated input grid (e.g. the camera's pixels) also holds for views of the input that a
        # KPU layer reads (a pre-padded or decomposed stem): they must not round the pixels again
        ranges[inputs[0].name] = fixed = input_range_override(options.mean, options.std)
        if fixed[0] <= 0.0 <= fixed[1]:
            for p in input_views(points, inputs[0]):
                ranges[p.name] = fixed
    log(f"   {n_samples} sample(s), {len(points)} tensors, method {options.calibrate_method}")
    return ranges
