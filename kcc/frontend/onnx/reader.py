"""Read an ONNX file into plain Python records; the only module of the ONNX frontend that parses protobuf.

What the rest of the frontend sees (onnx.proto, onnx/docs/IR.md):
* `OnnxNode`: op type (with its domain when not the default one), the tensor names of its inputs and
  outputs ("" = an omitted optional one, IR.md "Optional inputs and outputs") and its attributes as
  Python values (strings decoded, tensors as numpy arrays).
* `OnnxModel`: the nodes of the main graph in file order (IR.md: nodes are topologically sorted), the
  initializers as numpy arrays, the real graph inputs and the output names, the default-domain opset.

Three normalisations happen here, so that importers see one form of every model:
* initializers that old exporters also list as graph inputs (PyTorch < 1.4, nncase #188: "Data type of
  input '278' is not supported") are constants, not inputs: IR.md says an input with an initializer
  of the same name has that value as its default, and kcc compiles with fixed weights;
* a symbolic or missing batch dimension (dim 0) becomes 1, as in the TFLite frontend; any other
  non-static dimension is refused here, naming the input;
* models of opsets before 7 are brought to opset 7 with `onnx.version_converter` (the forms of the
  ops the importers handle go back to opset 7; 7 is where multidirectional broadcasting starts).
Shape inference (`onnx.shape_inference`, with data propagation) then records the declared static
shape of every tensor it can, which the importer checks its own shapes against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from kcc.errors import ModelFormatError, UnsupportedModelError
from kcc.frontend.detect import model_format
from kcc.frontend.imported import read_source

OLDEST_OPSET = 7  # the oldest opset whose op forms the importers know (older models are converted)
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16)


@dataclass
class OnnxNode:
    index: int
    op_type: str  # "Conv", or "domain.Op" for ops outside the default ONNX domain
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    proto: onnx.NodeProto = field(repr=False)

    @property
    def label(self) -> str:
        """How messages name the node: its name, else its first output tensor."""
        return self.name or next((o for o in self.outputs if o), f"node{self.index}")

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass
class OnnxInput:
    name: str
    shape: tuple[int, ...]
    elem_type: int  # onnx.TensorProto data type

    @property
    def type_name(self) -> str:
        return onnx.TensorProto.DataType.Name(self.elem_type)


@dataclass
class OnnxModel:
    name: str  # file name used in messages
    opset: int  # of the default domain
    nodes: list[OnnxNode]
    initializers: dict[str, np.ndarray]
    inputs: list[OnnxInput]
    outputs: list[str]
    #: tensor name -> static shape declared by the file or found by shape inference
    declared_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    producer: str = ""
    converted_from: int | None = None  # the file's own opset, when onnx.version_converter raised it


def read_onnx(source: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> OnnxModel:
    """Parse an ONNX model (path or bytes). ModelFormatError if it is not a readable ONNX model,
    UnsupportedModelError for inputs kcc cannot compile (dynamic shapes, non-float types)."""
    data, label = read_source(source, name)
    model = _parse(data, label)
    if isinstance(source, (str, Path)) and _has_external_data(model):
        try:  # tensors stored beside the file (models > 2 GB, or exported with external data)
            onnx.load_external_data_for_model(model, str(Path(source).resolve().parent))
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{label}: cannot read the model's external tensor data: {e}") from None
    return _convert(model, label)


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise ModelFormatError(f"{label}: empty file, expected an ONNX model")
    kind = model_format(data, label)
    if kind not in ("onnx", None):
        what = {"tflite": "a TFLite model: compile it with -i tflite (or without -i)"}.get(kind, f"a {kind} file")
        raise ModelFormatError(f"{label}: not an ONNX model (-i onnx) but {what}")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{label}: corrupt or truncated ONNX file ({type(e).__name__} while parsing)") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelFormatError(f"{label}: not an ONNX model, or one without a graph (no nodes)")
    return model


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def default_opset(model: onnx.ModelProto) -> int:
    """The default domain's opset; IR version 3 files without opset_import mean opset 1 (IR.md)."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _convert(model: onnx.ModelProto, label: str) -> OnnxModel:
    opset = default_opset(model)
    if opset < OLDEST_OPSET:
        # the converter wants every initializer declared as a graph input, as IR version 3 requires
        declared = {i.name for i in model.graph.input}
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in model.graph.initializer if t.name not in declared)
        try:
            model = onnx.version_converter.convert_version(model, OLDEST_OPSET)
        except Exception as e:  # the converter raises bare RuntimeErrors from C++
            raise UnsupportedModelError(
                f"{label}: opset {opset} model could not be converted to opset {OLDEST_OPSET} ({str(e).splitlines()[0]})",
                hint="re-export the model with opset 9 or later") from None
        converted_from, opset = opset, OLDEST_OPSET
    else:
        converted_from = None
    g = model.graph
    try:
        initializers = {t.name: _array(t) for t in g.initializer}
    except (ValueError, TypeError) as e:
        raise ModelFormatError(f"{label}: unreadable initializer ({e})") from None
    inputs = [i for i in g.input if i.name not in initializers]
    _fix_inputs(inputs, label)
    declared = _infer_shapes(model)
    nodes = []
    for k, n in enumerate(g.node):
        op_type = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        try:
            attrs = {a.name: _attr_value(a) for a in n.attribute}
        except (ValueError, TypeError) as e:
            raise ModelFormatError(f"{label}: {op_type} '{n.name}': unreadable attribute ({e})") from None
        nodes.append(OnnxNode(k, op_type, n.name, tuple(n.input), tuple(n.output), attrs, n))
    return OnnxModel(
        name=label, opset=opset, nodes=nodes, initializers=initializers,
        inputs=[OnnxInput(i.name, _static_shape(i), i.type.tensor_type.elem_type) for i in inputs],
        outputs=[o.name for o in g.output], declared_shapes=declared, producer=model.producer_name,
        converted_from=converted_from)


