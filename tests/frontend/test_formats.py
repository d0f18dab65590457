"""Models of other frameworks (and kmodels) given to `kcc compile`: recognised by content, one error line
that names the file, the format and how to get a .tflite (kcc/frontend/tflite/reader.py).

The synthetic files are built here from the formats' own definitions: protobuf wire format with the
field numbers of onnx.proto / caffe.proto / saved_model.proto / graph.proto, the HDF5 signature, the
zip layouts of Keras v3 and torch.save, pickle, and kmodel headers (kmodel_v4.md §12).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import numpy as np
import pytest
import refkit

import kcc.kmodel as km
from kcc.cli import main
from kcc.errors import ForeignModelError, ModelFormatError
from kcc.frontend.detect import foreign_format
from kcc.frontend.tflite.importer import import_tflite


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    """One protobuf field: an int as a varint (wire type 0), bytes length-delimited (wire type 2)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _onnx() -> bytes:
    node = _field(1, b"x") + _field(2, b"y") + _field(4, b"Relu")  # NodeProto: input, output, op_type
    graph = _field(1, node) + _field(2, b"g")  # GraphProto: node, name
    return (_field(1, 8) + _field(2, b"pytorch") + _field(3, b"2.1") + _field(7, graph)
            + _field(8, _field(2, 13)))  # ModelProto: ir_version, producer, graph, opset_import{version}


def _caffemodel() -> bytes:
    layer = _field(1, b"conv1") + _field(2, b"Convolution")  # LayerParameter: name, type
    return _field(1, b"net") + _field(100, layer) + _field(100, layer)  # NetParameter: name, layer


def _caffemodel_v1() -> bytes:
    return _field(1, b"net") + _field(2, _field(4, b"conv1"))  # NetParameter: name, layers (V1LayerParameter)


PROTOTXT = b'name: "net"\ninput: "data"\ninput_dim: 1\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n'


def _saved_model() -> bytes:
    return _field(1, 1) + _field(2, _field(1, _field(2, b"serve")))  # schema version, meta_graphs


def _graphdef() -> bytes:
    node = _field(1, b"input") + _field(2, b"Placeholder")  # NodeDef: name, op
    return _field(1, node) + _field(1, node) + _field(4, _field(1, 1087))  # node, node, versions{producer}


def _zip(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n in names:
            z.writestr(n, b"{}")
    return buf.getvalue()


HDF5 = b"\x89HDF\r\n\x1a\n" + bytes(200)
TORCH_LEGACY = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
                + pickle.dumps({"protocol_version": 1001}, protocol=2))  # torch.save's legacy header
KMODEL_V5 = b"LDMK" + struct.pack("<I", 5) + bytes(64)


def _kmodel_v4() -> bytes:
    x = km.MemoryRange(km.MemoryType.MAIN, km.DataType.FLOAT32, 0, 16)
    return km.write(km.KModel(main_mem=16, inputs=[x], input_shapes=[(1, 1, 1, 4)], outputs=[x],
                              nodes=[km.Unary(input=x, output=x, unary_op=km.UnaryOp.NEG)]))


CASES = [  # (file name, content, format, words the advice must contain)
    ("m.onnx", _onnx(), "onnx", ["ONNX", "compile it with -i onnx"]),
    ("net.caffemodel", _caffemodel(), "caffe", ["Caffe", "kcc compile net.caffemodel", "-i caffe"]),
    ("old.caffemodel", _caffemodel_v1(), "caffe", ["Caffe", "--prototxt old.prototxt"]),
    ("net.prototxt", PROTOTXT, "prototxt", ["Caffe network definition", "holds no weights",
                                            "kcc compile net.caffemodel OUT.kmodel --prototxt net.prototxt"]),
    ("m.h5", HDF5, "keras", ["tf.lite.TFLiteConverter.from_keras_model(tf.keras.models.load_model('m.h5'))"]),
    ("m.hdf5", bytes(512) + HDF5, "keras", ["load_model('m.hdf5')"]),  # after a 512-byte user block
    ("m.keras", _zip(["metadata.json", "config.json", "model.weights.h5"]), "keras",
     ["load_model('m.keras')"]),
    ("m.pt", _zip(["m/data.pkl", "m/version", "m/data/0"]), "pytorch",
     ["torch.onnx.export(model, example_input, 'm.onnx')", "compile the .onnx"]),
    ("script.pt", _zip(["script/constants.pkl", "script/code/__torch__.py"]), "pytorch", ["PyTorch"]),
    ("m.pth", TORCH_LEGACY, "pytorch", ["PyTorch", "torch.onnx.export"]),
    ("saved_model.pb", _saved_model(), "savedmodel", ["SavedModel", "from_saved_model"]),
    ("frozen.pb", _graphdef(), "graphdef", ["frozen graph", "from_frozen_graph('frozen.pb'"]),
    ("m.kmodel", _kmodel_v4(), "kmodel", ["already a kmodel v4", "kcc info / kcc infer"]),
    ("m5.kmodel", KMODEL_V5, "kmodel", ["already a kmodel v5 (nncase v1)"]),
]


