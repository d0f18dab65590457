"""Issue #6: ncc command lines, --report, progress, the Python API and the generated docs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kcc
from kcc.cli import main
from kcc.errors import KccError

ROOT = Path(__file__).resolve().parents[2]
MOBILENET_DIR = ROOT / "datasets" / "mobilenet_v1_0.25_128"
_spec = importlib.util.spec_from_file_location("tflite_builder", ROOT / "tests" / "tflite_builder.py")
_builder = sys.modules.setdefault("tflite_builder", importlib.util.module_from_spec(_spec))
if not hasattr(_builder, "TfliteBuilder"):
    _spec.loader.exec_module(_builder)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Path]:
    """A two-layer conv model (both layers on the KPU) and three small pictures."""
    from PIL import Image

    rng = np.random.default_rng(1)
    b = _builder.TfliteBuilder()
    x = b.input([1, 16, 16, 3])
    w1 = b.const(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4)
    y = b.op("CONV_2D", [x, w1, b.const(np.zeros(8, np.float32))], padding="SAME", stride_w=1, stride_h=1,
             fused_activation_function="RELU", name="conv1")
    w2 = b.const(rng.standard_normal((4, 1, 1, 8)).astype(np.float32) * 0.4)
    b.output(b.op("CONV_2D", [y, w2, b.const(np.full(4, 0.1, np.float32))], padding="SAME", stride_w=1,
                  stride_h=1, name="conv2"))
    d = tmp_path_factory.mktemp("ux")
    (d / "two.tflite").write_bytes(b.build())
    images = d / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"p{i}.png")
    return {"model": d / "two.tflite", "images": images}


def test_ncc_command_line_runs_unchanged(kit, tmp_path, monkeypatch, capsys):
    """The nncase docs' line with ncc -> kcc (ecosystem.md §5.1), plus ncc's bare --dump-ir."""
    monkeypatch.chdir(tmp_path)
    argv = ["compile", str(kit["model"]), "m.kmodel", "-i", "tflite", "-o", "kmodel", "-t", "k210",
            "--dataset", str(kit["images"]), "--input-mean", "0.5", "--input-std", "0.5",
            "--calibrate-method", "l2", "--max-allocator-solve-secs", "60", "--no-quantized-binary",
            "--dump-weights-range", "--dump-ir"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.kmodel").read_bytes()[:4] == b"LDMK"
    assert "1. Import graph..." in out and "\nSUMMARY\nINPUTS\n0\t" in out
    assert "Estimated K210 latency:" in out
    assert any(line.startswith("conv1{") and line.endswith("}") and ", " in line for line in out.splitlines())
    assert any(p.suffix == ".dot" for p in tmp_path.iterdir())  # --dump-ir without DIR dumps into the CWD


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["-v"])
    assert e.value.code == 0 and "kcc" in capsys.readouterr().out


def test_report_of_a_kpu_model(kit, tmp_path, capsys):
    rep = tmp_path / "rep"
    assert main(["compile", str(kit["model"]), str(tmp_path / "m.kmodel"), "--dataset", str(kit["images"]),
                 "--report", str(rep), "-q", "--kpu-clock", "300"]) == 0
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in rep.iterdir()) == ["latency.png", "quant_error.png", "report.json", "report.md"]
    data = json.loads((rep / "report.json").read_text())
    assert [p["on_kpu"] for p in data["placement"]] == [True, True]
    layers = data["quant_error"]["layers"]
    assert {layer["name"] for layer in layers} == {"conv1", "conv2"}
    assert all(layer["cosine"] > 0.99 and layer["sqnr_db"] > 20 for layer in layers)
    assert data["quant_error"]["samples"] == 3
    assert data["latency"]["kpu_mhz"] == 300 and data["latency"]["total_ms"] > 0
    assert data["memory"]["summary"]
    md = (rep / "report.md").read_text()
    for heading in ("## Placement", "## Quantization error per KPU layer", "## Estimated K210 latency", "## Memory"):
        assert heading in md
    assert "![quantization error](quant_error.png)" in md
    assert (rep / "quant_error.png").read_bytes()[:8] == PNG and (rep / "latency.png").read_bytes()[:8] == PNG


def test_report_of_a_float_model(kit, tmp_path):
    rep = tmp_path / "rep"
    assert main(["compile", str(kit["model"]), str(tmp_path / "m.kmodel"), "--inference-type", "float",
                 "--report", str(rep), "-q"]) == 0
    data = json.loads((rep / "report.json").read_text())
    assert "float" in data["quant_error"]["note"] and not (rep / "quant_error.png").exists()


def test_python_api(kit, tmp_path):
    lines: list[str] = []
    stages: set[str] = set()
    result = kcc.compile(str(kit["model"]), tmp_path / "api.kmodel", dataset=str(kit["images"]), input_mean=0.5,
                         input_std=0.5, report=tmp_path / "rep", log=lines.append,
                         progress=lambda done, total, stage: stages.add(stage))
    assert (tmp_path / "api.kmodel").read_bytes() == result.kmodel
    assert [p.on_kpu for p in result.placements] == [True, True]
    assert result.latency.total_ms > 0 and result.report.quant_error.samples == 3
    assert (tmp_path / "rep" / "report.md").is_file()
    assert lines[0] == "1. Import graph..." and "calibration pass 1" in stages
    with pytest.raises(KccError, match="unknown compile option"):
        kcc.compile(kit["model"], input_meen=0.5)


def test_import_stays_light():
    code = ("import sys, kcc, kcc.kmodel, kpu_sim; "
            "heavy = [m for m in ('tflite', 'ortools', 'matplotlib', 'tqdm', 'kcc.pipeline') if m in sys.modules]; "
            "assert not heavy, heavy; assert callable(kcc.compile)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_progress_bars(capsys):
    from kcc import progress

    assert not progress.enabled(quiet=True)
    assert not progress.enabled()  # pytest captures stdout: not a terminal
    seen: list[tuple[int, int | None, str]] = []
    again = progress.counted([10, 20], lambda d, t, s: seen.append((d, t, s)))
    assert list(again()) == [10, 20] and list(again()) == [10, 20]
    assert seen == [(1, 2, "calibration pass 1"), (2, 2, "calibration pass 1"),
                    (1, 2, "calibration pass 2"), (2, 2, "calibration pass 2")]
    bars = progress.Bars()
    for done in (1, 2):
        bars(done, 2, "collect ranges")
    bars.close()
    assert "collect ranges" in capsys.readouterr().err


def test_supported_ops_doc_is_current():
    from kcc.report.supported_ops import markdown

    doc = ROOT / "docs" / "supported_ops.md"
    assert doc.read_text() == markdown(), "stale: run python -m kcc.report.supported_ops > docs/supported_ops.md"


@pytest.mark.slow
def test_ncc_line_on_mobilenet_with_report(tmp_path, capsys):
    """The README's example, ncc flags and all; ~15 s."""
    rep = tmp_path / "rep"
    argv = ["compile", str(MOBILENET_DIR / "mobilenet_v1_0.25_128.tflite"), str(tmp_path / "m.kmodel"), "-i", "tflite",
            "-o", "kmodel", "-t", "k210", "--dataset", str(MOBILENET_DIR / "images"), "--input-mean", "0.5",
            "--input-std", "0.5", "--calibrate-method", "l2", "--max-allocator-solve-secs", "60", "--report", str(rep)]
    assert main(argv) == 0
    data = json.loads((rep / "report.json").read_text())
    # every KPU layer: one per conv, and the pick layers of the 5 SAME stride-2 convs (kcc.passes.row_pick)
    assert len(data["quant_error"]["layers"]) == 28 + 5
    assert sum(p["on_kpu"] for p in data["placement"]) == 28


