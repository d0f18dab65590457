"""Which model format a file is, from its content: the frontends' dispatch and the advice for a
file no frontend reads (a kmodel, Keras, PyTorch, TensorFlow).

The extension only breaks ties between protobuf schemas, so the one error line can say what a file
is and how to get a model kcc reads.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from pathlib import Path


def model_format(data: bytes, name: str = "") -> str | None:
    """'tflite', or a kind of `foreign_format` ('onnx', 'caffe', 'prototxt', 'keras', ...); None if unknown."""
    if data[4:8] == b"TFL3":
        return "tflite"
    found = _foreign_kind(data, Path(name).suffix.lower())
    return None if found is None else found[0]


_TO_TFLITE = "kcc compiles TFLite (.tflite), ONNX (.onnx) and Caffe (.caffemodel) models"
_ONNX_TO_TFLITE = "onnx2tf -i MODEL.onnx -o OUT (writes OUT/MODEL_float32.tflite)"
ADVICE = {
    "onnx": "an ONNX model (protobuf ModelProto), not TFLite: compile it with -i onnx (or without -i: kcc "
            "picks the ONNX frontend from the file's content)",
    "caffe": "a Caffe model (binary NetParameter, .caffemodel), not TFLite: compile it with kcc's Caffe "
             "frontend, kcc compile MODEL.caffemodel OUT.kmodel -i caffe (add --prototxt MODEL.prototxt "
             "to use its network definition)",
    "prototxt": "a Caffe network definition (text NetParameter, .prototxt), not TFLite, and it holds no weights: compile "
                "the weights with it, kcc compile MODEL.caffemodel OUT.kmodel --prototxt MODEL.prototxt",
    "keras": f"a Keras model, not TFLite: {_TO_TFLITE}; export it with "
             f"open('MODEL.tflite', 'wb').write(tf.lite.TFLiteConverter.from_keras_model("
             f"tf.keras.models.load_model('MODEL.h5')).convert()) and compile the .tflite",
    "hdf5": f"an HDF5 file (a Keras .h5 model?), not TFLite: {_TO_TFLITE}; for a Keras model run "
            f"open('MODEL.tflite', 'wb').write(tf.lite.TFLiteConverter.from_keras_model("
            f"tf.keras.models.load_model('MODEL.h5')).convert()) and compile the .tflite",
    "pytorch": f"a PyTorch model (torch.save / TorchScript), not TFLite: {_TO_TFLITE}; export it with "
               f"torch.onnx.export(model, example_input, 'MODEL.onnx') (a fixed input size) and compile "
               f"the .onnx",
    "savedmodel": f"a TensorFlow SavedModel, not TFLite: {_TO_TFLITE}; convert the SavedModel directory with "
                  f"tf.lite.TFLiteConverter.from_saved_model('DIR').convert() and compile the .tflite",
    "graphdef": f"a TensorFlow frozen graph (GraphDef .pb), not TFLite: {_TO_TFLITE}; convert it with "
                f"tf.compat.v1.lite.TFLiteConverter.from_frozen_graph('MODEL.pb', INPUTS, OUTPUTS).convert() "
                f"and compile the .tflite",
    "kmodel": "this is already a kmodel{version} (a compiled model, not a TFLite one); use kcc info / "
              "kcc infer on it, and give kcc compile the .tflite it was compiled from",
}
# kmodel_v4.md §12: 'LDMK' + version 4 (nncase v0.2) or 5 (nncase v1); v3 starts with u32 3, arch u32 0 at 8.
_KMODEL_VERSIONS = {3: " v3 (nncase v0.1)", 4: " v4", 5: " v5 (nncase v1)"}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # at 0 or after a user block of 512 * 2^k bytes (HDF5 spec)
# torch.save's legacy (non-zip) format opens with this number pickled (torch/serialization.py MAGIC_NUMBER).
_TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_CAFFE_TEXT = re.compile(rb"^\s*(layers?\s*\{|input\s*:|input_shape\s*\{|input_dim\s*:)", re.MULTILINE)


def foreign_format(data: bytes, name: str = "") -> tuple[str, str] | None:
    """(format, one-line advice) for a model file of another framework or a kmodel; None if unknown.
    `name`: the file's name, whose extension breaks ties and which the advice's commands use."""
    found = _foreign_kind(data, Path(name).suffix.lower())
    if found is None or not name or name.startswith("<"):
        return found
    kind, advice = found
    stem = Path(name).stem
    own = "MODEL.onnx" if kind == "onnx" else "MODEL.h5" if kind in ("keras", "hdf5") else "MODEL.pb"
    return kind, advice.replace(own, Path(name).name).replace("MODEL", stem)


def _foreign_kind(data: bytes, suffix: str) -> tuple[str, str] | None:
    kind = _kmodel(data)
    if kind is not None:
        return "kmodel", ADVICE["kmodel"].format(version=kind)
    if any(data[at:at + 8] == _HDF5_SIGNATURE for at in (0, 512, 1024, 2048, 4096)):
        kind = "keras" if suffix in (".h5", ".hdf5", ".keras") else "hdf5"
        return kind, ADVICE[kind]
    if data[:4] == b"PK\x03\x04":
        kind = _zip_kind(data)
    elif data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        torch = suffix in (".pt", ".pth") or _TORCH_MAGIC in data[:32] or b"torch" in data[:1 << 16]
        kind = "pytorch" if torch else None
    elif _CAFFE_TEXT.search(data[:1 << 16]) and _is_text(data[:1 << 16]):
        kind = "prototxt"
    else:
        kind = _protobuf_kind(data, suffix)
    return None if kind is None else (kind, ADVICE[kind])


def _kmodel(data: bytes) -> str | None:
    if data[:4] == b"LDMK" and len(data) >= 8:
        return _KMODEL_VERSIONS.get(struct.unpack_from("<I", data, 4)[0], "")
    if len(data) >= 12 and struct.unpack_from("<3I", data)[::2] == (3, 0):
        return _KMODEL_VERSIONS[3]
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _zip_kind(data: bytes) -> str | None:
    """Keras v3 .keras: config.json + model.weights.h5; torch.save (zip) and TorchScript: <name>/data.pkl
    or constants.pkl; a zipped SavedModel: saved_model.pb."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "config.json" in base and ("model.weights.h5" in base or "metadata.json" in base):
        return "keras"
    if "data.pkl" in base or "constants.pkl" in base:
        return "pytorch"
    if "saved_model.pb" in base:
        return "savedmodel"
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _protobuf_fields(data: bytes) -> dict[int, set[int]] | None:
    """{field number: wire types} of the top-level message, if all of `data` is protobuf wire format."""
    fields: dict[int, set[int]] = {}
    pos = 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number == 0:
                return None
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = _varint(data, pos)
                pos += length
            elif wire == 5:
                pos += 4
            else:
                return None  # groups (3, 4) are not used by any of these schemas; 6, 7 do not exist
            if pos > len(data):
                return None
            fields.setdefault(number, set()).add(wire)
    except ValueError:
        return None
    return fields or None


def _protobuf_kind(data: bytes, suffix: str) -> str | None:
    """Which schema a protobuf file follows, by its top-level fields (field numbers from onnx.proto,
    caffe.proto, saved_model.proto, graph.proto); the extension decides when the fields do not."""
    fields = _protobuf_fields(data)
    if fields is None:
        return None

    def has(number: int, wire: int) -> bool:
        return wire in fields.get(number, ())

    if has(1, 0) and has(7, 2):  # ModelProto: ir_version (varint), graph (message)
        return "onnx"
    if has(100, 2) or (has(2, 2) and has(1, 2) and not has(4, 2)):  # NetParameter: name, layer(s)
        return "caffe"
    if has(1, 0) and has(2, 2) and set(fields) <= {1, 2}:  # SavedModel: schema version, meta_graphs
        return "savedmodel"
    if has(1, 2) and has(4, 2) and set(fields) <= {1, 2, 3, 4}:  # GraphDef: node, library, versions
        return "graphdef"
    return {".onnx": "onnx", ".caffemodel": "caffe", ".pb": "graphdef"}.get(suffix)
