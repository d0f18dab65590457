"""QUANTIZE and DEQUANTIZE.

Of constant weights: folded to a float32 Constant at import. MediaPipe and "float16 quantized"
converter outputs store weights as FLOAT16 (or int8 with scales) behind a DEQUANTIZE op whose output
feeds an otherwise float graph (ecosystem.md P1, nncase #500). Folding is exact: float16 -> float32
is lossless, and int8/uint8 follow the TFLite definition real = (q - zero_point) * scale, per channel
along `quantized_dimension` when there are several scales (tensorflow/lite/kernels/dequantize.h).

Of run-time tensors (the float <-> int8 edges of a quantized model, or a requantization between two
grids): the identity. kcc imports a quantized model as the float graph it represents
(kcc.frontend.quantization), where both tensors hold the same real values; the importer keeps the
grid of the quantized side as that value's range, and the compiler places its own quantize /
dequantize ops where uint8 meets float.
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.tflite.context import ImportContext, ImportResult
from kcc.frontend.tflite.quantization import dequantize_constant
from kcc.frontend.tflite.reader import TfliteOperator


def dequantize(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    t = ctx.tensor(op, 0)
    if op.inputs[0] in ctx.values and not ctx.values[op.inputs[0]].is_constant:
        return ctx.input(op, 0)  # a run-time tensor: the value itself
    q = ctx.const(op, 0, "quantized tensor")
    if t.type_name in ("FLOAT16", "FLOAT32"):
        value = q.astype(np.float32)
    elif t.type_name in ("INT8", "UINT8", "INT16") and t.quant is not None:
        try:
            value = dequantize_constant(t, q)
        except ValueError as e:
            raise ctx.unsupported(op, str(e)) from None
    else:
        raise ctx.unsupported(op, f"cannot dequantize a constant of type {t.type_name} "
                                  f"{'without quantization parameters' if t.quant is None else ''}".rstrip())
    return ctx.graph.constant(value, ctx.out_name(op))


def quantize(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    """float -> int8/uint8, or a requantization between two grids: the same real value."""
    return ctx.input(op, 0)