def test_in_range_sqnr_ranks_a_deliberately_clipped_layer_by_its_rounding():
    """A logits layer whose range keeps only the top values: its clipped values would dominate the plain
    SQNR; the in-range SQNR measures the rounding of what the range holds, the clipped share is apart."""
    from kcc.report.quant_error import LayerError

    f = np.array([-9.0, -8.0, 1.0, 2.0, 3.0])
    q = np.array([-1.0, -1.0, 1.01, 2.0, 2.99])  # the range [-1, 4] clips the first two
    e = LayerError("logits", 0, (5,))
    e.add(f, q, -1.0, 4.0)
    assert e.clipped_fraction == pytest.approx(0.4)
    assert e.sqnr_db < 3 and e.sqnr_in_range_db == pytest.approx(10 * np.log10(14 / 2e-4))


def test_decompose_modes_and_the_reason_a_conv_stays_on_the_cpu(kit, tmp_path, monkeypatch):
    """A 5x5 depthwise of 512 channels after relu6, without the model's allowance (a `fan_kpu` would
    take 0.7 MiB of it): no stack fits, and summing its terms would round each unclamped partial sum,
    so by default it stays on the CPU and the placement says why; --decompose off leaves every such
    conv where ncc does."""
    from kcc.passes import decompose_kernels
    monkeypatch.setattr(decompose_kernels, "MODEL_KPU_BYTES", 0)
    rng = np.random.default_rng(2)
    b = _builder.TfliteBuilder()
    x = b.input([1, 12, 12, 3])
    y = b.op("CONV_2D", [x, b.const(rng.standard_normal((512, 1, 1, 3)).astype(np.float32) * 0.4),
                         b.const(np.zeros(512, np.float32))], padding="SAME", stride_w=1, stride_h=1,
             fused_activation_function="RELU6", name="expand")
    b.output(b.op("DEPTHWISE_CONV_2D", [y, b.const(rng.standard_normal((1, 5, 5, 512)).astype(np.float32) * 0.2),
                                        b.const(np.zeros(512, np.float32))], padding="SAME", stride_w=1, stride_h=1,
                  depth_multiplier=1, fused_activation_function="RELU6", name="dw5"))
    model = tmp_path / "wide.tflite"
    model.write_bytes(b.build())
    placement = {}
    for mode in ("accurate", "off"):
        rep = tmp_path / mode
        assert main(["compile", str(model), str(tmp_path / f"{mode}.kmodel"), "--dataset", str(kit["images"]),
                     "--decompose", mode, "--report", str(rep), "-q"]) == 0
        placement[mode] = {p["node"]: p for p in json.loads((rep / "report.json").read_text())["placement"]}
    accurate = placement["accurate"]["dw5"]
    # its forms either round more or (priced against the uint8 CPU conv) are slower: the reason says which
    assert not accurate["on_kpu"] and re.search(r"not decomposed: every KPU form (rounds more|is estimated slower)",
                                                accurate["reason"]), accurate["reason"]
    assert "(fastest: " in accurate["reason"] and "on the CPU)" in accurate["reason"]
    # as ncc leaves it, but on uint8 codes (kcc.quant.cpu_conv)
    assert placement["off"]["dw5"]["reason"].startswith("5x5 kernel (KPU: 1x1, 3x3); runs on uint8 codes")


