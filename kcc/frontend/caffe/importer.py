"""import_model(): a Caffe model (.caffemodel, with or without its .prototxt) -> an IR Graph (NCHW).

Three steps, as for TFLite (kcc.frontend.tflite.importer):
1. `read_caffe` parses the files (kcc.frontend.caffe.reader): TEST-phase layers, blobs by layer name.
2. `scan_net` looks at every layer before building anything and raises one UnsupportedModelError
   listing every unsupported layer type with its count and first layer (ncc stops at the first).
3. The layers run through `IMPORTERS` in file order (Caffe's execution order), then per-channel
   BatchNorm/Scale layers become per-channel multiply-adds, which canonicalize folds into the
   convolutions before them (kcc.passes.affine).

Graph inputs are the net-level `input:` blobs and the Input layers' tops; graph outputs are the blobs
no later layer reads, sorted by name, as Caffe's Net::Init lists them (a std::set of names). Caffe is
NCHW like the IR, so no layout transposes are added. A node is named after the top blob it computes,
or after its layer when the layer writes in place (top == bottom).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kcc.errors import ModelFormatError, UnsupportedModelError, VerifyError
from kcc.frontend.caffe import schema as S
from kcc.frontend.caffe.context import ImportContext
from kcc.frontend.caffe.ops import IMPORTERS
from kcc.frontend.caffe.ops.shape import graph_input
from kcc.frontend.caffe.reader import CaffeNet, read_caffe
from kcc.frontend.imported import ImportedModel
from kcc.ir.graph import Graph, Node

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(IMPORTERS))

_TRAINING = "a training-only layer: compile the deploy definition (--prototxt deploy.prototxt)"
_HINTS = {
    "Data": _TRAINING, "ImageData": _TRAINING, "HDF5Data": _TRAINING, "MemoryData": _TRAINING,
    "WindowData": _TRAINING, "DummyData": _TRAINING, "Accuracy": _TRAINING, "SoftmaxWithLoss": _TRAINING,
    "EuclideanLoss": _TRAINING, "SigmoidCrossEntropyLoss": _TRAINING,
    "PriorBox": "SSD post-processing (PriorBox, DetectionOutput) runs on the host: cut the model before it "
                "and compute the priors once in your application",
    "DetectionOutput": "SSD post-processing (PriorBox, DetectionOutput) runs on the host: cut the model "
                       "before it and decode the boxes in your application",
    "Python": "Python layers are code, not a graph: replace the layer by built-in ones or cut it off",
    "LRN": "LRN is not supported: retrain without it or run that part on the host",
}


def import_caffe(source, name: str | None = None, prototxt: str | Path | None = None) -> Graph:
    """The graph alone (tests and scripts)."""
    return import_model(source, name, prototxt=prototxt).graph


def import_model(source, name: str | None = None, prototxt: str | Path | None = None,
                 **options: object) -> ImportedModel:
    """Import a .caffemodel (path or bytes); `prototxt` is the network definition to use, if any."""
    net = read_caffe(source, name, prototxt)
    scan_net(net)
    graph = Graph()
    ctx = ImportContext(net, graph)
    for blob, shape in net.inputs:
        ctx.values[blob] = graph_input(ctx, blob, shape, net.prototxt or net.name)
    for layer in net.layers:
        for top, node in zip(layer.top, _import_layer(ctx, layer)):
            ctx.values[top] = node  # an in-place layer rebinds its blob, as Caffe overwrites it
    if not graph.inputs:
        raise UnsupportedModelError(f"{net.prototxt or net.name}: the net declares no input (an Input layer or "
                                    f"`input:` with its shape)",
                                    hint="pass the deploy definition with --prototxt")
    graph.outputs = [ctx.values[b] for b in sorted(_available(net))]
    if not graph.outputs:
        raise ModelFormatError(f"{net.prototxt or net.name}: every blob is read by a later layer; the net has "
                               f"no output")
    return ImportedModel(graph, None)


def is_prequantized(source) -> bool:
    """Caffe models are float: they always need a calibration dataset for uint8."""
    return False


def _available(net: CaffeNet) -> set[str]:
    """Net::Init's outputs: the blobs produced and not read by a later layer (an in-place layer
    reads and writes its blob, so it stays available)."""
    available = {b for b, _ in net.inputs}
    for layer in net.layers:
        available.difference_update(layer.bottom)
        available.update(layer.top)
    return available


# ---------------------------------------------------------------------------------------- scan
def scan_net(net: CaffeNet) -> None:
    """Raise one UnsupportedModelError naming every unsupported layer type (count, first layer)."""
    problems: Counter[str] = Counter()
    first: dict[str, str] = {}
    for layer in net.layers:
        for key in _layer_problems(layer):
            problems[key] += 1
            first.setdefault(key, layer.name)
    if problems:
        items = sorted(problems.items(), key=lambda kv: (-kv[1], kv[0]))
        listing = ", ".join(f"{key} x{n} (first: '{first[key]}')" for key, n in items)
        kind = "layer type" if len(items) == 1 else "layer types"
        hints = dict.fromkeys(_HINTS[key.split("(")[0]] for key, _ in items if key.split("(")[0] in _HINTS)
        raise UnsupportedModelError(f"{net.prototxt or net.name}: {len(items)} unsupported {kind}: {listing}",
                                    hint="; ".join(hints) or None)


def _layer_problems(layer) -> list[str]:
    if layer.type not in IMPORTERS:
        return [layer.type or "(no type)"]
    if layer.type == "Pooling" and layer.pooling_param.pool == S.POOL_STOCHASTIC:
        return ["Pooling(STOCHASTIC)"]
    if layer.type == "BatchNorm" and layer.batch_norm_param.HasField("use_global_stats") \
            and not layer.batch_norm_param.use_global_stats:
        return ["BatchNorm(use_global_stats: false)"]
    if layer.type in ("Convolution", "Deconvolution") and layer.convolution_param.axis != 1:
        return [f"{layer.type}(axis {layer.convolution_param.axis})"]
    return []


# ---------------------------------------------------------------------------------------- build
def _import_layer(ctx: ImportContext, layer) -> list[Node]:
    try:
        result = IMPORTERS[layer.type](ctx, layer)
    except VerifyError as e:  # the IR rejected shapes the file implies: an inconsistent model
        raise ctx.bad(layer, str(e)) from None
    nodes = [result] if isinstance(result, Node) else list(result)
    if len(nodes) != len(layer.top):
        raise ctx.bad(layer, f"has {len(layer.top)} top blob(s), expected {len(nodes)}")
    return nodes
