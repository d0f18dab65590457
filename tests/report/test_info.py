"""`kcc info`: kcc/report/info.py (describe, format_text) and the CLI subcommand."""

from __future__ import annotations

import json

import pytest
import refkit

import kcc.kmodel as km
from kcc.cli import main
from kcc.errors import KmodelError
from kcc.report.info import RUNTIME_ANY, RUNTIME_BETA3, describe, format_text

# ncc's kmodels that ship in tests/reference (its README): the default suite reads only these.
ULFFD = refkit.SHIPPED / "ncc-outputs" / "kmodels" / "ulffd_landmark_no_clip_ff.kmodel"
YOLO = refkit.SHIPPED / "nncase-examples" / "kfpkg" / "yolo.kmodel"
V3_IRIS = refkit.SHIPPED / "nncase-examples" / "history" / "v0.1.0-rc5" / "iris.kmodel"

F32, U8, MAIN, KPU = km.DataType.FLOAT32, km.DataType.UINT8, km.MemoryType.MAIN, km.MemoryType.K210_KPU


def _tiny_model() -> bytes:
    """input (1,1,2,3) f32 -> quantize -> table_lookup1d -> dequantize -> output; no shapes on the output."""
    x = km.MemoryRange(MAIN, F32, 0, 24)
    q = km.MemoryRange(MAIN, U8, 24, 6)
    t = km.MemoryRange(MAIN, U8, 32, 6)
    y = km.MemoryRange(MAIN, F32, 40, 24)
    table = km.MemoryRange(km.MemoryType.CONST, U8, 0, 256)
    nodes = [
        km.Quantize(input=x, output=q, quant_param=km.QuantParam(0, 1.0)),
        km.TableLookup1D(input=q, table=table, output=t),
        km.Dequantize(input=t, output=y, quant_param=km.QuantParam(0, 1.0)),
    ]
    model = km.KModel(main_mem=64, inputs=[x], input_shapes=[(1, 1, 2, 3)], outputs=[y], nodes=nodes,
                      constants=bytes(range(256)))  # fmt: skip
    return km.write(model)


def test_describe_follows_element_wise_ops_back_to_the_input_shape() -> None:
    info = describe(_tiny_model(), "tiny.kmodel")
    assert info["inputs"] == [{"index": 0, "memory": "main", "datatype": "float32", "start": 0, "size": 24,
                               "shape": [1, 1, 2, 3]}]  # fmt: skip
    (out,) = info["outputs"]
    assert out["shape"] == [1, 1, 2, 3] and out["shape_from"] == "input 0"
    assert out["maixpy"] == "kpu.set_outputs(task, 0, 3, 2, 1)"
    assert [n["opcode"] for n in info["nodes"]] == ["quantize", "table_lookup1d", "dequantize"]
    assert info["runtime"] == {"beta3_opcodes": ["table_lookup1d"], "needs": RUNTIME_BETA3}
    assert "needs nncase v0.2.0-beta3+ runtime (MaixPy firmware after 2020-08)" in format_text(info)
    assert info["memory"]["kpu_peak"] == 0 and info["memory"]["main_used"] == 64
    json.dumps(info)  # JSON-ready


def test_unknown_output_shape_is_said_so() -> None:
    x = km.MemoryRange(MAIN, F32, 0, 24)
    y = km.MemoryRange(MAIN, F32, 24, 8)  # 2 floats, written by nobody
    model = km.KModel(main_mem=32, inputs=[x], input_shapes=[(1, 1, 2, 3)], outputs=[y],
                      nodes=[km.Unary(input=x, output=x, unary_op=km.UnaryOp.NEG)])  # fmt: skip
    info = describe(km.write(model), "m")
    assert info["outputs"][0]["shape"] is None
    assert info["outputs"][0]["maixpy"].startswith("# output 0: shape unknown")
    assert "shape unknown" in format_text(info)
    assert info["runtime"]["needs"] == RUNTIME_ANY


