"""Read a .tflite flatbuffer into plain Python records; the only kcc module that touches the schema.

The `tflite` package gives lazy accessors over the raw bytes: a truncated or random file fails deep
inside them with IndexError, struct.error or a numpy ValueError, or worse, a garbage vector length
sends a loop to billions of iterations. So this module reads *everything* eagerly, inside one guard
that turns any such failure into a one-line `ModelFormatError` naming the file, and checks every
index (opcode, tensor, buffer) and every buffer size against the shape before anyone uses it.

What the rest of the frontend sees (schema: tensorflow/lite/schema/schema.fbs):
* `TfliteTensor`: name, shape, dtype name, constant data as a numpy array (float16/int8 kept as is,
  little-endian decoded), quantization parameters.
* `TfliteOperator`: opcode name (`max(builtin_code, deprecated_builtin_code)`: the deprecated int8
  field saturates at 127 = PLACEHOLDER_FOR_GREATER_OP_CODES), input/output tensor indices (-1 = an
  omitted optional input) and the builtin options as a dict with snake_case keys; enum-valued
  options (padding, fused activation, weights format) are given by their schema names.
* `TfliteModel`: the tensors and operators of subgraph 0 plus its input/output tensor indices.
  Further subgraphs only exist as bodies of control-flow ops (WHILE, IF, CALL_ONCE), which the
  importer reports as unsupported ops, so they are not read.
"""

from __future__ import annotations

import inspect
import io
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import tflite
from tflite.utils import BUILTIN_OPCODE2NAME

from kcc.errors import ForeignModelError, ModelFormatError

# TensorType enum value -> (schema name, little-endian numpy dtype or None if numpy has none).
_TENSOR_TYPES: dict[int, tuple[str, np.dtype | None]] = {}
for _name, _value in vars(tflite.TensorType).items():
    if not _name.startswith("_"):
        _np = {"FLOAT32": "<f4", "FLOAT16": "<f2", "FLOAT64": "<f8", "INT8": "i1", "UINT8": "u1",
               "INT16": "<i2", "UINT16": "<u2", "INT32": "<i4", "UINT32": "<u4", "INT64": "<i8",
               "UINT64": "<u8", "BOOL": "?", "COMPLEX64": "<c8", "COMPLEX128": "<c16"}.get(_name)
        _TENSOR_TYPES[_value] = (_name, np.dtype(_np) if _np else None)

# BuiltinOptions union tag -> options class name (e.g. 1 -> "Conv2DOptions").
_OPTION_CLASSES = {v: k for k, v in vars(tflite.BuiltinOptions).items() if not k.startswith("_")}


