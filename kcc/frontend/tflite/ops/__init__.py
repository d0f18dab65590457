"""The one table from TFLite builtin op names to importer functions (architecture.md lesson 1).

An importer `fn(ctx, op)` reads its inputs from `ctx` (kcc.frontend.tflite.context.ImportContext), adds IR
nodes and returns the node(s) holding the op's output tensor(s), in tflite's layout. An op name
missing here is reported, with every other missing one, before import starts
(kcc.frontend.tflite.importer.scan_model).
"""

from __future__ import annotations

from typing import Callable

from kcc.frontend.tflite.context import ImportContext, ImportResult
from kcc.frontend.tflite.ops import conv, pool, quant, reduce, shape
from kcc.frontend.tflite.ops import elementwise as ew
from kcc.frontend.tflite.ops import slice as sl
from kcc.frontend.tflite.reader import TfliteOperator

ImportFn = Callable[[ImportContext, TfliteOperator], ImportResult]

IMPORTERS: dict[str, ImportFn] = {
    # convolution and matrix product (conv.py)
    "CONV_2D": conv.conv_2d,
    "DEPTHWISE_CONV_2D": conv.depthwise_conv_2d,
    "TRANSPOSE_CONV": conv.transpose_conv,
    "FULLY_CONNECTED": conv.fully_connected,
    # windows and resampling (pool.py)
    "AVERAGE_POOL_2D": pool.average_pool_2d,
    "MAX_POOL_2D": pool.max_pool_2d,
    "RESIZE_BILINEAR": pool.resize_bilinear,
    "RESIZE_NEAREST_NEIGHBOR": pool.resize_nearest_neighbor,
    # element-wise binary (elementwise.py)
    "ADD": ew.add,
    "SUB": ew.sub,
    "MUL": ew.mul,
    "DIV": ew.div,
    "MAXIMUM": ew.maximum,
    "MINIMUM": ew.minimum,
    "SQUARED_DIFFERENCE": ew.squared_difference,
    # element-wise unary
    "ABS": ew.abs_,
    "CEIL": ew.ceil,
    "COS": ew.cos,
    "EXP": ew.exp,
    "FLOOR": ew.floor,
    "LOG": ew.log,
    "NEG": ew.neg,
    "ROUND": ew.round_,
    "RSQRT": ew.rsqrt,
    "SIN": ew.sin,
    "SQRT": ew.sqrt,
    "SQUARE": ew.square,
    # activations
    "RELU": ew.relu,
    "RELU6": ew.relu6,
    "RELU_N1_TO_1": ew.relu_n1_to_1,
    "RELU_0_TO_1": ew.relu_0_to_1,
    "LEAKY_RELU": ew.leaky_relu,
    "PRELU": ew.prelu,
    "LOGISTIC": ew.logistic,
    "TANH": ew.tanh,
    "HARD_SWISH": ew.hard_swish,
    "SOFTMAX": ew.softmax,
    "L2_NORMALIZATION": ew.l2_normalization,
    # reductions (reduce.py)
    "MEAN": reduce.mean,
    "SUM": reduce.sum_,
    "REDUCE_MAX": reduce.reduce_max,
    "REDUCE_MIN": reduce.reduce_min,
    # shape and data movement (shape.py, slice.py)
    "RESHAPE": shape.reshape,
    "SQUEEZE": shape.squeeze,
    "EXPAND_DIMS": shape.expand_dims,
    "TRANSPOSE": shape.transpose,
    "CONCATENATION": shape.concatenation,
    "PACK": shape.pack,
    "PAD": shape.pad,
    "PADV2": shape.padv2,
    "STRIDED_SLICE": sl.strided_slice,
    "SLICE": sl.slice_,
    "SPLIT": sl.split,
    "SPLIT_V": sl.split_v,
    "UNPACK": sl.unpack,
    # float16 / int8 constants; the edges of quantized models (quant.py)
    "DEQUANTIZE": quant.dequantize,
    "QUANTIZE": quant.quantize,
}

__all__ = ["IMPORTERS", "ImportFn"]
