"""`kcc.compile()`: the compiler as one Python call, for notebooks and build scripts.

    import kcc
    result = kcc.compile("model.tflite", "model.kmodel", dataset="images", input_mean=0.5, input_std=0.5)
    result.kmodel          # the kmodel v4 bytes (also written to "model.kmodel")
    result.placements      # every conv / fc / pool: KPU or CPU, and why
    result.latency         # estimated K210 latency (kcc.latency.LatencyEstimate)
    result.report          # with report="DIR" (or report=True): placement, per-layer error, memory, latency

Keyword options are the fields of `kcc.options.CompileOptions` (the ncc flags with `-` -> `_`);
paths may be strings. Errors are `kcc.errors.KccError` with a one-line message, as on the command line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kcc.atomic import Outputs
from kcc.errors import KccError
from kcc.options import CompileOptions

_PATH_OPTIONS = ("dataset", "dump_ir", "prototxt")


def options_from(**options: Any) -> CompileOptions:
    """CompileOptions from keyword arguments; unknown names are a KccError listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(CompileOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise KccError(f"unknown compile option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    for key in _PATH_OPTIONS:
        if isinstance(options.get(key), str):
            options[key] = Path(options[key])
    return CompileOptions(**options)


def compile(model: str | Path | bytes, output: str | Path | None = None, *, report: str | Path | bool | None = None,
            kpu_clock: float = 400.0, cpu_clock: float = 400.0, log: Any = None, progress: Any = None,
            allow_oversize: bool = False, **options: Any):
    """Compile a float .tflite model (path or bytes) to a kmodel v4; returns `kcc.pipeline.CompileResult`.

    `output`: also write the kmodel there. `report`: build the report (`True`) and write it into that
    directory (a path). A kmodel that needs more than the K210's 6 MiB (kmodel + working memory) is a
    `ModelTooLargeError`, as with `kcc compile`, unless `allow_oversize`. `log(line)` receives the stage lines; `progress(done, total, stage)` the
    calibration passes. The shadowing of the builtin `compile` is deliberate: `kcc.compile` reads like
    the command it mirrors.
    """
    # the compiler loads on the first call, not when `kcc.compile` is first read (kcc/__init__.py)
    from kcc.pipeline import compile_model

    opts = options_from(**options)
    if isinstance(model, str):
        model = Path(model)
    # the kmodel, the report and the IR dump appear together or not at all, as with `kcc compile`
    with Outputs() as outputs:
        staged = opts
        if opts.dump_ir is not None:
            staged = dataclasses.replace(opts, dump_ir=outputs.directory(opts.dump_ir))
        result = compile_model(model, staged, log=log or (lambda line: None), progress=progress)
        if not allow_oversize:  # no K210 can load it: an error, before anything is written
            from kcc.report.summary import too_large

            if (error := too_large(result)) is not None:
                raise error
        if report:
            from kcc.report import compile_report as reports  # kpu_sim loads only for a report

            name = model.name if isinstance(model, Path) else "<tflite bytes>"
            result.report = reports.build(result, opts, name, kpu_clock, cpu_clock, progress)
            if not isinstance(report, bool):
                reports.write(result.report, outputs.directory(Path(report)))
        if output is not None:
            outputs.file(Path(output), result.kmodel)
        outputs.commit()
    return result