def out_maixpy(info: dict) -> str:
    return info["outputs"][0]["maixpy"]


def test_ulffd_description() -> None:
    info = describe(ULFFD.read_bytes(), ULFFD.name)
    assert info["header"]["nodes"] == 90 and info["kpu_layers"] == 43
    assert info["inputs"][0]["memory"] == "k210_kpu" and info["inputs"][0]["shape"] == [1, 3, 240, 320]
    # three concats of (1, 3160, 4/10/2): README "float32 [1,3160,4] ... [1,3160,10] ... [1,3160,2]"
    assert [o["shape"] for o in info["outputs"]] == [[1, 1, 3160, 4], [1, 1, 3160, 10], [1, 1, 3160, 2]]
    assert [o["maixpy"] for o in info["outputs"]] == [f"kpu.set_outputs(task, {i}, {w}, 3160, 1)"
                                                      for i, w in enumerate((4, 10, 2))]  # fmt: skip
    assert info["memory"]["main_mem"] == 499200 and info["memory"]["kpu_peak"] == 1704960  # README: KPU B 1704960
    node0 = info["nodes"][0]
    assert (node0["unit"], node0["opcode"]) == ("KPU", "kpu_conv2d")
    assert node0["summary"].startswith("3x240x320 -> 16x120x160, 3x3, pool left_top_2_s2")
    assert info["runtime"]["beta3_opcodes"] == ["table_lookup1d"] and not info["warnings"]


def test_yolo_output_shape_comes_from_the_last_kpu_layer() -> None:
    info = describe(YOLO.read_bytes(), "yolo.kmodel")
    (out,) = info["outputs"]
    # 20-class YOLOv2 head on a 7x10 grid: 5 anchors x (5 + 20) channels; a final dequantize of the
    # last layer's main-memory copy, so the shape is the KPU layer's
    assert out["shape"] == [1, 125, 7, 10] and out["shape_from"] == "node 19 (kpu_conv2d)"
    assert out["maixpy"] == "kpu.set_outputs(task, 0, 10, 7, 125)"
    assert info["runtime"]["needs"] == RUNTIME_ANY
    assert "depthwise" in info["nodes"][1]["summary"] and "pool max_2_s2" in info["nodes"][0]["summary"]


@pytest.mark.slow
@pytest.mark.kit
def test_yolo_of_the_full_kit() -> None:
    """The beta4 build of the same example (only in the full kit): same head, 2x2 stride-1 max pool."""
    info = describe((refkit.REFERENCE / "nncase-examples" / "yolo.kmodel").read_bytes(), "yolo.kmodel")
    (out,) = info["outputs"]
    assert out["shape"] == [1, 125, 7, 10] and out["shape_from"] == "node 15 (kpu_conv2d)"
    assert out["maixpy"] == "kpu.set_outputs(task, 0, 10, 7, 125)"
    assert "depthwise" in info["nodes"][1]["summary"] and "pool max_2_s1" in info["nodes"][10]["summary"]


def test_cli_text_and_json(tmp_path, capsys) -> None:
    path = tmp_path / "tiny.kmodel"
    path.write_bytes(_tiny_model())
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    for needle in ("INPUTS (NCHW)", "OUTPUTS (NCHW)", "NODES", "MEMORY", "RUNTIME", "MAIXPY",
                   "kpu.set_outputs(task, 0, 3, 2, 1)"):  # fmt: skip
        assert needle in text
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["shape"] == [1, 1, 2, 3]


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["info", str(V3_IRIS)]) == 1  # nncase v0.1.0-rc5's iris example, a kmodel v3 (§12)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "kmodel v3 (nncase v0.1) is not supported" in err[0]
    assert main(["info", str(tmp_path / "missing.kmodel")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(KmodelError, match="truncated"):
        describe(_tiny_model()[:100], "cut.kmodel")
