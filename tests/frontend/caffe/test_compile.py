"""A Caffe model through the whole compiler: `kcc compile m.caffemodel` (float and uint8, --prototxt,
--report), `kcc infer` on the result, and `kcc.compile(..., prototxt=...)`."""

from __future__ import annotations

import numpy as np
import pytest
import refkit
from caffe_nets import Net, rand

import kcc
import kpu_sim
from kcc.cli import main
from kcc.eval.interpreter import run
from kcc.frontend.caffe import import_caffe


def _detector() -> Net:
    """conv+BN+Scale+ReLU, max pool (ceil), depthwise, 1x1 head, SSD-style permute/reshape/softmax."""
    n = Net("tiny").input("data", (1, 3, 32, 32))
    n.add("Convolution", "conv1", "data", blobs=[rand(8, 3, 3, 3, scale=0.4), rand(8, scale=0.1)],
          convolution_param={"num_output": 8, "kernel_size": [3], "pad": [1]})
    n.add("BatchNorm", "bn1", "conv1", "conv1", blobs=[rand(8, scale=0.1), np.abs(rand(8)) + 0.5, np.array([1.0])])
    n.add("Scale", "sc1", "conv1", "conv1", blobs=[np.abs(rand(8)) + 0.5, rand(8, scale=0.1)],
          scale_param={"bias_term": True})
    n.add("ReLU", "relu1", "conv1", "conv1")
    n.add("Pooling", "pool1", "conv1", pooling_param={"pool": "MAX", "kernel_size": 3, "stride": 2})
    n.add("Convolution", "dw", "pool1", blobs=[rand(8, 1, 3, 3, scale=0.4), rand(8, scale=0.1)],
          convolution_param={"num_output": 8, "group": 8, "kernel_size": [3], "pad": [1]})
    n.add("ReLU", "dw_relu", "dw", "dw", relu_param={"negative_slope": 0.1})
    n.add("Convolution", "head", "dw", blobs=[rand(4, 8, 1, 1, scale=0.4), rand(4, scale=0.1)],
          convolution_param={"num_output": 4, "kernel_size": [1]})
    n.add("Permute", "perm", "head", permute_param={"order": [0, 2, 3, 1]})
    n.add("Reshape", "rs", "perm", reshape_param={"shape": {"dim": [1, -1, 2]}})
    n.add("Softmax", "scores", "rs", softmax_param={"axis": 2})
    return n


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("caffe")
    model, proto = _detector().write(d, "tiny")
    data = d / "data"
    data.mkdir()
    xs = [rand(1, 3, 32, 32) for _ in range(4)]
    for i, x in enumerate(xs):
        x.tofile(data / f"s{i}.bin")
    return d, model, proto, data, xs


def test_cli_float_and_infer(files, capsys) -> None:
    d, model, proto, data, xs = files
    out = d / "float.kmodel"
    assert main(["compile", str(model), str(out), "--prototxt", str(proto), "--inference-type", "float", "-q"]) == 0
    assert main(["infer", str(out), str(d / "inf"), "--dataset", str(data), "--dataset-format", "raw", "-q"]) == 0
    ref = run(import_caffe(model), [xs[0]])[0]
    got = np.fromfile(d / "inf" / "s0.bin", np.float32)
    assert got.size == ref.size and _cos(got, ref) >= 0.99999


def test_cli_uint8_with_report(files, capsys) -> None:
    d, model, proto, data, xs = files
    out = d / "u8.kmodel"
    argv = ["compile", str(model), str(out), "--dataset", str(data), "--dataset-format", "raw",
            "--input-type", "float", "--report", str(d / "report"), "-q"]
    assert main(argv) == 0
    assert (d / "report" / "report.md").is_file()
    program = kpu_sim.load(out.read_bytes())
    g = import_caffe(model)
    for x in xs:
        (got,) = program.run([x])
        assert _cos(got, run(g, [x])[0]) >= 0.99


def test_cli_tflite_with_prototxt_is_one_line(files, tmp_path, capsys) -> None:
    d, model, proto, data, xs = files
    tfl = refkit.SHIPPED / "nncase-examples" / "iris.tflite"
    assert main(["compile", str(tfl), str(tmp_path / "o.kmodel"), "--prototxt", str(proto),
                 "--inference-type", "float"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes no prototxt" in err[0]


def test_api_compile_with_prototxt(files, tmp_path) -> None:
    d, model, proto, data, xs = files
    result = kcc.compile(str(model), tmp_path / "api.kmodel", prototxt=str(proto), inference_type="float")
    assert (tmp_path / "api.kmodel").read_bytes() == result.kmodel
    (got,) = kpu_sim.load(result.kmodel).run([xs[1]])
    assert _cos(got, run(import_caffe(model), [xs[1]])[0]) >= 0.99999
