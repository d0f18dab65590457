"""The `kcc` command line: ncc v0.2-compatible `compile` and `infer` (ecosystem.md §5.1-§5.2), and `info`.

Only argument parsing (`parser`), printing and file handling (`commands`) live in this package; the
compiler is `kcc.pipeline`, and an ncc v0.1 command line gets its v0.2 equivalent (`legacy`).

Every `KccError` becomes one `error: ...` line on stderr and exit code 1; Ctrl-C becomes
`error: interrupted` and exit code 130; a stdout pipe closed by its reader ends the command quietly
(exit 141). In each case no output file is new or changed: outputs are staged and published together
at the end (`kcc.atomic.Outputs`). Anything else is a kcc bug: a one-line report, or the traceback
with `--debug`.

Module-level imports are kept to what is loaded anyway: `main()` installs the Ctrl-C handler, and
until it runs a Ctrl-C is Python's default, a traceback. The compiler is imported inside the commands.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

from kcc.cli.commands import COMMANDS, Run
from kcc.cli.parser import build_parser, dump_ir_flag
from kcc.errors import KccError

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell shows for a command Ctrl-C ended
# stdout's reader went away (`kcc info m.kmodel | head -2`): 128 + SIGPIPE, the status a shell reports
# for cat or grep ended by SIGPIPE in the same place (`yes | head -1; echo ${PIPESTATUS[0]}` -> 141), so a
# `set -o pipefail` script sees kcc like any Unix tool; 0 would claim the whole output was read.
EXIT_PIPE_CLOSED = 141


def _dispatch(argv: list[str], run: Run) -> int:
    from kcc.cli.legacy import check as check_legacy

    check_legacy(argv)
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 1
    return COMMANDS[args.command](args, run)


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


def _failure(error: BaseException, run: Run, debug: bool, own_process: bool) -> int:
    """The exit code of a command that raised `error`, after its one `error:` line (if any)."""
    if run.interrupted or isinstance(error, KeyboardInterrupt):
        # whatever the Ctrl-C became on its way up: an ImportError from a C extension's init
        # (OR-tools), an error from tqdm, ... it is reported as what the user did
        _say_error("interrupted")
        return EXIT_INTERRUPTED
    if isinstance(error, BrokenPipeError):
        return _reader_gone(own_process)
    if isinstance(error, KccError):
        stage = getattr(error, "kcc_stage", None) if debug else None
        _say_error(error.one_line() + (f" [stage {stage}]" if stage else ""))
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
    stage = getattr(error, "kcc_stage", None)
    where = f" in stage {stage}" if stage else ""
    _say_error(f"internal error{where}: {type(error).__name__}: {error} (this is a kcc bug; rerun with --debug "
               f"for the traceback)")
    return 2


def _main(argv: list[str], run: Run, own_process: bool) -> int:
    debug = "--debug" in argv
    error: BaseException | None = None
    try:
        try:
            code = _dispatch(dump_ir_flag(argv), run)
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
    it (`Run.interrupted`) as the one `error: interrupted` line, not as an 'Exception ignored' block."""
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
    run = Run()
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
        # "unhandled KeyboardInterrupt" flag, and PyRunMain then kills the process with SIGINT
        # after all, whatever main returned. The staged outputs are gone; only the streams remain.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code
