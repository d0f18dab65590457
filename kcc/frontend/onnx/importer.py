"""import_model(): an ONNX model -> an IR Graph (NCHW in and out, as ONNX is).

Three steps, as in the TFLite frontend:
1. `read_onnx` parses the file and normalises it (kcc.frontend.onnx.reader): ModelFormatError for an
   unreadable file, UnsupportedModelError for dynamic or non-float inputs.
2. `scan_model` looks at the whole graph before building anything and raises one UnsupportedModelError
   listing every unsupported op type with its count and first node. A node that only computes
   constants (shape arithmetic, weight preprocessing) is not a problem whatever its type: it folds.
3. The nodes run in file order (topological, IR.md): a node whose inputs are all constant is folded
   (kcc.frontend.onnx.fold), every other goes through `IMPORTERS`.

IR nodes are named after the ONNX tensors they compute, so a layer can be followed from the .onnx file
(e.g. in Netron) to the kmodel. An ONNX float model carries no quantization grids: `is_prequantized` is
False and compiling for the KPU calibrates on a dataset.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from kcc.errors import KccError, ModelFormatError, UnsupportedModelError, VerifyError
from kcc.frontend.imported import ImportedModel
from kcc.frontend.onnx.context import ImportContext
from kcc.frontend.onnx.fold import fold as fold_node
from kcc.frontend.onnx.fold import foldable
from kcc.frontend.onnx.ops import IMPORTERS
from kcc.frontend.onnx.reader import OnnxModel, OnnxNode, read_onnx
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(IMPORTERS))

# Advice for op types users commonly hit; shown as the error's hint.
_POSTPROCESS = ("detection post-processing cannot run on the K210's KPU: cut the model before it "
                "(export without post-processing) and run it on the host")
_HINTS = {
    "NonMaxSuppression": _POSTPROCESS,
    "TopK": _POSTPROCESS,
    "ArgMax": "cut the model before ArgMax and take the argmax of the output on the host",
    "QuantizeLinear": "kcc quantizes float models itself: export the float model (without QDQ nodes)",
    "DequantizeLinear": "kcc quantizes float models itself: export the float model (without QDQ nodes)",
    "Expand": "Expand of a run-time tensor comes from dynamic shapes: export with fixed input sizes",
    "Gather": "Gather of a run-time tensor (embeddings, dynamic indexing) is not a K210 layer; with fixed "
              "input sizes shape arithmetic folds by itself",
}


def import_model(source: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> ImportedModel:
    """Import an ONNX model (path or bytes); `name` labels the file in error messages."""
    model = read_onnx(source, name)
    scan_model(model)
    graph = Graph()
    ctx = ImportContext(model, graph)
    for k, inp in enumerate(model.inputs):
        ctx.values[inp.name] = graph.input(k, inp.shape, name=inp.name)
    for node in model.nodes:
        _import_node(ctx, node)
    graph.outputs = [_graph_output(ctx, t) for t in model.outputs]
    graph.remove_dead()  # convs a BatchNormalization folded into, constants only shape arithmetic read
    return ImportedModel(graph, None)


def import_onnx(source: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> Graph:
    """The graph alone (tests and scripts)."""
    return import_model(source, name).graph


def is_prequantized(source: str | Path | bytes | bytearray | memoryview) -> bool:
    """ONNX models are imported as float models (QDQ-quantized ones are refused): always False."""
    return False


# ---------------------------------------------------------------------------------------- scan
def scan_model(model: OnnxModel) -> None:
    """Raise one UnsupportedModelError naming every op type kcc cannot import, or return."""
    const = set(model.initializers)
    problems: Counter[str] = Counter()
    first: dict[str, str] = {}
    for node in model.nodes:
        if foldable(node, const.__contains__):
            const.update(t for t in node.outputs if t)
        elif node.op_type not in IMPORTERS:
            problems[node.op_type] += 1
            first.setdefault(node.op_type, node.label)
    if problems:
        items = sorted(problems.items(), key=lambda kv: (-kv[1], kv[0]))
        listing = ", ".join(f"{key} x{n} (first: '{first[key]}')" for key, n in items)
        kind = "op type" if len(items) == 1 else "op types"
        hints = list(dict.fromkeys(_HINTS[key] for key, _ in items if key in _HINTS))
        raise UnsupportedModelError(f"{model.name}: {len(items)} unsupported {kind}: {listing}",
                                    hint="; ".join(hints) or None)


# ---------------------------------------------------------------------------------------- build
def _import_node(ctx: ImportContext, node: OnnxNode) -> None:
    model = ctx.model
    where = f"{model.name}: {node.op_type} '{node.label}'"
    if foldable(node, ctx.consts.__contains__):
        values = [ctx.consts.get(t) if t else None for t in node.inputs]
        shapes = [ctx.shape(node, i) if t else None for i, t in enumerate(node.inputs)]
        try:
            outs = fold_node(node, values, shapes, model.opset)
        except KccError:
            raise
        except Exception as e:  # the reference implementation's own errors: bad attributes, types
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UnsupportedModelError(f"{where}: cannot compute this constant at import ({detail})") from None
        for t, v in zip(node.outputs, outs):
            if t:
                ctx.consts[t] = v
        return
    try:
        result = IMPORTERS[node.op_type](ctx, node)
    except VerifyError as e:  # the IR rejected shapes the file implies: an inconsistent model
        raise ModelFormatError(f"{where}: {e}") from None
    results = [result] if isinstance(result, (Node, np.ndarray)) else list(result)
    named = [t for t in node.outputs]
    if len(results) > len(named):
        raise ModelFormatError(f"{where}: the node has {len(named)} outputs, expected {len(results)}")
    for t, value in zip(named, results):
        if not t:
            continue
        if isinstance(value, np.ndarray):
            ctx.consts[t] = value
            continue
        declared = model.declared_shapes.get(t)
        if declared is not None and tuple(declared) != tuple(value.shape):
            after = (f" (after onnx.version_converter raised the model from opset {model.converted_from}; "
                     f"re-export it with opset 7 or later)" if model.converted_from else "")
            raise ModelFormatError(f"{where}: the model declares shape {list(declared)} for '{t}' but the op "
                                   f"computes {list(value.shape)}{after}")
        ctx.values[t] = value
    for t in named[len(results):]:
        if t and ctx.readers.get(t, 0):
            raise ctx.unsupported(node, f"output '{t}' is read, kcc computes only the first {len(results)}")


def _graph_output(ctx: ImportContext, t: str) -> Node:
    g = ctx.graph
    node = ctx.values.get(t)
    if node is None:
        if t not in ctx.consts:
            raise ModelFormatError(f"{ctx.model.name}: graph output '{t}' is produced by no node")
        return g.constant(np.asarray(ctx.consts[t], np.float32), t)
    # an output that is another tensor (Identity, Dropout) takes the output's name when it can
    if node.name != t and t not in g._names and not isinstance(node.op, (O.Input, O.Constant)) \
            and sum(ctx.values.get(o) is node for o in ctx.model.outputs) == 1:
        g._names.discard(node.name)
        node.name = t
        g._names.add(t)
    return node