@pytest.mark.parametrize("name, data, fmt, words", CASES, ids=[c[0] for c in CASES])
def test_foreign_model_is_named_with_advice(name, data, fmt, words) -> None:
    with pytest.raises(ForeignModelError) as e:
        import_tflite(data, name=name)
    line = e.value.one_line()
    assert e.value.model_format == fmt and line.startswith(f"{name}: ") and "\n" not in str(e.value)
    assert "not TFLite" in line or "already a kmodel" in line
    for w in words:
        assert w in line


@pytest.mark.parametrize("name, data, fmt", [(c[0], c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_content_decides_not_the_extension(name, data, fmt) -> None:
    found = foreign_format(data, "upload.bin")
    if fmt in ("keras",) and data[:2] != b"PK":
        assert found[0] == "hdf5"  # HDF5 without a Keras extension: said to be HDF5, advice for Keras
    else:
        assert found is not None and found[0] == fmt


def test_shipped_v3_kmodel_is_recognised() -> None:
    path = refkit.SHIPPED / "nncase-examples" / "history" / "v0.1.0-rc5" / "iris.kmodel"
    with pytest.raises(ForeignModelError, match=r"^iris.kmodel: this is already a kmodel v3 \(nncase v0.1\)"):
        import_tflite(path)


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n" + bytes(100),  # an image
    b"hello, world\n",  # text that is no prototxt
    _zip(["readme.txt"]),  # a zip of something else
    pickle.dumps([1, 2, 3], protocol=4),  # a pickle without torch
    bytes(range(256)) * 4,  # not protobuf wire format
])
def test_unknown_content_keeps_the_tflite_message(data) -> None:
    with pytest.raises(ModelFormatError) as e:
        import_tflite(data, name="thing.dat")
    assert not isinstance(e.value, ForeignModelError)
    assert e.value.one_line() == "thing.dat: not a TFLite model (no 'TFL3' flatbuffer identifier)"


def test_extension_breaks_the_tie_between_protobuf_schemas() -> None:
    ambiguous = _field(3, b"x")  # valid protobuf that none of the schemas' field sets pins down
    assert foreign_format(ambiguous, "a.onnx")[0] == "onnx"
    assert foreign_format(ambiguous, "a.caffemodel")[0] == "caffe"
    assert foreign_format(ambiguous, "a.dat") is None


def test_saved_model_directory(tmp_path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(_saved_model())
    with pytest.raises(ForeignModelError, match="from_saved_model"):
        import_tflite(tmp_path)


def test_cli_reads_onnx_with_the_onnx_frontend(tmp_path, capsys) -> None:
    """An ONNX file goes to the ONNX frontend (picked from the content); this one's Relu reads a tensor
    nothing defines, which is said in one line."""
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(_onnx())
    assert main(["compile", str(onnx), str(tmp_path / "out.kmodel"), "--inference-type", "float"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: detector.onnx: Relu 'y': input 'x' is produced by no")
    assert not (tmp_path / "out.kmodel").exists()


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("name, fmt", [("version-slim-320_simplified.onnx", "onnx"),
                                       ("slim-320.caffemodel", "caffe"), ("slim-320.prototxt", "prototxt")])
def test_real_onnx_and_caffe_files(name, fmt) -> None:
    path = refkit.REFERENCE / "frontends" / name
    with pytest.raises(ForeignModelError) as e:
        import_tflite(path)
    assert e.value.model_format == fmt and e.value.one_line().startswith(f"{name}: ")
    assert foreign_format(np.frombuffer(path.read_bytes(), np.uint8).tobytes(), "")[0] == fmt  # content alone
