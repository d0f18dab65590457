"""The one table from ONNX op types (default domain) to importer functions.

An importer `fn(ctx, node)` reads its inputs from `ctx` (kcc.frontend.onnx.context.ImportContext),
adds IR nodes and returns the node(s) holding the op's output tensor(s). An op type missing here is
reported, with every other missing one, before import starts (kcc.frontend.onnx.importer.scan_model);
a node whose inputs are all constants is folded instead (kcc.frontend.onnx.fold), whatever its type.
"""

from __future__ import annotations

from typing import Callable

from kcc.frontend.onnx.context import ImportContext, ImportResult
from kcc.frontend.onnx.ops import conv, pool, reduce, shape
from kcc.frontend.onnx.ops import elementwise as ew
from kcc.frontend.onnx.ops import slice as sl
from kcc.frontend.onnx.reader import OnnxNode

ImportFn = Callable[[ImportContext, OnnxNode], ImportResult]

IMPORTERS: dict[str, ImportFn] = {
    # convolution and matrix product (conv.py)
    "Conv": conv.conv,
    "ConvTranspose": conv.conv_transpose,
    "Gemm": conv.gemm,
    "MatMul": conv.matmul,
    "BatchNormalization": conv.batch_normalization,
    # windows and resampling (pool.py)
    "MaxPool": pool.max_pool,
    "AveragePool": pool.average_pool,
    "GlobalAveragePool": pool.global_average_pool,
    "GlobalMaxPool": pool.global_max_pool,
    "Resize": pool.resize,
    "Upsample": pool.upsample,
    # element-wise arithmetic (elementwise.py)
    "Add": ew.add,
    "Sub": ew.sub,
    "Mul": ew.mul,
    "Div": ew.div,
    "Max": ew.max_,
    "Min": ew.min_,
    "Sum": ew.sum_,
    "Mean": ew.mean,
    "Abs": ew.abs_,
    "Ceil": ew.ceil,
    "Cos": ew.cos,
    "Exp": ew.exp,
    "Floor": ew.floor,
    "Log": ew.log,
    "Neg": ew.neg,
    "Round": ew.round_,
    "Sin": ew.sin,
    "Sqrt": ew.sqrt,
    "Reciprocal": ew.reciprocal,
    "Pow": ew.pow_,
    # activations
    "Relu": ew.relu,
    "Clip": ew.clip,
    "LeakyRelu": ew.leaky_relu,
    "PRelu": ew.prelu,
    "Sigmoid": ew.sigmoid,
    "HardSigmoid": ew.hard_sigmoid,
    "HardSwish": ew.hard_swish,
    "Tanh": ew.tanh,
    "Softmax": ew.softmax,
    # identities at inference
    "Identity": ew.identity,
    "Dropout": ew.identity,
    "Cast": ew.cast,
    "CastLike": ew.cast_like,
    # reductions (reduce.py)
    "ReduceMean": reduce.reduce_mean,
    "ReduceMax": reduce.reduce_max,
    "ReduceMin": reduce.reduce_min,
    "ReduceSum": reduce.reduce_sum,
    # shape and data movement (shape.py, slice.py)
    "Reshape": shape.reshape,
    "Flatten": shape.flatten,
    "Squeeze": shape.squeeze,
    "Unsqueeze": shape.unsqueeze,
    "Transpose": shape.transpose,
    "Concat": shape.concat,
    "Pad": shape.pad,
    "Slice": sl.slice_,
    "Split": sl.split,
}

__all__ = ["IMPORTERS", "ImportFn"]
