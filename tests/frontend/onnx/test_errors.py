"""What a user sees for ONNX files kcc cannot compile: one line naming the file, op or input; and the
whole path (format detection, `kcc compile`, `kcc infer`, `--report`, `kcc.compile()`) on a small model."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from onnx import TensorProto
from onnx_builder import model, node, randn, run_ort

import kcc
import kpu_sim
from kcc.cli import main
from kcc.errors import KccError, ModelFormatError, UnsupportedModelError
from kcc.frontend import FRONTENDS, detect_format, import_model
from kcc.frontend.onnx import import_onnx


def _conv_net(batch="N") -> bytes:
    """A small CNN as PyTorch exports it: conv + BN + relu, maxpool, conv, GAP, flatten, gemm, softmax."""
    inits = {"w1": randn(8, 3, 3, 3, scale=0.3), "b1": randn(8), "s": np.abs(randn(8)) + 0.5, "t": randn(8),
             "m": randn(8), "v": np.abs(randn(8)) + 0.5, "w2": randn(8, 8, 3, 3, scale=0.2), "b2": randn(8),
             "fc": randn(4, 8), "fcb": randn(4)}
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c1", "s", "t", "m", "v"], ["bn"]),
             node("Relu", ["bn"], ["r1"]),
             node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             node("Clip", ["c2"], ["r2"], min=0.0, max=6.0),
             node("GlobalAveragePool", ["r2"], ["gap"]),
             node("Flatten", ["gap"], ["flat"]),
             node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
             node("Softmax", ["logits"], ["prob"])]
    return model(nodes, {"x": [batch, 3, 16, 16]}, ["prob"], inits, opset=9)


def test_format_is_detected_and_the_frontend_registered():
    assert FRONTENDS["onnx"].extra == "onnx" and FRONTENDS["onnx"].suffixes == (".onnx",)
    m = _conv_net()
    assert detect_format(m) == "onnx"
    g = import_model(m).graph  # no -i: picked from the content
    assert [i.shape for i in g.inputs] == [(1, 3, 16, 16)]  # the symbolic batch became 1


def test_corrupt_and_foreign_files(tmp_path):
    good = _conv_net()
    with pytest.raises(ModelFormatError, match=r"^m\.onnx: corrupt or truncated ONNX file"):
        import_onnx(good[: len(good) // 2], "m.onnx")
    with pytest.raises(ModelFormatError, match="empty file"):
        import_onnx(b"", "m.onnx")
    tflite = b"\x1c\x00\x00\x00TFL3" + bytes(64)
    with pytest.raises(ModelFormatError, match="a TFLite model: compile it with -i tflite"):
        import_model(tflite, "tiny.tflite", input_format="onnx")


def test_dynamic_and_non_float_inputs_name_the_input():
    m = model([node("Relu", ["x"], ["y"])], {"x": [1, 3, "height", "width"]}, ["y"])
    with pytest.raises(UnsupportedModelError) as e:
        import_onnx(m, "m.onnx")
    line = e.value.one_line()
    assert line.startswith("m.onnx: input 'x' has a dynamic shape [1, 3, 'height', 'width'] (axes [2, 3])")
    assert "fixed input size" in line and "\n" not in line
    m = model([node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], {"x": [1, 4]}, ["y"], input_type=TensorProto.INT64)
    with pytest.raises(UnsupportedModelError, match="input 'x' is INT64, kcc needs float inputs"):
        import_onnx(m, "m.onnx")


def test_every_unsupported_op_type_listed_at_once():
    nodes = [node("Relu", ["x"], ["a"]), node("Erf", ["a"], ["b"]), node("Erf", ["b"], ["c"]),
             node("LpNormalization", ["c"], ["d"]), node("ArgMax", ["d"], ["e"]),
             node("Shape", ["x"], ["s"]), node("ReduceProd", ["s"], ["n"])]  # shape arithmetic folds: no problem
    m = model(nodes, {"x": [1, 4]}, ["e", "n"])
    with pytest.raises(UnsupportedModelError) as e:
        import_onnx(m, "m.onnx")
    assert e.value.one_line() == (
        "m.onnx: 3 unsupported op types: Erf x2 (first: 'erf_b'), ArgMax x1 (first: 'argmax_e'), "
        "LpNormalization x1 (first: 'lpnormalization_d') (hint: cut the model before ArgMax and take the argmax "
        "of the output on the host)")


def test_missing_onnx_package_says_how_to_install(monkeypatch):
    for mod in [m for m in sys.modules if m == "onnx" or m.startswith(("onnx.", "kcc.frontend.onnx"))]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ModuleNotFoundError
    with pytest.raises(KccError) as e:
        FRONTENDS["onnx"].load()
    assert e.value.one_line() == ("reading ONNX models needs the 'onnx' package, which is not installed "
                                  "(hint: pip install 'kcc[onnx]')")


def test_compile_infer_report_and_api_end_to_end(tmp_path, capsys):
    m = _conv_net()
    path = tmp_path / "net.onnx"
    path.write_bytes(m)
    ds = tmp_path / "ds"
    ds.mkdir()
    xs = [np.clip(randn(1, 3, 16, 16, scale=0.5), -1, 1) for _ in range(4)]
    for k, x in enumerate(xs):
        x.tofile(ds / f"s{k}.bin")
    want = [run_ort(m, [x])[0] for x in xs]
    # float kmodel: kpu_sim against onnxruntime
    out_f = tmp_path / "f.kmodel"
    assert main(["compile", str(path), str(out_f), "--inference-type", "float", "-q"]) == 0
    prog = kpu_sim.load(out_f.read_bytes())
    for x, w in zip(xs, want):
        np.testing.assert_allclose(prog.run([x])[0].reshape(w.shape), w, rtol=1e-5, atol=1e-6)
    # uint8 kmodel with a dataset and a report, then kcc infer on it
    out_q = tmp_path / "q.kmodel"
    assert main(["compile", str(path), str(out_q), "-i", "onnx", "--dataset", str(ds), "--dataset-format", "raw",
                 "--input-type", "float", "--report", str(tmp_path / "rep"), "-q"]) == 0
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# kcc report: `net.onnx`")
    prog = kpu_sim.load(out_q.read_bytes())
    cos = [float(np.dot(prog.run([x])[0].ravel(), w.ravel()) / np.linalg.norm(prog.run([x])[0]) / np.linalg.norm(w))
           for x, w in zip(xs, want)]
    assert min(cos) > 0.99, cos
    assert main(["infer", str(out_q), str(tmp_path / "inf"), "--dataset", str(ds), "--dataset-format", "raw",
                 "-q"]) == 0
    assert len(list((tmp_path / "inf").glob("*.bin"))) == 4
    # kcc.compile() from Python, path as a string
    res = kcc.compile(str(path), str(tmp_path / "api.kmodel"), inference_type="float")
    assert (tmp_path / "api.kmodel").read_bytes() == res.kmodel == out_f.read_bytes()
    capsys.readouterr()


def test_cli_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "dyn.onnx"
    path.write_bytes(model([node("Relu", ["x"], ["y"])], {"x": [1, 3, "h", 8]}, ["y"]))
    assert main(["compile", str(path), str(tmp_path / "o.kmodel"), "--inference-type", "float"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: dyn.onnx: input 'x' has a dynamic shape")
