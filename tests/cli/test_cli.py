"""The command line: ncc-style flags, one-line errors, no partial output files."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kcc.cli import main

ROOT = Path(__file__).resolve().parents[2]
MOBILENET = ROOT / "datasets" / "mobilenet_v1_0.25_128" / "mobilenet_v1_0.25_128.tflite"
IMAGES = ROOT / "datasets" / "mobilenet_v1_0.25_128" / "images"


def _err(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def float_kmodel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("km") / "mobilenet.kmodel"
    assert main(["compile", str(MOBILENET), str(out), "--inference-type", "float", "-q"]) == 0
    return out


def test_compile_float_then_infer_images(float_kmodel, tmp_path, capsys):
    assert float_kmodel.stat().st_size > 1_000_000
    outdir = tmp_path / "out"
    assert main(["infer", str(float_kmodel), str(outdir), "--dataset", str(IMAGES),
                 "--input-mean", "0.5", "--input-std", "0.5"]) == 0
    files = sorted(outdir.glob("*.bin"))
    assert len(files) == len(list(IMAGES.iterdir()))
    scores = np.fromfile(outdir / "skimage_chelsea.bin", np.float32)
    assert scores.shape == (1001,) and abs(scores.sum() - 1) < 1e-4
    assert 281 <= int(scores.argmax()) <= 288  # a cat class (tabby/tiger/Egyptian/Persian/... cat)


def test_compile_is_deterministic(float_kmodel, tmp_path):
    again = tmp_path / "again.kmodel"
    assert main(["compile", str(MOBILENET), str(again), "--inference-type", "float", "-q"]) == 0
    assert again.read_bytes() == float_kmodel.read_bytes()


def _openblas_x86() -> bool:
    """numpy's BLAS is OpenBLAS on an x86 CPU with AVX2, so that OPENBLAS_CORETYPE picks its kernels."""
    cpuinfo = Path("/proc/cpuinfo")
    return (cpuinfo.exists() and " avx2" in cpuinfo.read_text()
            and "openblas" in str(np.show_config(mode="dicts").get("Build Dependencies", {})).lower())


@pytest.mark.skipif(not _openblas_x86(), reason="needs numpy on OpenBLAS on an x86 CPU with AVX2")
def test_compile_gives_the_same_bytes_whatever_blas_kernels_the_machine_uses(tmp_path):
    """A uint8 compile (calibration in kcc's float interpreter) run with OpenBLAS' SSE3 kernels and its
    AVX2 ones, as on an old and a new x86 CPU: the same kmodel bytes. The float32 GEMMs of both sum in
    different orders, which moved the calibrated ranges and every kmodel byte from one machine to
    another until the interpreter's contractions were taken in float64 (kcc.eval.kernels)."""
    out = {}
    for core in ("Prescott", "Haswell"):
        out[core] = tmp_path / f"{core}.kmodel"
        env = {**os.environ, "OPENBLAS_CORETYPE": core}
        subprocess.run([sys.executable, "-m", "kcc", "compile", str(MOBILENET), str(out[core]), "-q",
                        "--dataset", str(IMAGES), "--input-mean", "0.5", "--input-std", "0.5"],
                       env=env, check=True, timeout=600)
    assert out["Prescott"].read_bytes() == out["Haswell"].read_bytes()


def test_dump_ir_writes_every_stage(tmp_path):
    dump = tmp_path / "ir"
    assert main(["compile", str(MOBILENET), str(tmp_path / "m.kmodel"), "--inference-type", "float",
                 "-q", "--dump-ir", str(dump)]) == 0
    names = sorted(p.name for p in dump.iterdir())
    assert "01-import.dot" in names and "01-import.txt" in names
    assert any(n.endswith("lower_to_neutral.dot") for n in names)
    assert (dump / "01-import.dot").read_text().startswith("digraph")


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, bytes(range(256)) * 4])
def test_malformed_tflite(tmp_path, capsys, content):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    out = tmp_path / "bad.kmodel"
    assert main(["compile", str(bad), str(out), "--inference-type", "float"]) == 1
    assert "bad.tflite" in _err(capsys)
    assert not out.exists() and not list(tmp_path.glob(".bad.kmodel*"))


def test_truncated_tflite(tmp_path, capsys):
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(MOBILENET.read_bytes()[:5000])
    assert main(["compile", str(bad), str(tmp_path / "cut.kmodel"), "--inference-type", "float"]) == 1
    _err(capsys)
    assert not (tmp_path / "cut.kmodel").exists()


@pytest.mark.parametrize("argv,needle", [
    (["compile", "missing.tflite", "x.kmodel", "--inference-type", "float"], "missing.tflite"),
    (["compile", str(MOBILENET), "x.kmodel"], "--dataset"),
    (["compile", str(MOBILENET), "x.kmodel", "--inference-type", "int4"], "inference-type"),
    (["compile", str(MOBILENET), "/nonexistent/dir/x.kmodel", "--inference-type", "float"], "/nonexistent/dir"),
    (["compile"], "required"),
    (["infer", "missing.kmodel", "--dataset", str(IMAGES)], "missing.kmodel"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert needle in _err(capsys)
    assert not (tmp_path / "x.kmodel").exists()


def test_infer_errors(float_kmodel, tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "short.bin").write_bytes(b"\0" * 100)
    assert main(["infer", str(float_kmodel), str(tmp_path / "o"), "--dataset", str(raw), "--dataset-format", "raw"]) == 1
    assert "short.bin" in _err(capsys) and not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["infer", str(float_kmodel), str(tmp_path / "o"), "--dataset", str(empty)]) == 1
    assert "no image" in _err(capsys)
    (tmp_path / "junk.kmodel").write_bytes(b"LDMK" + b"\0" * 10)
    assert main(["infer", str(tmp_path / "junk.kmodel"), "--dataset", str(IMAGES)]) == 1
    assert "junk.kmodel" in _err(capsys)


def test_infer_raw_matches_image_path(float_kmodel, tmp_path):
    from kcc.dataset import load_image
    x = load_image(IMAGES / "skimage_coffee.jpg", (1, 3, 128, 128), np.float32, 0.5, 0.5)
    raw = tmp_path / "raw"
    raw.mkdir()
    x.tofile(raw / "coffee.bin")
    assert main(["infer", str(float_kmodel), str(tmp_path / "o"), "--dataset", str(raw), "--dataset-format", "raw", "-q"]) == 0
    scores = np.fromfile(tmp_path / "o" / "coffee.bin", np.float32)
    assert int(scores.argmax()) == 968  # espresso


def test_errors_name_the_stage_only_where_it_helps(tmp_path, capsys, monkeypatch):
    """A user's error speaks in the model's terms; a compiler bug names the stage that raised it."""
    import kcc.pipeline

    out = tmp_path / "m.kmodel"
    assert main(["compile", str(MOBILENET), str(out), "--dataset", str(tmp_path / "none"), "-q"]) == 1
    line = _err(capsys)
    assert line.endswith("none' does not exist") and "in stage" not in line and not out.exists()

    def bug(g, ctx):
        raise ValueError("bad shape")

    monkeypatch.setattr(kcc.pipeline, "lower_to_neutral", bug)
    assert main(["compile", str(MOBILENET), str(out), "--inference-type", "float", "-q"]) == 2
    assert _err(capsys).startswith("error: internal error in stage lower_to_neutral: ValueError: bad shape")
    assert not out.exists()
