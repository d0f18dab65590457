"""The `kcc` commands `compile`, `infer` and `info`: from parsed arguments to written files and printed lines.

Only argument checks, printing and file handling live here; the compiler is `kcc.pipeline`, the
simulator `kpu_sim`, and both are imported inside the commands: `main()` installs the Ctrl-C handler
before any command runs (kcc/cli/__init__.py). Every output is staged and published at the end
(`Run`, `kcc.atomic.Outputs`), so a failed or interrupted command leaves no new or changed file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kcc.errors import DatasetError, KccError


def check_writable(path: Path, what: str, directory: bool = False) -> None:
    """Fail before the (long) compile if `path` cannot be written; nothing is created here."""
    if path.exists():
        if directory != path.is_dir():
            raise KccError(f"{what} '{path}' exists and is {'not ' if directory else ''}a directory")
        if not os.access(path if directory else path.parent if str(path.parent) else Path("."), os.W_OK):
            raise KccError(f"cannot write {what} '{path}': permission denied")
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not directory and not parent.is_dir():
        raise KccError(f"cannot write {what} '{path}': directory '{parent}' does not exist")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise KccError(f"cannot write {what} '{path}': '{parent}' is not a writable directory")


def flash_layout(kmodel: bytes) -> bytes:
    """The kmodel as MaixPy's `kpu.load_flash` streams it from flash: each 32-bit word's bytes reversed
    (sipeed's MaixPy-v1_scripts tools_on_PC/model_tools/le2be.py; machine_vision/load_big_model/README.md:
    load_flash must be given this `_be` form). le2be pads a length that is not a multiple of 4 with
    '0' characters; a kmodel v4 never needs it (its bodies are 8-byte aligned, kmodel_v4.md §6.2)."""
    if len(kmodel) % 4:
        raise KccError(f"a kmodel of {len(kmodel)} bytes is not made of 32-bit words")
    out = bytearray(len(kmodel))
    for k in range(4):
        out[k::4] = kmodel[3 - k::4]
    return bytes(out)


def _check_clocks(args: argparse.Namespace) -> None:
    for flag, mhz in (("--kpu-clock", args.kpu_clock), ("--cpu-clock", args.cpu_clock)):
        if not 0 < mhz <= 2000:
            raise KccError(f"{flag} {mhz:g}: expected a clock in MHz between 0 and 2000 (the K210 runs at 400)")


class Run:
    """What one command owns while it runs: its staged outputs (`kcc.atomic.Outputs`) and Ctrl-C.

    The first Ctrl-C raises KeyboardInterrupt, once; a second one while the first unwinds (staged
    files being removed, the error line printed) is ignored, so that cleanup is never cut short. A
    library may turn the KeyboardInterrupt into something else (OR-tools' C extension into an
    ImportError at import) or swallow it (in a `__del__`): `interrupted` still tells main what
    happened, and `publish()` refuses to commit after it. From the commit point on, Ctrl-C is
    ignored: the outputs are then about to be complete, and the command ends normally."""

    def __init__(self) -> None:
        self.armed = True
        self.interrupted = False
        self._outputs = None  # made on first use: main installs on_sigint before importing anything

    @property
    def outputs(self):
        if self._outputs is None:
            from kcc.atomic import Outputs

            self._outputs = Outputs()
        return self._outputs

    def abort(self) -> None:
        """Remove every staged output; nothing to do after publish()."""
        if self._outputs is not None:
            self._outputs.abort()

    def on_sigint(self, signum, frame) -> None:
        if self.armed:
            self.armed, self.interrupted = False, True
            raise KeyboardInterrupt

    def publish(self) -> None:
        """The commit point: every staged output appears, or (interrupted before) none."""
        self.armed = False
        if self.interrupted:
            raise KeyboardInterrupt
        self.outputs.commit()


def cmd_compile(args: argparse.Namespace, run: Run | None = None) -> int:
    import dataclasses

    from kcc import progress as bars
    from kcc.frontend import FRONTENDS, is_prequantized
    from kcc.latency import estimate
    from kcc.options import CompileOptions
    from kcc.pipeline import compile_model
    from kcc.report.weights_range import format_weights_range

    run = run or Run()
    say = (lambda line: None) if args.quiet else print
    if args.input_format is not None and args.input_format not in FRONTENDS:
        raise KccError(f"input format '{args.input_format}' is not supported; kcc reads {', '.join(FRONTENDS)}")
    if not args.input.is_file():
        raise KccError(f"input model '{args.input}' does not exist or is not a file")
    if args.dataset is None and args.inference_type == "uint8" and not is_prequantized(args.input, args.input_format):
        # a pre-quantized (uint8/int8) .tflite brings its own ranges (kcc.quant.prequantized)
        raise DatasetError("--dataset is required for --inference-type uint8 (calibration images or raw files)",
                           hint="pass --dataset DIR, or --inference-type float")
    _check_clocks(args)
    check_writable(args.output, "output")
    if args.report is not None:
        check_writable(args.report, "report directory", directory=True)
    if args.dump_ir is not None:
        check_writable(args.dump_ir, "IR dump directory", directory=True)
    if args.flash_kmodel is not None:
        check_writable(args.flash_kmodel, "flash kmodel")
    ram = None
    if args.ram_budget is not None:
        from kcc.alloc.report import ram_budget

        if (ram := ram_budget(args.ram_budget)) is None:
            raise KccError(f"--ram-budget '{args.ram_budget}' is neither sdk, maixpy nor a size in MiB")
    opts = CompileOptions(
        target=args.target, input_format=args.input_format, prototxt=args.prototxt,
        inference_type=args.inference_type, input_type=args.input_type,
        dataset=args.dataset, dataset_format=args.dataset_format, input_mean=args.input_mean,
        input_std=args.input_std, calibrate_method=args.calibrate_method,
        max_allocator_solve_secs=args.max_allocator_solve_secs,
        weights_quantize_threshold=args.weights_quantize_threshold,
        output_quantize_threshold=args.output_quantize_threshold,
        no_quantized_binary=args.no_quantized_binary, decompose=args.decompose,
        weight_equalization=args.weight_equalization, ram_budget=ram, dump_ir=args.dump_ir,
        dump_weights_range=args.dump_weights_range)
    # the IR dump is written stage by stage: into a staging folder, published with the kmodel;
    # the report still records the --dump-ir the user gave
    staged = opts
    if args.dump_ir is not None:
        staged = dataclasses.replace(opts, dump_ir=run.outputs.directory(args.dump_ir))
    progress = bars.Bars() if bars.enabled(args.quiet) else None
    try:
        result = compile_model(args.input, staged, log=say, progress=progress)
        if not args.allow_oversize:  # no K210 can load it: an error, before anything is written
            from kcc.report.summary import too_large

            if (error := too_large(result)) is not None:
                raise error
        report = None
        if args.report is not None:
            from kcc.report import compile_report as reports

            say("8. Measure per-layer quantization error for the report...")
            report = reports.build(result, opts, args.input.name, args.kpu_clock, args.cpu_clock, progress)
    finally:
        if progress is not None:
            progress.close()
    if report is not None:
        reports.write(report, run.outputs.directory(args.report))
    if args.flash_kmodel is not None:
        run.outputs.file(args.flash_kmodel, flash_layout(result.kmodel))
    run.outputs.file(args.output, result.kmodel)  # the last file staged: its rename is the commit point
    run.publish()
    for item in result.weights_ranges:  # asked for explicitly: printed even with -q, as ncc does
        print(format_weights_range(item))
    from kcc.report.summary import compile_lines  # placements, memory, latency, SUMMARY: in the model's names

    est = estimate(result.emitted.model, args.kpu_clock, args.cpu_clock)
    for line in compile_lines(result, est, args.memory_report, args.report):
        say(line)
    return 0


def cmd_infer(args: argparse.Namespace, run: Run | None = None) -> int:
    import time

    import kpu_sim
    from kcc.dataset import iter_dataset, list_files

    run = run or Run()
    say = (lambda line: None) if args.quiet else print
    if not args.model.is_file():
        raise KccError(f"kmodel '{args.model}' does not exist or is not a file")
    if args.dataset is None:
        raise DatasetError("kcc infer needs --dataset (a directory or file of inputs)")
    program = kpu_sim.load(args.model)
    if len(program.inputs) != 1:
        raise KccError(f"'{args.model}' has {len(program.inputs)} inputs; kcc infer feeds single-input models only")
    spec = program.inputs[0]
    files = list_files(args.dataset, args.dataset_format)
    if args.output.exists() and not args.output.is_dir():
        raise KccError(f"output '{args.output}' exists and is not a directory")
    results = []
    total = 0.0
    for sample in iter_dataset(args.dataset, args.dataset_format, spec.shape, spec.dtype,
                               args.input_mean or 0.0, 1.0 if args.input_std is None else args.input_std, files):
        t0 = time.perf_counter()
        outs = program.run([sample.data])
        total += time.perf_counter() - t0
        results.append((sample.path.stem, b"".join(o.tobytes() for o in outs)))
    staging = run.outputs.directory(args.output)
    for stem, data in results:
        try:
            (staging / f"{stem}.bin").write_bytes(data)
        except OSError as e:  # full disk, ...: name the file the user asked for, not the staging copy
            raise KccError(f"cannot write '{args.output / (stem + '.bin')}': {e.strerror}") from None
    run.publish()
    say(f"{len(results)} input(s) -> {args.output}/ ; simulator time {total * 1e3 / max(len(results), 1):.1f} ms per input")
    return 0


def cmd_info(args: argparse.Namespace, run: Run | None = None) -> int:
    import json

    from kcc.report.info import describe, format_text

    if not args.model.is_file():
        raise KccError(f"kmodel '{args.model}' does not exist or is not a file")
    try:
        data = args.model.read_bytes()
    except OSError as e:
        raise KccError(f"cannot read '{args.model}': {e.strerror}") from None
    info = describe(data, str(args.model))
    if not args.estimate:
        print(json.dumps(info, indent=1) if args.json else format_text(info))
        return 0
    from kcc import kmodel as km
    from kcc.latency import estimate

    _check_clocks(args)
    est = estimate(km.read(data, name=str(args.model)), args.kpu_clock, args.cpu_clock)
    if args.json:
        print(json.dumps(info | {"estimate": est.to_json()}, indent=1))
    else:
        print(format_text(info) + "\n\nESTIMATED K210 LATENCY\n  " + est.summary() + "\n  by opcode: "
              + ", ".join(f"{op} {ms:.1f} ms" for op, ms in est.by_opcode().items()) + "\n"
              + "\n".join(est.table_lines()))
    return 0


COMMANDS = {"compile": cmd_compile, "infer": cmd_infer, "info": cmd_info}
