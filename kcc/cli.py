"""The `kcc` command line: ncc v0.2-compatible `compile` and `infer` (ecosystem.md §5.1-§5.2), and `info`.

Only argument parsing, printing and file handling live here; the compiler is `kcc.pipeline`.
Every `KccError` becomes one `error: ...` line on stderr and exit code 1; Ctrl-C becomes
`error: interrupted` and exit code 130; a stdout pipe closed by its reader ends the command quietly
(exit 141). In each case no output file is new or changed: outputs are staged and published together
at the end (`kcc.atomic.Outputs`). Anything else is a kcc bug: a one-line report, or the traceback
with `--debug`.

Module-level imports are kept to what is loaded anyway: `main()` installs the Ctrl-C handler, and
until it runs a Ctrl-C is Python's default, a traceback. The compiler is imported inside the commands.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from pathlib import Path

from kcc import __version__
from kcc.errors import DatasetError, KccError

INPUT_FORMATS = ("tflite",)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one `error:` line (exit 1) instead of exit 2 + usage."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise KccError(f"{self.prog}: {message} (see '{self.prog} --help')")

    def _print_message(self, message: str, file=None) -> None:
        # argparse swallows OSError here; a closed pipe must reach main, so that `kcc --help | true`
        # ends with the same status as `kcc info m.kmodel | true`
        if message:
            (file or sys.stderr).write(message)


def _add_dataset_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=Path, help="directory (walked recursively, sorted) or single file")
    p.add_argument("--dataset-format", choices=("image", "raw"), default="image",
                   help="image: any picture PIL reads; raw: float32 (or uint8) NCHW files of exactly one input")
    p.add_argument("--input-mean", type=float, default=None, help="x = (pixel/255 - mean) / std (default 0)")
    p.add_argument("--input-std", type=float, default=None, help="see --input-mean (default 1)")


def _add_clock_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kpu-clock", type=float, default=400.0, metavar="MHZ",
                   help="KPU clock of the latency estimate (default 400 MHz, the SDK's PLL1)")
    p.add_argument("--cpu-clock", type=float, default=400.0, metavar="MHZ",
                   help="CPU clock of the latency estimate (default 400 MHz)")


def build_parser() -> argparse.ArgumentParser:
    from kcc.options import (CALIBRATE_METHODS, DECOMPOSE_MODES, INFERENCE_TYPES, INPUT_TYPES, TARGETS,
                             WEIGHT_EQUALIZATIONS)

    parser = _Parser(prog="kcc", description="Compiler for the Kendryte K210 KPU: float .tflite -> kmodel v4.")
    parser.add_argument("-v", "--version", action="version", version=f"kcc {__version__} (kmodel v4, ncc v0.2 compatible)")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    c = sub.add_parser("compile", help="compile a .tflite model to a kmodel v4")
    c.add_argument("input", type=Path, help="input model (.tflite)")
    c.add_argument("output", type=Path, help="output kmodel path")
    c.add_argument("-i", "--input-format", default="tflite", metavar="FORMAT",
                   help="input format: tflite (ncc also reads caffe/onnx/paddle; kcc reads tflite only)")
    c.add_argument("-o", "--output-format", default="kmodel", choices=("kmodel",), help="output format (kmodel)")
    c.add_argument("-t", "--target", default="k210", choices=TARGETS,
                   help="k210: layers on the KPU where possible; cpu: everything on the CPU (default k210)")
    _add_dataset_flags(c)
    c.add_argument("--inference-type", default="uint8", choices=INFERENCE_TYPES,
                   help="uint8: quantized, KPU (needs --dataset, unless the .tflite is already quantized); "
                        "float: float32 on the CPU (default uint8)")
    c.add_argument("--input-type", default="default", choices=INPUT_TYPES,
                   help="type of the kmodel input; default = the inference type (uint8: raw RGB bytes)")
    c.add_argument("--calibrate-method", default="no_clip", choices=CALIBRATE_METHODS,
                   help="no_clip: min/max; l2: histogram threshold search, one more pass (default no_clip)")
    c.add_argument("--max-allocator-solve-secs", type=float, default=60.0,
                   help="CP-SAT budget per allocator, deterministic (same output on every run); 0 = first fit only")
    c.add_argument("--memory-report", action="store_true",
                   help="print every buffer's offset, size and lifetime (main memory and KPU RAM)")
    c.add_argument("--weights-quantize-threshold", type=float, default=64.0,
                   help="a conv whose widest per-channel weight range exceeds this stays float on the CPU (64)")
    c.add_argument("--output-quantize-threshold", type=int, default=1024,
                   help="fully-connected layers with fewer weights or outputs than this stay float (1024)")
    c.add_argument("--no-quantized-binary", action="store_true",
                   help="accepted for ncc compatibility; changes nothing: kcc runs CPU binary ops in float anyway")
    c.add_argument("--decompose", default="accurate", choices=DECOMPOSE_MODES,
                   help="convs the KPU lacks (5x5, 7x7, ...) as 3x3 KPU layers: accurate = only in a form that "
                        "rounds no more than the CPU conv, fast = the fastest form, off = leave them on the CPU "
                        "like ncc; either way only when estimated faster than the CPU (default accurate)")
    c.add_argument("--weight-equalization", default="ncc", choices=WEIGHT_EQUALIZATIONS,
                   help="turned = KPU channels may be turned over (negative batch-norm multiplier) for finer "
                        "weight steps (opt-in: not verified on a board); ncc = every multiplier positive, as ncc writes them (default)")
    c.add_argument("--dump-ir", nargs="?", const=Path("."), type=Path, default=None, metavar="DIR",
                   help="write the IR of every stage as NN-<stage>.dot/.txt into DIR (default: .)")
    c.add_argument("--dump-weights-range", action="store_true",
                   help="print name{min, max} of the weights of every conv / fully-connected layer, like ncc")
    c.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write report.md/.json and PNG plots: placement, per-layer quantization error, "
                        "memory, estimated latency")
    _add_clock_flags(c)
    c.add_argument("-q", "--quiet", action="store_true", help="print errors only (no stage lines, no progress bars)")
    c.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    r = sub.add_parser("infer", help="run a kmodel v4 on the simulator, like `ncc infer`")
    r.add_argument("model", type=Path, help="kmodel v4 file")
    r.add_argument("output", type=Path, nargs="?", default=Path("out"),
                   help="output directory: one <input stem>.bin per input file (default ./out)")
    _add_dataset_flags(r)
    r.add_argument("-q", "--quiet", action="store_true")
    r.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    i = sub.add_parser("info", help="describe a kmodel v4: inputs, outputs, nodes, memory, runtime, MaixPy")
    i.add_argument("model", type=Path, help="kmodel v4 file")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.add_argument("--estimate", action="store_true", help="add the estimated K210 latency per node and in total")
    _add_clock_flags(i)
    i.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def _shape(s) -> str:
    return "x".join(str(d) for d in s)


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


def _check_clocks(args: argparse.Namespace) -> None:
    for flag, mhz in (("--kpu-clock", args.kpu_clock), ("--cpu-clock", args.cpu_clock)):
        if not 0 < mhz <= 2000:
            raise KccError(f"{flag} {mhz:g}: expected a clock in MHz between 0 and 2000 (the K210 runs at 400)")


EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell shows for a command Ctrl-C ended
# stdout's reader went away (`kcc info m.kmodel | head -2`): 128 + SIGPIPE, the status a shell reports
# for cat or grep ended by SIGPIPE in the same place (`yes | head -1; echo ${PIPESTATUS[0]}` -> 141), so a
# `set -o pipefail` script sees kcc like any Unix tool; 0 would claim the whole output was read.
EXIT_PIPE_CLOSED = 141


class _Run:
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


def cmd_compile(args: argparse.Namespace, run: _Run | None = None) -> int:
    import dataclasses

    from kcc.latency import estimate
    from kcc.frontend.importer import is_prequantized
    from kcc.pipeline import compile_model
    from kcc.options import CompileOptions
    from kcc.weights_range import format_weights_range

    from kcc import progress as bars

    run = run or _Run()
    say = (lambda line: None) if args.quiet else print
    if args.input_format not in INPUT_FORMATS:
        raise KccError(f"input format '{args.input_format}' is not supported: kcc reads TensorFlow Lite models "
                       f"(-i tflite); convert caffe/onnx/paddle models to .tflite first")
    if not args.input.is_file():
        raise KccError(f"input model '{args.input}' does not exist or is not a file")
    if args.dataset is None and args.inference_type == "uint8" and not is_prequantized(args.input):
        # a pre-quantized (uint8/int8) .tflite brings its own ranges (kcc.quant.prequantized)
        raise DatasetError("--dataset is required for --inference-type uint8 (calibration images or raw files)",
                           hint="pass --dataset DIR, or --inference-type float")
    _check_clocks(args)
    check_writable(args.output, "output")
    if args.report is not None:
        check_writable(args.report, "report directory", directory=True)
    if args.dump_ir is not None:
        check_writable(args.dump_ir, "IR dump directory", directory=True)
    opts = CompileOptions(
        target=args.target, inference_type=args.inference_type, input_type=args.input_type,
        dataset=args.dataset, dataset_format=args.dataset_format, input_mean=args.input_mean,
        input_std=args.input_std, calibrate_method=args.calibrate_method,
        max_allocator_solve_secs=args.max_allocator_solve_secs,
        weights_quantize_threshold=args.weights_quantize_threshold,
        output_quantize_threshold=args.output_quantize_threshold,
        no_quantized_binary=args.no_quantized_binary, decompose=args.decompose,
        weight_equalization=args.weight_equalization, dump_ir=args.dump_ir,
        dump_weights_range=args.dump_weights_range)
    # the IR dump is written stage by stage: into a staging folder, published with the kmodel;
    # the report still records the --dump-ir the user gave
    staged = opts
    if args.dump_ir is not None:
        staged = dataclasses.replace(opts, dump_ir=run.outputs.directory(args.dump_ir))
    progress = bars.Bars() if bars.enabled(args.quiet) else None
    try:
        result = compile_model(args.input, staged, log=say, progress=progress)
        report = None
        if args.report is not None:
            from kcc import report as reports

            say("8. Measure per-layer quantization error for the report...")
            report = reports.build(result, opts, args.input.name, args.kpu_clock, args.cpu_clock, progress)
    finally:
        if progress is not None:
            progress.close()
    if report is not None:
        reports.write(report, run.outputs.directory(args.report))
    run.outputs.file(args.output, result.kmodel)  # the last file staged: its rename is the commit point
    run.publish()
    for item in result.weights_ranges:  # asked for explicitly: printed even with -q, as ncc does
        print(format_weights_range(item))
    from kcc.summary import compile_lines  # placements, memory, latency, SUMMARY: in the model's names

    est = estimate(result.emitted.model, args.kpu_clock, args.cpu_clock)
    for line in compile_lines(result, est, args.memory_report, args.report):
        say(line)
    return 0


def cmd_infer(args: argparse.Namespace, run: _Run | None = None) -> int:
    import time

    import kpu_sim
    from kcc.dataset import iter_dataset, list_files

    run = run or _Run()
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


def cmd_info(args: argparse.Namespace, run: _Run | None = None) -> int:
    import json

    from kcc.info import describe, format_text

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


def _dump_ir_flag(argv: list[str]) -> list[str]:
    """ncc's `--dump-ir` is a bare flag; kcc's takes an optional DIR. A model path right after it is a
    positional argument of an ncc command line, not the dump directory."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--dump-ir" and Path(out[i + 1]).suffix.lower() in (".tflite", ".kmodel"):
            out[i] = "--dump-ir=."
    return out


