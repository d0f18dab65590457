"""compile_model(): the whole compiler, top to bottom, one visible stage per line.

    import_tflite -> canonicalize -> [eliminate_dilated_conv -> lower_transpose_conv -> legalize_kpu
                                       -> calibrate -> quantize]
                  -> lower_float
                  -> plan memory -> emit -> kmodel.write

(the bracketed K210 stages run for --inference-type uint8, the default).

Every graph stage goes through `checkpoint`, which runs the verifier and, with `--dump-ir DIR`,
writes `NN-<stage>.dot` and `NN-<stage>.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from kcc import kmodel
from kcc.emit import Emitted, emit
from kcc.errors import DatasetError, UnsupportedModelError
from kcc.frontend.importer import import_tflite
from kcc.ir.graph import Graph
from kcc.ir.printer import format_graph, to_dot
from kcc.options import CompileOptions
from kcc.passes.canonicalize import canonicalize
from kcc.passes.dilated_conv import eliminate_dilated_conv
from kcc.passes.transpose_conv import lower_transpose_conv
from kcc.passes.legalize_kpu import Placement, legalize_kpu
from kcc.passes.lower_float import lower_float
from kcc.quant.quantize import calibration_view, quantize

Log = Callable[[str], None]


@dataclass
class CompileResult:
    kmodel: bytes
    graph: Graph  # the IR that was emitted
    emitted: Emitted  # memory plan and node map of the kmodel
    stages: list[str] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)


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
                  log: Log = lambda line: None) -> CompileResult:
    """Compile a float .tflite model into kmodel v4 bytes."""
    checkpoint = _Checkpoints(options.dump_ir)
    log("1. Import graph...")
    g = checkpoint("import", import_tflite(model))
    return compile_graph(g, options, log, checkpoint)


def compile_graph(g: Graph, options: CompileOptions = CompileOptions(), log: Log = lambda line: None,
                  checkpoint: _Checkpoints | None = None, samples: list | None = None) -> CompileResult:
    """Every stage after import. `samples` (lists of input arrays) replaces `options.dataset`."""
    checkpoint = checkpoint or _Checkpoints(options.dump_ir)
    placements: list[Placement] = []
    log("2. Optimize (canonicalize)...")
    g = checkpoint("canonicalize", canonicalize(g))
    if options.inference_type == "uint8":
        log("3. Map layers onto the KPU (legalize)...")
        g = checkpoint("eliminate_dilated_conv", eliminate_dilated_conv(g))
        g = checkpoint("lower_transpose_conv", lower_transpose_conv(g))
        g, placements = legalize_kpu(g, options)
        g = checkpoint("legalize_kpu", g)
        log("4. Calibrate activation ranges...")
        ranges = _calibrate(g, options, log, samples)
        log("5. Quantize...")
        g = checkpoint("quantize", quantize(g, ranges, options.effective_input_type))
    log("6. Lower the remaining ops to kmodel neutral ops...")
    g = checkpoint("lower_float", lower_float(g))
    log("7. Plan buffers and emit kmodel v4...")
    emitted = emit(g, options.max_allocator_solve_secs)
    data = kmodel.write(emitted.model)
    return CompileResult(data, g, emitted, checkpoint.names, placements)


def _calibrate(g: Graph, options: CompileOptions, log: Log, samples: list | None = None) -> dict[str, tuple[float, float]]:
    """Ranges of every tensor `quantize` needs, measured on the dataset (kpu_semantics.md §4.2)."""
    from kcc.dataset import iter_dataset, list_files
    from kcc.quant.calibrate import input_range_override
    from kcc.quant.policy import choose_ranges

    inputs = g.inputs
    if samples is None:
        if options.dataset is None:
            raise DatasetError("--dataset is required to calibrate a uint8 model",
                               hint="pass --dataset DIR, or --inference-type float")
        if len(inputs) != 1:
            raise UnsupportedModelError(f"calibration supports single-input models; this one has {len(inputs)}")
        files = list_files(options.dataset, options.dataset_format)
        samples = [[s.data] for s in iter_dataset(options.dataset, options.dataset_format, inputs[0].shape,
                                                  np.float32, options.mean, options.std, files)]
    n_outputs = len(g.outputs)
    view, points = calibration_view(g)
    ranges = choose_ranges(g, view, samples, points, options.calibrate_method)
    view.outputs = view.outputs[:n_outputs]  # drop the calibration-only outputs again
    view.remove_dead()
    if options.input_mean is not None or options.input_std is not None:
        ranges[inputs[0].name] = input_range_override(options.mean, options.std)
    log(f"   {len(samples)} sample(s), {len(points)} tensors, method {options.calibrate_method}")
    return ranges
