"""import_tflite(): a float .tflite model -> an IR Graph (NCHW at the graph edges).

Three steps:
1. `read_tflite` parses the file (ModelFormatError for anything unreadable).
2. `scan_model` looks at the *whole* model before building anything and raises one
   UnsupportedModelError that lists every problem at once: a pre-quantized model, non-float or
   dynamic graph inputs, or every unsupported op type with its count and first output tensor.
   ncc stops at the first unknown opcode, so its users discover missing ops one at a time
   (ecosystem.md P1); TVM's `check_unsupported_ops` is the model here.
3. The operators run through `IMPORTERS` in file order (TFLite stores them in execution order).

Layout (kmodel_v4.md §3.3, kpu_semantics.md §5.1): a 4-D graph input is an NCHW `Input` followed by
Transpose(0,2,3,1) giving the NHWC tensor the tflite ops expect; a 4-D graph output gets a
Transpose(0,3,1,2) in front. Spatial ops add their own transposes; canonicalisation removes the
pairs. Every IR node is named after the tflite tensor it computes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kcc.errors import ModelFormatError, UnsupportedModelError, VerifyError
from kcc.frontend.context import NCHW_TO_NHWC, NHWC_TO_NCHW, ImportContext
from kcc.frontend.ops import IMPORTERS
from kcc.frontend.tflite_reader import TfliteModel, TfliteOperator, TfliteTensor, read_tflite
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(IMPORTERS))
_QUANTIZED_TYPES = ("UINT8", "INT8", "INT16")
_FUSED_OK = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")

# Advice for op types users commonly hit (ecosystem.md P1); shown as the error's hint.
_HINTS = {
    "SHAPE": "SHAPE comes from dynamic-size layers (Keras UpSampling2D, Conv2DTranspose): export with "
             "a fixed batch size and input size so the converter folds it",
    "CUSTOM": "custom ops (e.g. TF detection post-processing) cannot run on the K210: cut the model "
              "before them and run that part on the host",
    "BATCH_TO_SPACE_ND": "dilated convs exported by old converters: re-export with TF >= 2.4 so the "
                         "dilation stays inside CONV_2D",
    "SPACE_TO_BATCH_ND": "dilated convs exported by old converters: re-export with TF >= 2.4 so the "
                         "dilation stays inside CONV_2D",
}


def import_tflite(source: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> Graph:
    """Import a float .tflite model (path or bytes); `name` labels the file in error messages."""
    model = read_tflite(source, name)
    scan_model(model)
    graph = Graph()
    ctx = ImportContext(model, graph)
    for k, t in enumerate(model.inputs):
        ctx.values[t] = _graph_input(graph, k, model.tensors[t])
    for op in model.operators:
        _import_op(ctx, op)
    graph.outputs = [_graph_output(ctx, t) for t in model.outputs]
    return graph


# ---------------------------------------------------------------------------------------- scan
def scan_model(model: TfliteModel) -> None:
    """Raise one UnsupportedModelError describing everything kcc cannot import, or return."""
    _check_prequantized(model)
    _check_inputs(model)
    problems: Counter[str] = Counter()
    first: dict[str, str] = {}
    for op in model.operators:
        for key in _op_problems(model, op):
            problems[key] += 1
            first.setdefault(key, model.tensors[op.outputs[0]].name if op.outputs else f"op{op.index}")
    if problems:
        items = sorted(problems.items(), key=lambda kv: (-kv[1], kv[0]))
        listing = ", ".join(f"{key} x{n} (first: '{first[key]}')" for key, n in items)
        kind = "op type" if len(items) == 1 else "op types"
        hints = [_HINTS[key.split("(")[0]] for key, _ in items if key.split("(")[0] in _HINTS]
        raise UnsupportedModelError(f"{model.name}: {len(items)} unsupported {kind}: {listing}",
                                    hint="; ".join(hints) or None)


def _op_problems(model: TfliteModel, op: TfliteOperator) -> list[str]:
    if op.opcode == "CUSTOM":
        return [f"CUSTOM({op.custom_code})" if op.custom_code else "CUSTOM"]
    if op.opcode not in IMPORTERS:
        return [op.opcode]
    found = []
    act = op.opt("fused_activation_function", "NONE")
    if act not in _FUSED_OK:
        found.append(f"{op.opcode} with fused {act}")
    # A supported op computing integers (shape arithmetic, indices) is not a float layer kcc can run.
    for t in op.outputs:
        if model.tensors[t].type_name != "FLOAT32":
            found.append(f"{op.opcode} on {model.tensors[t].type_name} tensors")
            break
    return found


def _check_prequantized(model: TfliteModel) -> None:
    """A model with integer activations needs the float original (pre-quantized import is later work)."""
    producers = model.producers()
    evidence: Counter[str] = Counter()
    example = ""
    for op in model.operators:
        if op.opcode == "QUANTIZE":
            evidence["QUANTIZE ops"] += 1
        elif op.opcode == "DEQUANTIZE":
            if op.inputs and not model.tensors[op.inputs[0]].is_constant:
                evidence["DEQUANTIZE ops of run-time tensors"] += 1
        elif any(i >= 0 and model.tensors[i].is_constant and model.tensors[i].type_name in _QUANTIZED_TYPES
                 for i in op.inputs):
            evidence["ops with integer (dynamic-range quantized) weights"] += 1
    for t in model.tensors:
        if t.type_name in _QUANTIZED_TYPES and not t.is_constant and (t.index in producers or t.index in model.inputs):
            evidence[f"{t.type_name.lower()} activation tensors"] += 1
            example = example or t.name
    if any("activation" in k for k in evidence):  # fully quantized: the weights say nothing more
        evidence.pop("ops with integer (dynamic-range quantized) weights", None)
    if evidence:
        listing = ", ".join(f"{n} {what}" for what, n in sorted(evidence.items()))
        eg = f", e.g. '{example}'" if example else ""
        raise UnsupportedModelError(
            f"{model.name}: this is a pre-quantized model ({listing}{eg}); kcc compiles float32 models "
            f"and quantizes them itself (importing pre-quantized models is a later feature)",
            hint="export the float model: TFLiteConverter without `optimizations`/`representative_dataset` "
                 "(float16 weights behind DEQUANTIZE are fine)")


def _check_inputs(model: TfliteModel) -> None:
    """Graph inputs must be float32 with a static shape; only the batch may be dynamic (-1 in the
    signature), and then the file's own `shape` (normally 1) is used."""
    problems, hints = [], []
    for t in (model.tensors[i] for i in model.inputs):
        if t.type_name != "FLOAT32":
            problems.append(f"input '{t.name}' is {t.type_name}, kcc needs float32 inputs")
            hints.append("convert casts/normalisation of integer inputs outside the model")
        if any(d < 0 for d in t.signature[1:]) or any(d <= 0 for d in t.shape[1:]) or (t.shape and t.shape[0] < 1):
            problems.append(f"input '{t.name}' has a dynamic shape {list(t.signature)}")
            hints.append("export the model with a fixed input size (a Keras Input(shape=...) without None "
                         "dimensions other than the batch)")
    if problems:
        raise UnsupportedModelError(f"{model.name}: " + "; ".join(problems), hint="; ".join(dict.fromkeys(hints)))


