"""import_tflite(): a .tflite model -> an IR Graph (NCHW at the graph edges).

Three steps:
1. `read_tflite` parses the file (ModelFormatError for anything unreadable).
2. `scan_model` looks at the *whole* model before building anything and raises one
   UnsupportedModelError that lists every problem at once: quantization kcc cannot represent,
   non-numeric or dynamic graph inputs, or every unsupported op type with its count and first output
   tensor. ncc stops at the first unknown opcode, so its users discover missing ops one at a time
   (ecosystem.md P1); TVM's `check_unsupported_ops` is the model here. Integer shape arithmetic
   that folds to constants (kcc.frontend.tflite.fold: SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE of
   Keras exports) is not a problem; integers computed from the input data are.
3. The operators run in file order (TFLite stores them in execution order): foldable ones through
   `fold_op` into numpy values, the others through `IMPORTERS` into IR nodes.

A quantized model (uint8 / int8 activations, or only quantized weights) is imported as the float
graph it represents: constants dequantized exactly, integer activations float32. `import_model`
also returns the grids of its quantized activations (kcc.frontend.quantization), which the compiler
uses instead of calibrating; `import_tflite` returns the graph alone.

Layout (kmodel_v4.md §3.3, kpu_semantics.md §5.1): a 4-D graph input is an NCHW `Input` followed by
Transpose(0,2,3,1) giving the NHWC tensor the tflite ops expect; a 4-D graph output gets a
Transpose(0,3,1,2) in front. Spatial ops add their own transposes; canonicalisation removes the
pairs. Every IR node is named after the tflite tensor it computes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from kcc.errors import KccError, ModelFormatError, UnsupportedModelError, VerifyError
from kcc.frontend.imported import ImportedModel
from kcc.frontend.quantization import PRODUCER_CONV, PRODUCER_OTHER
from kcc.frontend.tflite import quantization as Q
from kcc.frontend.tflite.context import NCHW_TO_NHWC, NHWC_TO_NCHW, ImportContext
from kcc.frontend.tflite.fold import fold_op, foldable_ops, integer_op, is_integer
from kcc.frontend.tflite.ops import IMPORTERS
from kcc.frontend.tflite.reader import TfliteModel, TfliteOperator, TfliteTensor, read_tflite
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(IMPORTERS))
_FUSED_OK = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")
_CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
_IDENTITIES = ("QUANTIZE", "DEQUANTIZE")  # of run-time tensors: the same real value (ops/quant.py)

# Advice for op types users commonly hit (ecosystem.md P1); shown as the error's hint.
_HINTS = {
    "CUSTOM": "custom ops (e.g. TF detection post-processing) cannot run on the K210: cut the model "
              "before them and run that part on the host",
    "BATCH_TO_SPACE_ND": "dilated convs exported by old converters: re-export with TF >= 2.4 so the "
                         "dilation stays inside CONV_2D",
    "SPACE_TO_BATCH_ND": "dilated convs exported by old converters: re-export with TF >= 2.4 so the "
                         "dilation stays inside CONV_2D",
}
# For integer ops that do not fold (kcc.frontend.tflite.fold): their operands depend on the input data.
_RUN_TIME_HINT = ("kcc folds integer shape arithmetic whose operands are constants or static shapes; "
                  "integers computed from the input data (arg-max, casts of activations, data-dependent "
                  "indices) cannot run on the K210: cut the model before them")


def import_tflite(source: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> Graph:
    """Import a .tflite model (path or bytes); `name` labels the file in error messages."""
    return import_model(source, name).graph


def import_model(source: str | Path | bytes | bytearray | memoryview, name: str | None = None,
                 **options: object) -> ImportedModel:
    """`import_tflite` plus the grids of a quantized model's activations, per IR node name. `options`
    of other formats (a Caffe `prototxt`) are an error: a .tflite file is the whole model."""
    if options:
        label = name or (Path(source).name if isinstance(source, (str, Path)) else "<tflite bytes>")
        raise KccError(f"{label}: a TFLite model takes no {', '.join(sorted(options))} (that is for Caffe models)")
    model = read_tflite(source, name)
    folded = scan_model(model)
    graph = Graph()
    ctx = ImportContext(model, graph)
    alias: dict[int, int] = {}  # output tensor of an identity QUANTIZE/DEQUANTIZE -> its input tensor
    for k, t in enumerate(model.inputs):
        ctx.values[t] = _graph_input(graph, k, model.tensors[t])
        _record_grid(ctx, model.tensors[t], model.tensors[t].name)
    for op in model.operators:
        if op.index in folded:  # integer shape arithmetic: numpy values, no IR node, no grid
            fold_op(ctx, op)
            continue
        _import_op(ctx, op)
        _record_op_grids(ctx, op, alias)
    graph.outputs = [_graph_output(ctx, t) for t in model.outputs]
    q = ctx.quantization
    quantized = q.activations or any(Q.is_quantized_constant(t) for t in model.tensors)
    return ImportedModel(graph, q if quantized else None)


def is_prequantized(source: str | Path | bytes | bytearray | memoryview) -> bool:
    """Whether the model states its activations' grids (uint8/int8), so it compiles without a dataset.

    A cheap look at the file for the command line's early checks: False for anything unreadable
    (the import reports that properly)."""
    try:
        model = read_tflite(source)
    except ModelFormatError:
        return False
    return any(Q.activation_quant(model.tensors[t]) is not None for op in model.operators for t in op.outputs)


def _record_grid(ctx: ImportContext, tensor: TfliteTensor, name: str) -> None:
    tq = Q.activation_quant(tensor)
    if tq is not None:
        ctx.quantization.activations.setdefault(name, tq)


def _record_op_grids(ctx: ImportContext, op: TfliteOperator, alias: dict[int, int]) -> None:
    """Keep the grid of every quantized output, under the name of the IR node holding its value.

    An identity QUANTIZE/DEQUANTIZE adds no node: its quantized side's grid goes to the tensor whose
    node carries the value (e.g. a float graph input followed by QUANTIZE gets that QUANTIZE's grid);
    a requantization keeps the first grid."""
    tensors = ctx.model.tensors
    data_inputs = [t for t in op.inputs if t >= 0 and tensors[t].data is None]

    def root(t: int) -> int:
        while t in alias:
            t = alias[t]
        return t

    if op.opcode in _IDENTITIES and len(data_inputs) == 1:
        src = root(data_inputs[0])
        alias[op.outputs[0]] = src
        _record_grid(ctx, tensors[op.outputs[0]], tensors[src].name)
        return
    for t in op.outputs:
        _record_grid(ctx, tensors[t], tensors[t].name)
    if len(data_inputs) == 1 and len(op.outputs) == 1:
        kind = PRODUCER_CONV if op.opcode in _CONVS else PRODUCER_OTHER
        ctx.quantization.producers[tensors[op.outputs[0]].name] = (kind, tensors[root(data_inputs[0])].name)


# ---------------------------------------------------------------------------------------- scan
def scan_model(model: TfliteModel) -> frozenset[int]:
    """Raise one UnsupportedModelError describing everything kcc cannot import, or return the
    indices of the operators that fold to constants (`foldable_ops`)."""
    _check_quantization(model)
    _check_inputs(model)
    folded = foldable_ops(model)
    problems: Counter[str] = Counter()
    first: dict[str, str] = {}
    for op in model.operators:
        if op.index in folded:
            continue
        for key in _op_problems(model, op):
            problems[key] += 1
            first.setdefault(key, model.tensors[op.outputs[0]].name if op.outputs else f"op{op.index}")
    if problems:
        items = sorted(problems.items(), key=lambda kv: (-kv[1], kv[0]))
        listing = ", ".join(f"{key} x{n} (first: '{first[key]}')" for key, n in items)
        kind = "op type" if len(items) == 1 else "op types"
        hints = [_HINTS[key.split("(")[0]] for key, _ in items if key.split("(")[0] in _HINTS]
        if any(" on run-time " in key for key, _ in items):
            hints.append(_RUN_TIME_HINT)
        raise UnsupportedModelError(f"{model.name}: {len(items)} unsupported {kind}: {listing}",
                                    hint="; ".join(hints) or None)
    return folded


def _op_problems(model: TfliteModel, op: TfliteOperator) -> list[str]:
    if op.opcode == "CUSTOM":
        return [f"CUSTOM({op.custom_code})" if op.custom_code else "CUSTOM"]
    if integer_op(model, op):  # shape arithmetic that does not fold (fold.foldable_ops)
        out = next(model.tensors[t] for t in op.outputs if is_integer(model.tensors[t]))
        return [f"{op.opcode} on run-time {out.type_name} tensors"]
    if op.opcode not in IMPORTERS:
        return [op.opcode]
    found = []
    act = op.opt("fused_activation_function", "NONE")
    if act not in _FUSED_OK:
        found.append(f"{op.opcode} with fused {act}")
    # A supported op computing integers (shape arithmetic, indices) is not a float layer kcc can run;
    # quantized uint8/int8 outputs stand for real values (kcc.frontend.quantization).
    for t in op.outputs:
        tensor = model.tensors[t]
        if tensor.type_name != "FLOAT32" and not (tensor.type_name in Q.ACTIVATION_TYPES and tensor.quant is not None):
            found.append(f"{op.opcode} on {tensor.type_name} tensors")
            break
    return found


def _check_quantization(model: TfliteModel) -> None:
    """Quantized models import as the float graph they represent, unless their grids have no uint8
    equivalent (kcc.frontend.quantization.problems)."""
    found = Q.problems(model)
    if found:
        raise UnsupportedModelError(f"{model.name}: unsupported quantization: " + "; ".join(found),
                                    hint="export a uint8 or int8 (per-tensor activations) model, or the float model")


def _check_inputs(model: TfliteModel) -> None:
    """Graph inputs must be float32 (or uint8/int8 with a scale: their real value is the input) with
    a static shape; only the batch may be dynamic (-1 in the signature), and then the file's own
    `shape` (normally 1) is used."""
    problems, hints = [], []
    for t in (model.tensors[i] for i in model.inputs):
        if t.type_name != "FLOAT32" and Q.activation_quant(t) is None:
            problems.append(f"input '{t.name}' is {t.type_name}, kcc needs float32 inputs "
                            f"(or uint8/int8 ones with a quantization scale)")
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
    if node is None and t in ctx.folded:
        if ctx.folded[t].dtype != np.float32:
            raise UnsupportedModelError(f"{ctx.model.name}: graph output '{tensor.name}' is folded integer "
                                        f"shape arithmetic; kcc's outputs are float tensors")
        node = ctx.graph.constant(ctx.folded[t], tensor.name)
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
