"""A corpus of user mistakes: each one is exactly one `error:` line, a non-zero exit, no traceback
and no file left behind (issue #6, ecosystem.md §2 P7)."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from kcc.cli import main

ROOT = Path(__file__).resolve().parents[2]
# tests/tflite_builder.py, loaded by path: putting tests/ on sys.path would let tests/kpu_sim shadow kpu_sim
_spec = importlib.util.spec_from_file_location("tflite_builder", ROOT / "tests" / "tflite_builder.py")
_builder = sys.modules.setdefault("tflite_builder", importlib.util.module_from_spec(_spec))
if not hasattr(_builder, "TfliteBuilder"):
    _spec.loader.exec_module(_builder)
TfliteBuilder = _builder.TfliteBuilder
MOBILENET = ROOT / "datasets" / "mobilenet_v1_0.25_128" / "mobilenet_v1_0.25_128.tflite"


def _conv_model(shape=(1, 8, 8, 3)) -> bytes:
    rng = np.random.default_rng(0)
    b = TfliteBuilder()
    x = b.input(list(shape))
    w = b.const(rng.standard_normal((4, 3, 3, shape[3])).astype(np.float32) * 0.3)
    bias = b.const(np.zeros(4, np.float32))
    b.output(b.op("CONV_2D", [x, w, bias], padding="SAME", stride_w=1, stride_h=1,
                     fused_activation_function="RELU"))
    return b.build()


def _fc_model() -> bytes:
    b = TfliteBuilder()
    x = b.input([1, 4])
    w = b.const(np.ones((3, 4), np.float32))
    bias = b.const(np.zeros(3, np.float32))
    b.output(b.op("FULLY_CONNECTED", [x, w, bias]))
    return b.build()


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs shared by the corpus (made once; the tests never modify them)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("kit")
    (d / "tiny.tflite").write_bytes(_conv_model())
    (d / "fc.tflite").write_bytes(_fc_model())
    (d / "two_ch.tflite").write_bytes(_conv_model((1, 8, 8, 2)))
    (d / "empty.tflite").write_bytes(b"")
    (d / "garbage.tflite").write_bytes(bytes(range(256)) * 4)
    (d / "cut.tflite").write_bytes(MOBILENET.read_bytes()[:3000])
    images = d / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((10, 12, 3), 40 * i + 20, np.uint8)).save(images / f"im{i}.png")
    (d / "empty_dir").mkdir()
    (d / "no_images").mkdir()
    (d / "no_images" / "notes.txt").write_text("not a picture")
    (d / "corrupt").mkdir()
    (d / "corrupt" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (d / "raw_short").mkdir()
    (d / "raw_short" / "x.bin").write_bytes(b"\0" * 10)
    (d / "raw_empty").mkdir()
    (d / "raw_empty" / "x.bin").write_bytes(b"")
    (d / "a_file.txt").write_text("a file where a directory is expected")
    (d / "picture.png").write_bytes((images / "im0.png").read_bytes())
    header = struct.pack("<4sIIIIIII", b"LDMK", 4, 0, 1, 0, 0, 0, 0)
    (d / "v3.kmodel").write_bytes(struct.pack("<II", 3, 0) + b"\0" * 64)
    (d / "v5.kmodel").write_bytes(b"LDMK" + struct.pack("<I", 5) + b"\0" * 64)
    (d / "junk.kmodel").write_bytes(b"JUNK" + b"\0" * 60)
    (d / "empty.kmodel").write_bytes(b"")
    (d / "short.kmodel").write_bytes(header[:10])
    (d / "nodes.kmodel").write_bytes(struct.pack("<4sIIIIIII", b"LDMK", 4, 0, 1, 0, 64, 3, 1))  # lies about nodes
    float_km = d / "float.kmodel"
    assert main(["compile", str(d / "tiny.tflite"), str(float_km), "--inference-type", "float", "-q"]) == 0
    return {p.name: p for p in d.iterdir()}


# Each case: argv with {name} placeholders for kit files, and a word the one error line must contain.
CASES: list[tuple[str, str]] = [
    # -- compile: the model file
    ("compile missing.tflite out.kmodel --inference-type float", "missing.tflite"),
    ("compile {images} out.kmodel --inference-type float", "images"),
    ("compile {empty.tflite} out.kmodel --inference-type float", "empty.tflite"),
    ("compile {garbage.tflite} out.kmodel --inference-type float", "garbage.tflite"),
    ("compile {cut.tflite} out.kmodel --inference-type float", "cut.tflite"),
    ("compile {float.kmodel} out.kmodel --inference-type float", "float.kmodel"),
    ("compile {picture.png} out.kmodel --inference-type float", "picture.png"),
    # -- compile: formats and flag values
    ("compile {tiny.tflite} out.kmodel -i caffe --inference-type float", "caffe"),
    ("compile {tiny.tflite} out.kmodel -i onnx --inference-type float", "onnx"),
    ("compile {tiny.tflite} out.kmodel -o tflite --inference-type float", "output-format"),
    ("compile {tiny.tflite} out.kmodel -t k510 --inference-type float", "target"),
    ("compile {tiny.tflite} out.kmodel --inference-type int8", "inference-type"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --input-type int16", "input-type"),
    ("compile {tiny.tflite} out.kmodel --dataset {images} --calibrate-method kld", "calibrate-method"),
    ("compile {tiny.tflite} out.kmodel --dataset {images} --dataset-format npy", "dataset-format"),
    ("compile {tiny.tflite} out.kmodel --dataset {images} --input-mean abc", "input-mean"),
    ("compile {tiny.tflite} out.kmodel --dataset {images} --input-std", "input-std"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --max-allocator-solve-secs soon", "max-allocator"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --weights-quantize-threshold x", "weights-quantize"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --ram-budget plenty", "--ram-budget"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --output-quantize-threshold 1.5", "output-quantize"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --frobnicate", "frobnicate"),
    ("compile {tiny.tflite}", "required"),
    ("compile", "required"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --kpu-clock 0", "--kpu-clock"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --cpu-clock -5", "--cpu-clock"),
    # -- compile: the dataset
    ("compile {tiny.tflite} out.kmodel", "--dataset"),
    ("compile {tiny.tflite} out.kmodel --dataset missing_dir", "missing_dir"),
    ("compile {tiny.tflite} out.kmodel --dataset {empty_dir}", "no image"),
    ("compile {tiny.tflite} out.kmodel --dataset {no_images}", "no image"),
    ("compile {tiny.tflite} out.kmodel --dataset {corrupt}", "broken.jpg"),
    ("compile {tiny.tflite} out.kmodel --dataset {raw_short} --dataset-format raw", "x.bin"),
    ("compile {tiny.tflite} out.kmodel --dataset {raw_empty} --dataset-format raw", "x.bin"),
    ("compile {fc.tflite} out.kmodel --dataset {images}", "4-D"),
    ("compile {two_ch.tflite} out.kmodel --dataset {images}", "channels"),
    # -- compile: where the output goes
    ("compile {tiny.tflite} no_such_dir/out.kmodel --inference-type float", "no_such_dir"),
    ("compile {tiny.tflite} {images} --inference-type float", "directory"),
    ("compile {tiny.tflite} {a_file.txt}/out.kmodel --inference-type float", "a_file.txt"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --report {a_file.txt}", "report"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --report {a_file.txt}/rep", "report"),
    ("compile {tiny.tflite} out.kmodel --inference-type float --dump-ir {a_file.txt}", "IR dump"),
    # -- ncc v0.1 argument lists
    ("-i tflite -o k210model --dataset {images} {tiny.tflite} out.kmodel", "kcc compile"),
    ("-i tflite -o k210model {tiny.tflite} out.kmodel", "v0.1"),
    ("compile {tiny.tflite} out.kmodel --dataset {images} --postprocess n1to1", "--input-mean 0.5"),
    ("compile {tiny.tflite} out.kmodel --dataset {images} --weights-bits 16", "8-bit"),
    ("compile {tiny.tflite} out.kmodel --dataset {images} --float-fc", "float-fc"),
    ("compile {tiny.tflite} out.kmodel --dataset {images} --channelwise-output", "channelwise"),
    ("compile {tiny.tflite} out.kmodel -i tflite -o k210model --dataset {images}", "-o kmodel"),
    ("-i k210model -o inference --dataset {images} {float.kmodel} outdir", "kcc infer"),
    # -- infer
    ("infer missing.kmodel outdir --dataset {images}", "missing.kmodel"),
    ("infer {v3.kmodel} outdir --dataset {images}", "v3"),
    ("infer {v5.kmodel} outdir --dataset {images}", "v5"),
    ("infer {junk.kmodel} outdir --dataset {images}", "junk.kmodel"),
    ("infer {empty.kmodel} outdir --dataset {images}", "empty.kmodel"),
    ("infer {short.kmodel} outdir --dataset {images}", "short.kmodel"),
    ("infer {nodes.kmodel} outdir --dataset {images}", "nodes.kmodel"),
    ("infer {tiny.tflite} outdir --dataset {images}", "tiny.tflite"),
    ("infer {float.kmodel} outdir", "--dataset"),
    ("infer {float.kmodel} outdir --dataset missing_dir", "missing_dir"),
    ("infer {float.kmodel} outdir --dataset {empty_dir}", "no image"),
    ("infer {float.kmodel} outdir --dataset {corrupt}", "broken.jpg"),
    ("infer {float.kmodel} outdir --dataset {raw_short} --dataset-format raw", "x.bin"),
    ("infer {float.kmodel} {a_file.txt} --dataset {images}", "a_file.txt"),
    # -- info
    ("info missing.kmodel", "missing.kmodel"),
    ("info {junk.kmodel}", "junk.kmodel"),
    ("info {v3.kmodel}", "v3"),
    ("info {float.kmodel} --estimate --kpu-clock 0", "--kpu-clock"),
    # -- the command itself
    ("frobnicate", "invalid choice"),
    ("infer", "required"),
]


def _argv(template: str, kit: dict[str, Path]) -> list[str]:
    out = []
    for token in template.split():
        for name, path in kit.items():
            token = token.replace("{" + name + "}", str(path))
        out.append(token)
    return out


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("template,needle", CASES, ids=[c[0][:60] for c in CASES])
def test_user_mistake_is_one_error_line(template, needle, kit, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    kit_dir = next(iter(kit.values())).parent
    before_kit, before_cwd = _files(kit_dir), _files(tmp_path)
    code = main(_argv(template, kit))
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    assert needle in lines[0], lines[0]
    assert _files(tmp_path) == before_cwd, "output left behind"
    assert _files(kit_dir) == before_kit, "output left behind"


def test_corpus_is_large_enough():
    assert len(CASES) >= 50


def test_internal_errors_show_a_traceback_with_debug(kit, tmp_path, monkeypatch, capsys):
    import kcc.pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("simulated compiler bug")

    monkeypatch.setattr(kcc.pipeline, "compile_model", boom)
    argv = ["compile", str(kit["tiny.tflite"]), str(tmp_path / "o.kmodel"), "--inference-type", "float"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "internal error" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="simulated compiler bug"):
        main(argv + ["--debug"])
