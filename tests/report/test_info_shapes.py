"""`kcc info` output shapes (kcc/kmodel/output_record.py): recovered from the nodes of ncc's kmodels,
recorded by kcc where its nodes do not tell, and always consistent with the output's byte size and
kpu_sim's output.

Oracles: ncc's own compile SUMMARY for the kmodels it wrote (ncc-outputs/logs/*.log of the full kit,
quoted below and checked against the logs by a slow+kit test), the TFLite interpreter's output shape of
a synthetic model, and the kpu_sim output length. kmodel v4 stores no output shapes (kmodel_v4.md §5).
The record's codec on hand-built kmodels is tests/kmodel/test_output_record.py.
"""

from __future__ import annotations

import importlib.util
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import refkit

import kcc.kmodel as km
import kpu_sim
from kcc.cli import main
from kcc.kmodel.output_record import (
    RECORD_MAGIC,
    RECORD_SOURCE,
    output_shape,
)
from kcc.options import CompileOptions
from kcc.pipeline import compile_model
from kcc.report.info import describe

ROOT = Path(__file__).resolve().parents[2]
# tests/tflite_builder.py, loaded by path: putting tests/ on sys.path would let tests/kpu_sim shadow kpu_sim
_spec = importlib.util.spec_from_file_location("tflite_builder", ROOT / "tests" / "tflite_builder.py")
_builder = sys.modules.setdefault("tflite_builder", importlib.util.module_from_spec(_spec))
if not hasattr(_builder, "TfliteBuilder"):
    _spec.loader.exec_module(_builder)
TfliteBuilder, run_tflite = _builder.TfliteBuilder, _builder.run_tflite

# The OUTPUTS of ncc's SUMMARY when it wrote these files (ncc-outputs/logs/<name>.log in the full kit).
NCC_SUMMARY = {
    "iris_float": ["1x3"], "iris_float_ff": ["1x3"], "iris_u8_l2": ["1x3"], "iris_u8_l2_ff": ["1x3"],
    "iris_u8_no_clip": ["1x3"], "iris_u8_no_clip_ff": ["1x3"],
    "rfb320_no_clip_ff": ["1x4420x2", "1x4420x4"], "slim320_no_clip_ff": ["1x4420x4", "1x4420x2"],
    "ulffd_landmark_l2_ff": ["1x3160x4", "1x3160x10", "1x3160x2"],
    "ulffd_landmark_no_clip": ["1x3160x4", "1x3160x10", "1x3160x2"],
    "ulffd_landmark_no_clip_ff": ["1x3160x4", "1x3160x10", "1x3160x2"],
}
# kmodel v4 files start "LDMK" (kmodel_v4.md §4); the shipped v3 iris (§12) is rejected (test_info.py).
SHIPPED_KMODELS = sorted(p for p in refkit.SHIPPED.rglob("*.kmodel") if p.read_bytes()[:4] == b"LDMK")


def _shape4(text: str) -> list[int]:
    dims = [int(d) for d in text.split("x")]
    return [1] * (4 - len(dims)) + dims  # kmodel_v4.md §3.3: front-padded with 1s


def _set_outputs(line: str) -> tuple[int, int, int, int]:
    m = re.fullmatch(r"kpu\.set_outputs\(task, (\d+), (\d+), (\d+), (\d+)\)", line)
    assert m, line
    return tuple(int(v) for v in m.groups())


def _check_consistent(info: dict, sim_outputs: list[np.ndarray]) -> None:
    """Every output: shape x itemsize = the range's bytes = kpu_sim's output; set_outputs w*h*ch likewise."""
    assert len(info["outputs"]) == len(sim_outputs)
    for o, got in zip(info["outputs"], sim_outputs):
        count = o["size"] // 4
        assert o["datatype"] == "float32" and got.size == count
        assert int(np.prod(o["shape"])) == count, o
        index, w, h, ch = _set_outputs(o["maixpy"])
        n, c, hh, ww = o["shape"]
        assert (index, w, h, ch) == (o["index"], ww, hh, n * c) and w * h * ch == count


def _run_zeros(data: bytes) -> list[np.ndarray]:
    program = kpu_sim.load(data)
    return program.run([np.zeros(i.shape, i.dtype) for i in program.inputs])


@pytest.mark.parametrize("path", SHIPPED_KMODELS, ids=lambda p: str(p.relative_to(refkit.SHIPPED)))
def test_every_shipped_ncc_kmodel(path: Path) -> None:
    data = path.read_bytes()
    info = describe(data, path.name)
    _check_consistent(info, _run_zeros(data))
    assert all(o["shape_from"] != RECORD_SOURCE for o in info["outputs"])  # ncc writes no record
    if path.stem in NCC_SUMMARY:
        assert [o["shape"] for o in info["outputs"]] == [_shape4(s) for s in NCC_SUMMARY[path.stem]]


@pytest.mark.slow
@pytest.mark.kit
def test_quoted_ncc_summaries_are_the_logs() -> None:
    for name, shapes in NCC_SUMMARY.items():
        log = (refkit.REFERENCE / "ncc-outputs" / "logs" / f"{name}.log").read_text()
        outputs = log.split("SUMMARY", 1)[1].split("OUTPUTS", 1)[1].split()
        assert outputs[2::3] == shapes, name


# -- a blazeface-like detector head: two conv maps reshaped to anchors x 16 and concatenated ---------


