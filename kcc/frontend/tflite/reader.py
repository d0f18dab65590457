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
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import tflite
from tflite.utils import BUILTIN_OPCODE2NAME

from kcc.errors import ForeignModelError, ModelFormatError
from kcc.frontend.detect import ADVICE, foreign_format
from kcc.frontend.imported import read_source

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
            advice = ADVICE["savedmodel"].replace("'DIR'", repr(str(source)))
            raise ForeignModelError(f"{label}: {advice}", model_format="savedmodel")
    data, label = read_source(source, name)
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
