"""The one table from Caffe layer types to importer functions (architecture.md lesson 1).

An importer `fn(ctx, layer)` reads its bottoms from `ctx` (kcc.frontend.caffe.context.ImportContext),
adds IR nodes and returns the node(s) holding its top blob(s), one per top. A layer type missing here
is reported, with every other missing one, before import starts (kcc.frontend.caffe.importer.scan_net).
"""

from __future__ import annotations

from typing import Callable

from kcc.frontend.caffe.context import ImportContext, ImportResult
from kcc.frontend.caffe.ops import conv, pool, shape
from kcc.frontend.caffe.ops import elementwise as ew

ImportFn = Callable[[ImportContext, object], ImportResult]

IMPORTERS: dict[str, ImportFn] = {
    # graph inputs and data movement (shape.py)
    "Input": shape.input_,
    "Split": shape.split,
    "Concat": shape.concat,
    "Slice": shape.slice_,
    "Flatten": shape.flatten,
    "Reshape": shape.reshape,
    "Permute": shape.permute,  # SSD fork
    # convolution and matrix product (conv.py)
    "Convolution": conv.convolution,
    "Deconvolution": conv.deconvolution,
    "InnerProduct": conv.inner_product,
    # windows (pool.py)
    "Pooling": pool.pooling,
    # element-wise and normalisation (elementwise.py)
    "ReLU": ew.relu,
    "PReLU": ew.prelu,
    "Sigmoid": ew.sigmoid,
    "TanH": ew.tanh,
    "Clip": ew.clip,
    "Eltwise": ew.eltwise,
    "BatchNorm": ew.batch_norm,
    "Scale": ew.scale,
    "Softmax": ew.softmax,
    "Dropout": ew.dropout,
}

__all__ = ["IMPORTERS", "ImportFn"]