def _enum_names(cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_")}


# Options fields whose integer value is a schema enum: report the enum member name instead.
_ENUM_FIELDS = {
    "padding": _enum_names(tflite.Padding),
    "fused_activation_function": _enum_names(tflite.ActivationFunctionType),
    "weights_format": _enum_names(tflite.FullyConnectedOptionsWeightsFormat),
}
_SKIP_METHODS = {"Init"}


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: real = (q - zero_point) * scale, per `axis` if per-channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass(frozen=True, eq=False)
class TfliteTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    # shape_signature with -1 for dynamic dimensions; equals `shape` when the file has none.
    signature: tuple[int, ...]
    type_name: str  # TensorType member name, e.g. "FLOAT32", "FLOAT16", "INT8"
    dtype: np.dtype | None  # native-endian numpy dtype, None for types numpy lacks (INT4, STRING...)
    data: np.ndarray | None  # the constant value (shape `shape`), None for activations
    quant: QuantParams | None
    is_variable: bool = False
    is_sparse: bool = False

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def is_dynamic(self) -> bool:
        return any(d < 0 for d in self.signature) or any(d < 0 for d in self.shape)


@dataclass(frozen=True, eq=False)
class TfliteOperator:
    index: int
    opcode: str  # BuiltinOperator member name, e.g. "CONV_2D"; "CUSTOM" for custom ops
    custom_code: str  # name of a CUSTOM op, "" otherwise
    inputs: tuple[int, ...]  # tensor indices, -1 for an omitted optional input
    outputs: tuple[int, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    def opt(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True, eq=False)
class TfliteModel:
    name: str  # file name used in error messages
    version: int
    tensors: tuple[TfliteTensor, ...]
    operators: tuple[TfliteOperator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    num_subgraphs: int = 1
    description: str = ""

    def producers(self) -> dict[int, TfliteOperator]:
        """Tensor index -> the operator writing it."""
        return {t: op for op in self.operators for t in op.outputs if t >= 0}


def read_tflite(source: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> TfliteModel:
    """Parse a .tflite file (path or bytes). Raises ModelFormatError if it is not a readable model."""
    if isinstance(source, (str, Path)):
        label = name or Path(source).name
        if Path(source).is_dir() and (Path(source) / "saved_model.pb").is_file():
            advice = _ADVICE["savedmodel"].replace("'DIR'", repr(str(source)))
            raise ForeignModelError(f"{label}: {advice}", model_format="savedmodel")
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise ModelFormatError(f"{label}: cannot read model file: {e.strerror or e}") from None
    else:
        label = name or "<model bytes>"
        data = bytes(source)
    return _Reader(data, label).read()


class _Reader:
    def __init__(self, data: bytes, label: str):
        self.buf = data
        self.label = label

    def fail(self, msg: str) -> ModelFormatError:
        return ModelFormatError(f"{self.label}: {msg}")

    def count(self, n: int, what: str, elem_size: int = 4) -> int:
        """A vector length read from the file; cannot exceed what the file could possibly hold."""
        if n < 0 or n * elem_size > len(self.buf):
            raise self.fail(f"corrupt flatbuffer: {what} count {n} exceeds the file size")
        return n

    def read(self) -> TfliteModel:
        if len(self.buf) == 0:
            raise self.fail("empty file, expected a TFLite flatbuffer model")
        if len(self.buf) < 8 or self.buf[4:8] != b"TFL3":
            found = foreign_format(self.buf, self.label)
            if found is not None:
                raise ForeignModelError(f"{self.label}: {found[1]}", model_format=found[0])
            raise self.fail("not a TFLite model (no 'TFL3' flatbuffer identifier)")
        try:
            return self._read()
        except ModelFormatError:
            raise
        except (IndexError, struct.error, ValueError, TypeError, OverflowError, UnicodeDecodeError,
                AttributeError, MemoryError) as e:
            detail = type(e).__name__
            raise self.fail(f"corrupt or truncated TFLite flatbuffer ({detail} while parsing)") from None

    def _read(self) -> TfliteModel:
        model = tflite.Model.GetRootAs(self.buf, 0)
        n_sub = self.count(model.SubgraphsLength(), "subgraph")
        if n_sub < 1:
            raise self.fail("the model has no subgraph")
        n_buf = self.count(model.BuffersLength(), "buffer")
        buffers = [model.Buffers(i) for i in range(n_buf)]
        opcodes = [self._opcode(model.OperatorCodes(i)) for i in
                   range(self.count(model.OperatorCodesLength(), "operator code"))]
        sub = model.Subgraphs(0)
        n_tensors = self.count(sub.TensorsLength(), "tensor")
        tensors = tuple(self._tensor(i, sub.Tensors(i), buffers) for i in range(n_tensors))
        operators = tuple(self._operator(i, sub.Operators(i), opcodes, n_tensors)
                          for i in range(self.count(sub.OperatorsLength(), "operator")))
        inputs = self._indices(sub.InputsAsNumpy(), sub.InputsLength(), n_tensors, "subgraph input")
        outputs = self._indices(sub.OutputsAsNumpy(), sub.OutputsLength(), n_tensors, "subgraph output")
        if -1 in inputs or -1 in outputs:
            raise self.fail("subgraph input/output tensor index -1")
        desc = model.Description()
        return TfliteModel(self.label, int(model.Version()), tensors, operators, inputs, outputs,
                           n_sub, desc.decode("utf-8", "replace") if desc else "")

    # ------------------------------------------------------------------ records
    def _opcode(self, code: Any) -> tuple[str, str]:
        value = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        opname = BUILTIN_OPCODE2NAME.get(value, f"UNKNOWN_OPCODE_{value}")
        custom = code.CustomCode()
        return opname, custom.decode("utf-8", "replace") if custom else ""

    def _indices(self, arr: Any, n: int, n_tensors: int, what: str) -> tuple[int, ...]:
        self.count(n, what)
        values = tuple(int(v) for v in arr) if n else ()
        for v in values:
            if not -1 <= v < n_tensors:
                raise self.fail(f"{what} refers to tensor {v}, the subgraph has {n_tensors}")
        return values

    def _tensor(self, index: int, t: Any, buffers: list[Any]) -> TfliteTensor:
        raw_name = t.Name()
        name = raw_name.decode("utf-8", "replace") if raw_name else f"tensor_{index}"
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if self.count(t.ShapeLength(), "shape") else ()
        sig_len = self.count(t.ShapeSignatureLength(), "shape signature")
        signature = tuple(int(d) for d in t.ShapeSignatureAsNumpy()) if sig_len else shape
        type_code = int(t.Type())
        if type_code not in _TENSOR_TYPES:
            raise self.fail(f"tensor '{name}' has unknown type code {type_code}")
        type_name, le_dtype = _TENSOR_TYPES[type_code]
        b = int(t.Buffer())
        if not 0 <= b < max(len(buffers), 1):
            raise self.fail(f"tensor '{name}' refers to buffer {b}, the model has {len(buffers)}")
        raw = self._buffer_bytes(buffers[b], name) if buffers else b""
        data = None
        if raw:
            data = self._decode(name, raw, shape, type_name, le_dtype)
        quant = self._quant(t.Quantization(), name)
        return TfliteTensor(index, name, shape, signature, type_name,
                            le_dtype.newbyteorder("=") if le_dtype is not None else None, data, quant,
                            bool(t.IsVariable()), t.Sparsity() is not None)

    def _buffer_bytes(self, buffer: Any, tensor: str) -> bytes:
        offset, size = int(buffer.Offset()), int(buffer.Size())
        if offset > 1:  # data stored after the flatbuffer (models > 2 GB, schema "offset/size")
            if offset + size > len(self.buf):
                raise self.fail(f"tensor '{tensor}': buffer [{offset}, +{size}) lies beyond the end of the file")
            return self.buf[offset:offset + size]
        n = self.count(buffer.DataLength(), f"tensor '{tensor}' buffer byte", 1)
        return buffer.DataAsNumpy().tobytes() if n else b""

    def _decode(self, name: str, raw: bytes, shape: tuple[int, ...], type_name: str,
                le_dtype: np.dtype | None) -> np.ndarray:
        if le_dtype is None:  # INT4, STRING, BFLOAT16...: keep the bytes; an importer using it will reject it
            return np.frombuffer(raw, np.uint8).copy()
        if any(d < 0 for d in shape):
            raise self.fail(f"constant tensor '{name}' has a negative dimension in shape {shape}")
        expect = int(np.prod(shape, dtype=np.int64)) * le_dtype.itemsize
        if len(raw) != expect:
            raise self.fail(f"tensor '{name}': buffer holds {len(raw)} bytes but shape {list(shape)} of "
                            f"{type_name} needs {expect}")
        return np.frombuffer(raw, le_dtype).astype(le_dtype.newbyteorder("="), copy=True).reshape(shape)

    def _quant(self, q: Any, tensor: str) -> QuantParams | None:
        if q is None or not self.count(q.ScaleLength(), f"tensor '{tensor}' scale"):
            return None
        scale = np.asarray(q.ScaleAsNumpy(), np.float32).copy()
        nz = self.count(q.ZeroPointLength(), f"tensor '{tensor}' zero point")
        zp = np.asarray(q.ZeroPointAsNumpy(), np.int64).copy() if nz else np.zeros(scale.shape, np.int64)
        if zp.size not in (1, scale.size):
            raise self.fail(f"tensor '{tensor}': {scale.size} quantization scales but {zp.size} zero points")
        return QuantParams(scale, zp, int(q.QuantizedDimension()))

    def _operator(self, index: int, op: Any, opcodes: list[tuple[str, str]], n_tensors: int) -> TfliteOperator:
        oc = int(op.OpcodeIndex())
        if not 0 <= oc < len(opcodes):
            raise self.fail(f"operator {index} uses opcode index {oc}, the model has {len(opcodes)}")
        opname, custom = opcodes[oc]
        where = f"operator {index} ({opname})"
        inputs = self._indices(op.InputsAsNumpy(), op.InputsLength(), n_tensors, f"{where} input")
        outputs = self._indices(op.OutputsAsNumpy(), op.OutputsLength(), n_tensors, f"{where} output")
        if -1 in outputs:
            raise self.fail(f"{where} has an output tensor index -1")
        return TfliteOperator(index, opname, custom, inputs, outputs, self._options(op))

    def _options(self, op: Any) -> Mapping[str, Any]:
        cls_name = _OPTION_CLASSES.get(int(op.BuiltinOptionsType()))
        table = op.BuiltinOptions()
        if not cls_name or cls_name == "NONE" or table is None:
            return MappingProxyType({})
        cls = getattr(tflite, cls_name, None)
        if cls is None:
            return MappingProxyType({})
        obj = cls()
        obj.Init(table.Bytes, table.Pos)
        return MappingProxyType(_decode_options(obj))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _decode_options(obj: Any) -> dict[str, Any]:
    """Every scalar and vector field of a generated options table, read eagerly.

    Generated classes expose a field `X` as `X()` (scalar) or `X(j)` + `XAsNumpy()` + `XLength()`
    (vector); nested tables are skipped (no builtin op kcc imports uses one).
    """
    out: dict[str, Any] = {}
    methods = {n: m for n, m in inspect.getmembers(type(obj), inspect.isfunction) if not n.startswith("_")}
    for n, fn in methods.items():
        if n in _SKIP_METHODS or n.endswith(("AsNumpy", "Length", "IsNone", "BufferHasIdentifier")):
            continue
        key = _snake(n)
        if f"{n}AsNumpy" in methods:
            length = getattr(obj, f"{n}Length")()
            out[key] = tuple(np.asarray(getattr(obj, f"{n}AsNumpy")()).tolist()) if length else ()
        elif len(inspect.signature(fn).parameters) == 1:
            value = fn(obj)
            if isinstance(value, (bool, int, float)):
                names = _ENUM_FIELDS.get(key)
                out[key] = names.get(value, f"UNKNOWN_{value}") if names else value
    return out


# -- other model formats ---------------------------------------------------------------------------
# A file without the 'TFL3' identifier is recognised by its content (the extension only breaks ties
# between protobuf schemas), so the one error line can say what it is and how to get a .tflite.

_TO_TFLITE = "kcc compiles TFLite (.tflite) models only"
_ONNX_TO_TFLITE = "onnx2tf -i MODEL.onnx -o OUT (writes OUT/MODEL_float32.tflite)"
_ADVICE = {
    "onnx": f"an ONNX model (protobuf ModelProto), not TFLite: {_TO_TFLITE} until the ONNX frontend lands; "
            f"convert it with {_ONNX_TO_TFLITE}, or onnx-tensorflow then tf.lite.TFLiteConverter, "
            f"and compile the .tflite",
    "caffe": f"a Caffe model (binary NetParameter, .caffemodel), not TFLite: {_TO_TFLITE} until the Caffe "
             f"frontend lands; convert the .prototxt + .caffemodel pair to ONNX (e.g. caffe2onnx), then "
             f"{_ONNX_TO_TFLITE}, and compile the .tflite",
    "prototxt": f"a Caffe network definition (text NetParameter, .prototxt; the weights are in the "
                f".caffemodel), not TFLite: {_TO_TFLITE} until the Caffe frontend lands; convert the "
                f".prototxt + .caffemodel pair to ONNX (e.g. caffe2onnx), then {_ONNX_TO_TFLITE}, and "
                f"compile the .tflite",
    "keras": f"a Keras model, not TFLite: {_TO_TFLITE}; export it with "
             f"open('MODEL.tflite', 'wb').write(tf.lite.TFLiteConverter.from_keras_model("
             f"tf.keras.models.load_model('MODEL.h5')).convert()) and compile the .tflite",
    "hdf5": f"an HDF5 file (a Keras .h5 model?), not TFLite: {_TO_TFLITE}; for a Keras model run "
            f"open('MODEL.tflite', 'wb').write(tf.lite.TFLiteConverter.from_keras_model("
            f"tf.keras.models.load_model('MODEL.h5')).convert()) and compile the .tflite",
    "pytorch": f"a PyTorch model (torch.save / TorchScript), not TFLite: {_TO_TFLITE}; export it with "
               f"torch.onnx.export(model, example_input, 'MODEL.onnx'), then {_ONNX_TO_TFLITE} (or "
               f"convert it with ai-edge-torch), and compile the .tflite",
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
        return "kmodel", _ADVICE["kmodel"].format(version=kind)
    if any(data[at:at + 8] == _HDF5_SIGNATURE for at in (0, 512, 1024, 2048, 4096)):
        kind = "keras" if suffix in (".h5", ".hdf5", ".keras") else "hdf5"
        return kind, _ADVICE[kind]
    if data[:4] == b"PK\x03\x04":
        kind = _zip_kind(data)
    elif data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        torch = suffix in (".pt", ".pth") or _TORCH_MAGIC in data[:32] or b"torch" in data[:1 << 16]
        kind = "pytorch" if torch else None
    elif _CAFFE_TEXT.search(data[:1 << 16]) and _is_text(data[:1 << 16]):
        kind = "prototxt"
    else:
        kind = _protobuf_kind(data, suffix)
    return None if kind is None else (kind, _ADVICE[kind])


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