def _dispatch(argv: list[str], run: _Run) -> int:
    from kcc.cli_legacy import check as check_legacy

    check_legacy(argv)
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 1
    return {"compile": cmd_compile, "infer": cmd_infer, "info": cmd_info}[args.command](args, run)


def _say_error(message: str) -> None:
    try:
        print(f"error: {message}", file=sys.stderr)
    except (OSError, ValueError):  # stderr is gone too: nobody is left to tell
        pass


def _reader_gone(own_process: bool) -> int:
    """stdout's reader closed the pipe (`kcc info m.kmodel | head -2`): not an error, and no message."""
    if own_process:
        # the rest of stdout's buffer goes to /dev/null: else the interpreter's last flush fails
        # again and prints "Exception ignored ... BrokenPipeError" on its way out
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
    return EXIT_PIPE_CLOSED


def _failure(error: BaseException, run: _Run, debug: bool, own_process: bool) -> int:
    """The exit code of a command that raised `error`, after its one `error:` line (if any)."""
    if run.interrupted or isinstance(error, KeyboardInterrupt):
        # whatever the Ctrl-C became on its way up: an ImportError from a C extension's init
        # (OR-tools), an error from tqdm, ... it is reported as what the user did
        _say_error("interrupted")
        return EXIT_INTERRUPTED
    if isinstance(error, BrokenPipeError):
        return _reader_gone(own_process)
    if isinstance(error, KccError):
        _say_error(error.one_line())
        return 1
    if isinstance(error, SystemExit):  # --help, --version: what they printed must reach the reader
        if own_process:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                return _reader_gone(own_process)
        raise error
    if debug or not isinstance(error, Exception):
        raise error
    if isinstance(error, OSError):  # unreadable file, full disk, ...: the user's environment, not a kcc bug
        where = f" '{error.filename}'" if error.filename else ""
        _say_error(f"{error.strerror or error}{where}")
        return 1
    # a kcc bug: say so in one line unless --debug asks for the traceback
    _say_error(f"internal error: {type(error).__name__}: {error} (this is a kcc bug; rerun with --debug "
               f"for the traceback)")
    return 2