def _array(t: onnx.TensorProto) -> np.ndarray:
    a = numpy_helper.to_array(t)
    return a.astype(np.float32) if a.dtype in (np.float16, np.float64) else a


def _attr_value(a: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return _array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    if isinstance(value, list) and value and isinstance(value[0], onnx.TensorProto):
        return [_array(v) for v in value]
    return value


def _fix_inputs(inputs: list[onnx.ValueInfoProto], label: str) -> None:
    """Batch dimension -> 1 where it is symbolic; refuse any other non-static dimension or a
    non-tensor / non-float input (the K210 runtime feeds one float or uint8 image)."""
    problems, hints = [], []
    for i in inputs:
        if not i.type.HasField("tensor_type"):
            problems.append(f"input '{i.name}' is not a tensor")
            continue
        tt = i.type.tensor_type
        if tt.elem_type not in FLOAT_TYPES:
            problems.append(f"input '{i.name}' is {onnx.TensorProto.DataType.Name(tt.elem_type)}, kcc needs "
                            f"float inputs")
            hints.append("move integer casts / index inputs out of the model, or make them constants")
        if not tt.HasField("shape"):
            problems.append(f"input '{i.name}' has no shape")
            hints.append("export the model with a fixed input size (torch.onnx.export without dynamic_axes)")
            continue
        dims = tt.shape.dim
        if dims and not dims[0].HasField("dim_value") or (dims and dims[0].dim_value <= 0):
            dims[0].Clear()
            dims[0].dim_value = 1  # a dynamic batch: kcc compiles for one image, as ncc does
        bad = [k for k, d in enumerate(dims) if not d.HasField("dim_value") or d.dim_value <= 0]
        if bad:
            shown = [d.dim_param or "?" if not d.HasField("dim_value") else d.dim_value for d in dims]
            problems.append(f"input '{i.name}' has a dynamic shape {shown} (axes {bad})")
            hints.append("export the model with a fixed input size (torch.onnx.export without dynamic_axes "
                         "other than the batch), or fix the sizes with "
                         "onnx.tools.update_model_dims.update_inputs_outputs_dims")
    if problems:
        raise UnsupportedModelError(f"{label}: " + "; ".join(problems), hint="; ".join(dict.fromkeys(hints)) or None)


def _static_shape(v: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(int(d.dim_value) for d in v.type.tensor_type.shape.dim)


def _infer_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor shape inference resolves (empty where it cannot run: the importer
    computes every shape itself and uses these only as a cross-check of the file)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best effort: malformed but importable files exist
        inferred = model
    out: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for v in (*g.value_info, *g.output):
        if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            continue
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[v.name] = tuple(int(d.dim_value) for d in dims)
    return out