# ---------------------------------------------------------------------------------------- build
def _graph_input(graph: Graph, index: int, t: TfliteTensor) -> Node:
    """An NCHW Input (4-D) plus the transpose back to the tflite NHWC tensor."""
    if len(t.shape) == 4:
        n, h, w, c = t.shape
        x = graph.input(index, (n, c, h, w), name=t.name)
        return graph.add(O.Transpose(NCHW_TO_NHWC), [x], f"{t.name}/nhwc")
    return graph.input(index, t.shape, name=t.name)


def _graph_output(ctx: ImportContext, t: int) -> Node:
    tensor = ctx.model.tensors[t]
    node = ctx.values.get(t)
    if node is None:
        if tensor.data is None:
            raise ModelFormatError(f"{ctx.model.name}: graph output '{tensor.name}' is produced by no operator")
        node = ctx.graph.constant(tensor.data, tensor.name)
    if len(node.shape) == 4:
        node = ctx.graph.add(O.Transpose(NHWC_TO_NCHW), [node], f"{tensor.name}/nchw")
    return node


def _import_op(ctx: ImportContext, op: TfliteOperator) -> None:
    model = ctx.model
    where = f"{model.name}: {op.opcode} '{ctx.out_name(op)}'"
    try:
        result = IMPORTERS[op.opcode](ctx, op)
    except VerifyError as e:  # the IR rejected shapes the file declares: an inconsistent model
        raise ModelFormatError(f"{where}: {e}") from None
    nodes = [result] if isinstance(result, Node) else list(result)
    if len(nodes) != len(op.outputs):
        raise ModelFormatError(f"{where}: the op has {len(op.outputs)} output tensors, expected {len(nodes)}")
    for t, node in zip(op.outputs, nodes):
        tensor = model.tensors[t]
        if not tensor.is_dynamic and tuple(node.shape) != tuple(tensor.shape):
            raise ModelFormatError(f"{where}: the model declares shape {list(tensor.shape)} for "
                                   f"'{tensor.name}' but the op computes {list(node.shape)}")
        ctx.values[t] = node