def _main(argv: list[str], run: _Run, own_process: bool) -> int:
    debug = "--debug" in argv
    error: BaseException | None = None
    try:
        try:
            code = _dispatch(_dump_ir_flag(argv), run)
            if own_process:
                sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        except BaseException as e:
            error = e
    except KeyboardInterrupt as e:  # the Ctrl-C landed just as another exception was being caught
        error = e
    run.armed = False  # the command is over: what follows is cleanup and one line, not to be cut short
    run.abort()
    return code if error is None else _failure(error, run, debug, own_process)


def _quiet_interrupt(hook, unraisable) -> None:
    """sys.unraisablehook: a Ctrl-C raised in a `__del__` or a callback cannot propagate; main reports
    it (`_Run.interrupted`) as the one `error: interrupted` line, not as an 'Exception ignored' block."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        hook(unraisable)


def main(argv: list[str] | None = None) -> int:
    """The `kcc` command; returns its exit code.

    `argv` None: this process is the command (the `kcc` script, `python -m kcc`). Then stdout is
    flushed here, where a closed pipe can still be handled, and Ctrl-C stays ignored after main
    returns: only the interpreter's exit is left, and a KeyboardInterrupt there would be a traceback
    after the outputs were complete; an interrupted command exits right here (os._exit). Called with
    `argv` (tests, scripts), the caller's SIGINT handler is restored on return."""
    own_process = argv is None
    run = _Run()
    previous = None
    unraisable = sys.unraisablehook
    try:
        try:
            previous = signal.signal(signal.SIGINT, run.on_sigint)
        except ValueError:  # not the main thread: Ctrl-C is not this call's to handle
            pass
        sys.unraisablehook = functools.partial(_quiet_interrupt, unraisable)
        code = _main(sys.argv[1:] if own_process else list(argv), run, own_process)
    except KeyboardInterrupt:  # the Ctrl-C landed outside _main's handlers (in them, or before them)
        run.armed = False
        run.abort()
        _say_error("interrupted")
        code = EXIT_INTERRUPTED
    finally:
        run.armed = False
        sys.unraisablehook = unraisable
        if own_process:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # SIG_IGN: the interpreter keeps it to the end
        elif previous is not None:
            signal.signal(signal.SIGINT, previous)
    if own_process and code == EXIT_INTERRUPTED:
        # Leave without the interpreter's exit: a KeyboardInterrupt that passed through a library's
        # nested PyRun_String (pybind11_abseil, loaded with OR-tools, calls it) sets CPython's
        # "unhandled KeyboardInterrupt" flag, and Py_RunMain then kills the process with SIGINT
        # after all, whatever main returned. The staged outputs are gone; only the streams remain.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
