"""Issue #18: Ctrl-C and closed pipes.

Ctrl-C at any point of a command: exit 130, the one line `error: interrupted`, and no new or changed
output file (an existing kmodel keeps its bytes, a report or IR dump folder that did not exist does
not appear); or, if it came too late, exit 0 with every output complete. A stdout pipe closed by its
reader: exit 141 and nothing on stderr (kcc/cli/__init__.py, EXIT_PIPE_CLOSED).

The sweeps run the real `kcc` processes and time the SIGINT from the moment the child has mapped
numpy's C extension (/proc/PID/maps): `kcc.cli` imports nothing heavy, so kcc's handler is installed
by then. Before kcc's `main()` runs, a Ctrl-C meets Python's own startup (site, the import of
`kcc.cli`): a traceback no program can prevent, not part of these tests.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kcc.cli import main

ROOT = Path(__file__).resolve().parents[2]
MOBILENET_DIR = ROOT / "datasets" / "mobilenet_v1_0.25_128"
_spec = importlib.util.spec_from_file_location("tflite_builder", ROOT / "tests" / "tflite_builder.py")
_builder = sys.modules.setdefault("tflite_builder", importlib.util.module_from_spec(_spec))
if not hasattr(_builder, "TfliteBuilder"):
    _spec.loader.exec_module(_builder)

PYTHON_M = [sys.executable, "-m", "kcc"]
SCRIPT = Path(sys.executable).with_name("kcc")  # the console script of the editable install
ENTRY_POINTS = [PYTHON_M] + ([[str(SCRIPT)]] if SCRIPT.is_file() else [])
OLD_KMODEL = b"a kmodel from an earlier compile"

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Path]:
    """A two-layer conv model (both layers on the KPU), three small pictures and a compiled kmodel."""
    from PIL import Image

    rng = np.random.default_rng(7)
    b = _builder.TfliteBuilder()
    x = b.input([1, 16, 16, 3])
    y = b.op("CONV_2D", [x, b.const(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4),
                         b.const(np.zeros(8, np.float32))], padding="SAME", stride_w=1, stride_h=1,
             fused_activation_function="RELU", name="conv1")
    b.output(b.op("CONV_2D", [y, b.const(rng.standard_normal((4, 1, 1, 8)).astype(np.float32) * 0.4),
                              b.const(np.full(4, 0.1, np.float32))], padding="SAME", stride_w=1, stride_h=1,
                  name="conv2"))
    d = tmp_path_factory.mktemp("ctrl_c")
    (d / "two.tflite").write_bytes(b.build())
    images = d / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"p{i}.png")
    assert main(["compile", str(d / "two.tflite"), str(d / "two.kmodel"), "--dataset", str(images),
                 "-q"]) == 0
    return {"model": d / "two.tflite", "images": images, "kmodel": d / "two.kmodel"}


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder`, hidden ones included, with the bytes of each file."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def _wait_until_kcc_runs(proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        try:
            if "_multiarray_umath" in Path(f"/proc/{proc.pid}/maps").read_text():
                return
        except OSError:  # exited meanwhile
            return
        time.sleep(0.002)


def _run(cmd: list[str], argv: list[str], cwd: Path, delay: float | None) -> tuple[int, str, float]:
    """Run kcc; with `delay`, send SIGINT that long after kcc's main() is known to run. Returns the
    exit code, stderr and the seconds from then to the exit."""
    proc = subprocess.Popen(cmd + argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_until_kcc_runs(proc)
    start = time.monotonic()
    if delay is not None:
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)  # no-op once the child has exited
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err.decode(), time.monotonic() - start


def _sweep(cmds: list[list[str]], argv: list[str], work: Path, prepare,
           delays: list[float] | int) -> list[int]:
    """Interrupt `argv` (paths relative to `work`) after each delay; returns the exit codes.

    `delays` an int n: 0 and n - 1 delays from 50 ms to four times the length of an uninterrupted run
    (from kcc's start to its exit; a loaded machine can take twice as long), geometrically spaced. Every run starts from `prepare(work)`.
    Interrupted: one line and `work` exactly as prepared. Not interrupted in time: exit 0, nothing
    on stderr, and `work` exactly as a run without SIGINT leaves it (the outputs are deterministic)."""
    prepare(work)
    before = _tree(work)
    code, err, seconds = _run(cmds[0], argv, work, None)
    assert (code, err) == (0, ""), err
    complete = _tree(work)
    assert complete != before
    if isinstance(delays, int):
        delays = [0.0] + list(np.geomspace(0.05, 4 * seconds, delays - 1))
    codes = []
    for i, delay in enumerate(delays):
        prepare(work)
        code, err, _ = _run(cmds[i % len(cmds)], argv, work, delay)
        after = _tree(work)
        if code == 130:
            assert err == "error: interrupted\n", (delay, err)
            assert after == before, (delay, sorted(set(after) ^ set(before)))
        else:
            assert (code, err) == (0, ""), (delay, code, err)
            assert after == complete, (delay, sorted(set(after) ^ set(complete)))
        codes.append(code)
    return codes


def _fresh(work: Path, existing_report: bool = False):
    def prepare(_: Path) -> None:
        for p in sorted(work.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (work / "m.kmodel").write_bytes(OLD_KMODEL)
        if existing_report:
            (work / "rep").mkdir()
            (work / "rep" / "report.md").write_text("an earlier report\n")
            (work / "rep" / "notes.txt").write_text("the user's\n")
    return prepare


def test_cli_imports_nothing_heavy():
    """kcc's Ctrl-C handler is installed by main(); the import of kcc.cli before it must stay short
    (a Ctrl-C there is Python's traceback) and load neither numpy nor the compiler, which is also
    what lets the sweeps below tell from numpy's mapping that main() runs."""
    heavy = ("numpy", "ortools", "kcc.pipeline", "kcc.options")
    probe = f"import sys, kcc.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_interrupted_compile_leaves_no_output(kit, tmp_path):
    """SIGINT right as kcc starts working and half a second in, with an existing kmodel, --report into
    an existing folder and --dump-ir into a new one (a new --report folder: the in-process tests below);
    once through `python -m kcc`, once through the console script."""
    argv = ["compile", str(kit["model"]), "m.kmodel", "--dataset", str(kit["images"]), "-q",
            "--report", "rep", "--dump-ir", "ir"]
    codes = _sweep(ENTRY_POINTS, argv, tmp_path, _fresh(tmp_path, existing_report=True), [0.0, 0.5])
    assert codes[0] == 130  # the compile after numpy's import takes far longer than a signal


def test_interrupted_infer_and_info(kit, tmp_path):
    infer = ["infer", str(kit["kmodel"]), "out", "--dataset", str(kit["images"])]
    _sweep([PYTHON_M], infer, tmp_path, _fresh(tmp_path), [0.0])  # tiny: may be done before the signal
    code, err, _ = _run(PYTHON_M, ["info", str(kit["kmodel"]), "--estimate"], tmp_path, 0.0)
    assert (code, err) in ((130, "error: interrupted\n"), (0, "")), (code, err)


# ------------------------------------------------------------------ the same, at chosen points, in-process
@pytest.fixture()
def float_compile(kit, tmp_path):
    """argv of a fast float compile of the kit model with a new --report and --dump-ir folder, next to
    an existing kmodel."""
    (tmp_path / "m.kmodel").write_bytes(OLD_KMODEL)
    return ["compile", str(kit["model"]), str(tmp_path / "m.kmodel"), "--inference-type", "float", "-q",
            "--report", str(tmp_path / "rep"), "--dump-ir", str(tmp_path / "ir")]


def _ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)


def _assert_interrupted(code: int, capsys, tmp_path: Path) -> None:
    assert code == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    assert _tree(tmp_path) == {"m.kmodel": OLD_KMODEL}


def test_ctrl_c_while_the_report_is_measured(float_compile, tmp_path, monkeypatch, capsys):
    """Step 8 of a --report compile: the kmodel is ready, the report is not."""
    from kcc.report import compile_report as report

    build = report.build
    monkeypatch.setattr(report, "build", lambda *a, **k: (_ctrl_c(), build(*a, **k))[1])
    before = signal.getsignal(signal.SIGINT)
    _assert_interrupted(main(float_compile), capsys, tmp_path)
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_ctrl_c_after_the_report_is_staged(float_compile, tmp_path, monkeypatch, capsys):
    from kcc.report import compile_report as report

    write = report.write
    monkeypatch.setattr(report, "write", lambda *a, **k: (write(*a, **k), _ctrl_c())[0])
    _assert_interrupted(main(float_compile), capsys, tmp_path)


def test_ctrl_c_turned_into_another_exception(float_compile, tmp_path, monkeypatch, capsys):
    """A C extension's import (OR-tools) reports a KeyboardInterrupt as 'ImportError: initialization
    failed'; it is still the user's Ctrl-C, not a kcc bug (exit 2)."""
    import kcc.pipeline

    def import_fails(*args, **kwargs):
        try:
            _ctrl_c()
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    monkeypatch.setattr(kcc.pipeline, "compile_model", import_fails)
    _assert_interrupted(main(float_compile), capsys, tmp_path)


def test_ctrl_c_swallowed_on_the_way_still_writes_nothing(float_compile, tmp_path, monkeypatch, capsys):
    import kcc.pipeline

    compile_model = kcc.pipeline.compile_model

    def swallowing(*args, **kwargs):
        try:
            _ctrl_c()
        except KeyboardInterrupt:
            pass  # as a library's `except BaseException` or a __del__ would
        return compile_model(*args, **kwargs)

    monkeypatch.setattr(kcc.pipeline, "compile_model", swallowing)
    _assert_interrupted(main(float_compile), capsys, tmp_path)


def test_ctrl_c_during_the_commit_completes_it(float_compile, tmp_path, monkeypatch, capsys):
    """Between the first and the last rename Ctrl-C waits; after the commit point it is too late:
    exit 0 and every output complete, as without it."""
    import kcc.atomic

    replace = os.replace
    renames = []

    def replace_once_interrupted(src, dst):
        if ".kcc-" not in str(dst):  # a final place, not the report's own staging inside the CLI's
            if not renames:
                _ctrl_c()
            renames.append(Path(dst).name)
        replace(src, dst)

    monkeypatch.setattr(kcc.atomic.os, "replace", replace_once_interrupted)
    assert main(float_compile) == 0
    assert capsys.readouterr().err == ""
    assert renames[-1] == "m.kmodel"  # the kmodel's rename is the last: the commit point
    assert (tmp_path / "m.kmodel").read_bytes()[:4] == b"LDMK"
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["latency.png", "report.json", "report.md"]
    assert (tmp_path / "ir" / "01-import.txt").is_file()
    assert not [p for p in tmp_path.rglob(".*")]


def test_second_ctrl_c_does_not_cut_the_cleanup_short(float_compile, tmp_path, monkeypatch, capsys):
    import kcc.atomic
    from kcc.report import compile_report as report

    build = report.build
    monkeypatch.setattr(report, "build", lambda *a, **k: (_ctrl_c(), build(*a, **k))[1])
    abort = kcc.atomic.Outputs.abort
    monkeypatch.setattr(kcc.atomic.Outputs, "abort", lambda self: (_ctrl_c(), abort(self)))
    _assert_interrupted(main(float_compile), capsys, tmp_path)


NESTED_MAIN = """
import ctypes, sys
import kcc.cli.legacy
from kcc.cli import main

run_string = ctypes.pythonapi.PyRun_String
run_string.restype = ctypes.py_object
run_string.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]

def check(argv):  # the Ctrl-C lands in Python source run from C, as pybind11_abseil's while OR-tools loads
    run_string(b"import signal; signal.raise_signal(signal.SIGINT)", 257, {}, {})  # 257: Py_file_input

kcc.cli.legacy.check = check
sys.argv = ["kcc", "info", "m.kmodel"]
sys.exit(main())
"""


def test_ctrl_c_in_a_nested_interpreter_call_still_exits_130(tmp_path):
    """Such a KeyboardInterrupt sets CPython's 'unhandled KeyboardInterrupt' flag, and a `python -m`
    run then ends by SIGINT (returncode -2) whatever main returned."""
    (tmp_path / "nested_kcc").mkdir()
    (tmp_path / "nested_kcc" / "__main__.py").write_text(NESTED_MAIN)
    proc = subprocess.run([sys.executable, "-m", "nested_kcc"], cwd=tmp_path, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (130, "error: interrupted\n")


# ------------------------------------------------------------------ closed pipes
def _closed_pipe(cmd: list[str], cwd: Path) -> tuple[int, str]:
    """Run with stdout a pipe whose reader is already gone: the first write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=write, stderr=subprocess.PIPE, timeout=600)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr.decode()


@pytest.mark.parametrize("argv", [["info", "{kmodel}"], ["info", "{kmodel}", "--json", "--estimate"],
                                  ["--help"]])
def test_closed_pipe_ends_quietly(kit, tmp_path, argv):
    argv = [a.format(kmodel=kit["kmodel"]) for a in argv]
    assert _closed_pipe(PYTHON_M + argv, tmp_path) == (141, "")


def test_closed_pipe_after_infer_wrote_its_outputs(kit, tmp_path):
    """infer prints its one line after the commit point: its outputs are complete."""
    code = _closed_pipe(PYTHON_M + ["infer", str(kit["kmodel"]), "out", "--dataset", str(kit["images"])],
                        tmp_path)
    assert code == (141, "")
    assert sorted(_tree(tmp_path)) == ["out", "out/p0.bin", "out/p1.bin", "out/p2.bin"]


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["info", "--help"], ["--version"]])
def test_closed_pipe_ends_argparse_output_quietly(argv, tmp_path):
    assert _closed_pipe(PYTHON_M + argv, tmp_path) == (141, "")


@pytest.mark.slow
def test_closed_pipe_leaves_all_compile_outputs_or_none(kit, tmp_path):
    """compile prints while it works (stage lines, unless stdout is block-buffered) and after the
    commit point: the closed pipe ends it at the first write that reaches the pipe, before or after
    the commit, so the kmodel is complete or absent."""
    argv = ["compile", str(kit["model"]), "m.kmodel", "--dataset", str(kit["images"])]
    code = _closed_pipe(PYTHON_M + argv, tmp_path)
    assert code == (141, "")
    assert _tree(tmp_path) in ({}, {"m.kmodel": kit["kmodel"].read_bytes()})


# ------------------------------------------------------------------ the thorough sweep (slow)
@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mobilenet_ctrl_c")
    images = d / "images"
    images.mkdir()
    for src in sorted((MOBILENET_DIR / "images").iterdir())[:3]:
        (images / src.name).write_bytes(src.read_bytes())
    return {"model": MOBILENET_DIR / "mobilenet_v1_0.25_128.tflite", "images": images}


@pytest.mark.slow
@pytest.mark.parametrize("outputs", [[], ["--report", "rep", "--dump-ir", "ir"]], ids=["kmodel", "report+ir"])
def test_mobilenet_compile_interrupted_anywhere(mobilenet, tmp_path, outputs):
    argv = ["compile", str(mobilenet["model"]), "m.kmodel", "--dataset", str(mobilenet["images"]),
            "--input-mean", "0.5", "--input-std", "0.5", "-q"] + outputs
    codes = _sweep(ENTRY_POINTS, argv, tmp_path, _fresh(tmp_path), 15)
    assert codes[0] == 130 and codes[-1] == 0, codes  # the sweep spans the whole compile


@pytest.mark.slow
def test_mobilenet_compile_interrupted_keeps_an_existing_report(mobilenet, tmp_path):
    argv = ["compile", str(mobilenet["model"]), "m.kmodel", "--dataset", str(mobilenet["images"]), "-q",
            "--report", "rep"]
    codes = _sweep(ENTRY_POINTS, argv, tmp_path, _fresh(tmp_path, existing_report=True), 8)
    assert codes[0] == 130 and codes[-1] == 0, codes


@pytest.mark.slow
def test_mobilenet_infer_interrupted_anywhere(mobilenet, tmp_path):
    kmodel = tmp_path.parent / f"{tmp_path.name}.kmodel"
    assert main(["compile", str(mobilenet["model"]), str(kmodel), "--inference-type", "float", "-q"]) == 0
    argv = ["infer", str(kmodel), "out", "--dataset", str(mobilenet["images"])]
    codes = _sweep(ENTRY_POINTS, argv, tmp_path, _fresh(tmp_path), 10)
    assert codes[0] == 130 and codes[-1] == 0, codes