def _detector_head() -> bytes:
    """face_detection_short_range's `regressors` in small: 16x16x32 (2 anchors x 16) and 8x8x96
    (6 anchors x 16) reshaped to 512x16 and 384x16, concatenated to 1x896x16."""
    rng = np.random.default_rng(0)
    b = TfliteBuilder()

    def conv(t: int, cin: int, cout: int, stride: int) -> int:
        w = b.const(rng.standard_normal((cout, 3, 3, cin)).astype(np.float32) * 0.3)
        return b.op("CONV_2D", [t, w, b.const(np.zeros(cout, np.float32))], padding="SAME", stride_w=stride,
                    stride_h=stride, fused_activation_function="RELU")

    f16 = conv(conv(b.input([1, 64, 64, 3]), 3, 8, 2), 8, 8, 2)
    r16, r8 = conv(f16, 8, 32, 1), conv(conv(f16, 8, 8, 2), 8, 96, 1)
    a = b.op("RESHAPE", [r16, b.const(np.array([1, 512, 16], np.int32))])
    c = b.op("RESHAPE", [r8, b.const(np.array([1, 384, 16], np.int32))])
    b.output(b.op("CONCATENATION", [a, c], axis=1, name="regressors"))
    return b.build()


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detector")
    data = _detector_head()
    (tmp / "head.tflite").write_bytes(data)
    (tmp / "ds").mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        rng.random((1, 3, 64, 64), dtype=np.float32).tofile(tmp / "ds" / f"{i}.bin")
    res = compile_model(tmp / "head.tflite", CompileOptions(dataset=tmp / "ds", dataset_format="raw",
                                                            input_type="float", max_allocator_solve_secs=0))
    (expected,) = [o.shape for o in run_tflite(data, [np.zeros((1, 64, 64, 3), np.float32)])]
    return res, expected, tmp


def test_concatenated_output_shape_is_the_models(detector) -> None:
    res, expected, _ = detector
    assert expected == (1, 896, 16)  # what TFLite says the model outputs
    assert [s for _, s in res.emitted.outputs] == [expected]  # compile's SUMMARY
    info = describe(res.kmodel, "head.kmodel")
    (out,) = info["outputs"]
    assert out["shape"] == [1, 1, 896, 16] and out["size"] == 896 * 16 * 4
    assert out["maixpy"] == "kpu.set_outputs(task, 0, 16, 896, 1)"  # 896 anchors (h) of 16 values (w)
    _check_consistent(info, _run_zeros(res.kmodel))


def test_record_is_there_only_because_the_nodes_do_not_tell(detector) -> None:
    res, _, _ = detector
    model = km.read(res.kmodel)
    assert _source(model) == RECORD_SOURCE and model.constants.endswith(RECORD_MAGIC)
    # Without the record, the nodes give two pieces (16x16x32, 8x8x96) that only a reshape joins:
    # "unknown" with the element count, never one piece's shape (the old 1x8x8x96 for 57344 bytes).
    bare = _without_record(model)
    shape, source = output_shape(bare, bare.outputs[0])
    assert shape is None and source.startswith("concatenation of nodes ")
    (out,) = describe(km.write(bare), "bare.kmodel")["outputs"]
    assert out["shape"] is None and "(14336 elements)" in out["maixpy"] and "w*h*ch = 14336" in out["maixpy"]
    # The runtime reads constants only through node ranges (§11.1): the record changes no output.
    x = [np.random.default_rng(2).random((1, 3, 64, 64), dtype=np.float32)]
    with_record, without = kpu_sim.load(res.kmodel).run(x), kpu_sim.load(km.write(bare)).run(x)
    assert np.array_equal(with_record[0], without[0])


def _source(model: km.KModel) -> str:
    return describe(km.write(model), "m")["outputs"][0]["shape_from"]


def _without_record(model: km.KModel) -> km.KModel:
    size = struct.unpack_from("<I", model.constants, len(model.constants) - 12)[0]
    return km.KModel(main_mem=model.main_mem, inputs=model.inputs, input_shapes=model.input_shapes,
                     outputs=model.outputs, nodes=model.nodes, constants=model.constants[:-size])


def test_cli_info_on_the_compiled_head(detector, capsys) -> None:
    res, _, tmp = detector
    path = tmp / "head.kmodel"
    path.write_bytes(res.kmodel)
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "0: 1x1x896x16 float32 in main" in text and "kpu.set_outputs(task, 0, 16, 896, 1)" in text


# -- every kmodel kcc writes from the full kit's models ---------------------------------------


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("name", refkit.kit_params(refkit.model_dirs()))
def test_kit_models_info_matches_the_summary(name, tmp_path, capsys) -> None:
    """Compile with the fast flags (2 calibration samples, no_clip, first-fit allocation), then
    `kcc info` must give the SUMMARY's shapes and set_outputs lines kpu_sim's output sizes."""
    ds = tmp_path / "ds"
    ds.mkdir()
    samples = refkit.samples(name, limit=4)[:2]
    for s in samples:
        s.x.astype(np.float32).tofile(ds / f"{s.name}.bin")
    out = tmp_path / "m.kmodel"
    assert main(["compile", str(refkit.tflite_path(name)), str(out), "--dataset", str(ds), "--dataset-format",
                 "raw", "--input-type", "float", "--calibrate-method", "no_clip",
                 "--max-allocator-solve-secs", "0", "--allow-oversize"]) == 0  # deeplabv3 is over 6 MiB
    summary = capsys.readouterr().out.split("\nSUMMARY\n", 1)[1].split("OUTPUTS\n", 1)[1].split()
    info = describe(out.read_bytes(), out.name)
    assert [o["shape"] for o in info["outputs"]] == [_shape4(s) for s in summary[2::3]]
    _check_consistent(info, kpu_sim.load(out.read_bytes()).run([samples[0].x]))