def test_weight_equalization_default_keeps_every_batch_norm_multiplier_positive(kit, tmp_path):
    """By default every batch-norm multiplier is positive, as ncc writes them (no public document says
    the hardware field is signed); --weight-equalization turned, opt-in, turns some output channels over
    (negative multiplier, finer weight steps). Both builds compute the same layers."""
    import kpu_sim
    from kcc.kmodel.model import read_file

    muls, outs, data = {}, {}, {}
    x = np.random.default_rng(3).integers(0, 256, (1, 3, 16, 16)).astype(np.uint8)
    for mode in ("default", "turned", "ncc"):
        path = tmp_path / f"{mode}.kmodel"
        flags = [] if mode == "default" else ["--weight-equalization", mode]
        assert main(["compile", str(kit["model"]), str(path), "--dataset", str(kit["images"]), *flags, "-q"]) == 0
        nodes = [n for n in read_file(path).nodes if n.opcode.kmodel_name == "kpu_conv2d"]
        muls[mode] = np.concatenate([np.asarray(n.body.batch_norm.norm_mul) for n in nodes])
        outs[mode] = kpu_sim.load(path.read_bytes()).run([x])[0]
        data[mode] = path.read_bytes()
    assert data["default"] == data["ncc"]
    assert (muls["turned"] < 0).any() and (muls["turned"] > 0).any()
    assert (muls["ncc"] > 0).all()
    scale = np.abs(outs["ncc"]).max()
    assert np.abs(outs["turned"] - outs["ncc"]).max() < 0.05 * scale


def test_ram_budget_names_firmwares_or_takes_mib():
    from kcc.alloc.report import BUDGETS, ram_budget

    assert ram_budget("maixpy") == dict(BUDGETS)["MaixPy"] and ram_budget("SDK") == dict(BUDGETS)["bare SDK"]
    assert ram_budget("4") == 4 << 20 and ram_budget("2.5") == int(2.5 * (1 << 20))
    assert ram_budget("lots") is None and ram_budget("0") is None and ram_budget("-3") is None
