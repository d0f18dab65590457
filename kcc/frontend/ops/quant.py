"""DEQUANTIZE of constant weights: folded to a float32 Constant at import.

MediaPipe and "float16 quantized" converter outputs store weights as FLOAT16 (or int8 with scales)
behind a DEQUANTIZE op whose output feeds an otherwise float graph (ecosystem.md P1, nncase #500).
Folding is exact: float16 -> float32 is lossless, and int8/uint8 follow the TFLite definition
real = (q - zero_point) * scale, per channel along `quantized_dimension` when there are several
scales (tensorflow/lite/kernels/dequantize.h). A DEQUANTIZE of a run-time tensor means the model
itself is quantized; `kcc.frontend.importer` rejects that before any importer runs.
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.context import ImportContext, ImportResult
from kcc.frontend.tflite_reader import TfliteOperator


def dequantize(ctx: ImportContext, op: TfliteOperator) -> ImportResult:
    t = ctx.tensor(op, 0)
    q = ctx.const(op, 0, "quantized tensor")
    if t.type_name in ("FLOAT16", "FLOAT32"):
        value = q.astype(np.float32)
    elif t.type_name in ("INT8", "UINT8", "INT16") and t.quant is not None:
        scale, zp, axis = t.quant.scale, t.quant.zero_point, t.quant.axis
        if scale.size > 1:
            if not 0 <= axis < q.ndim or q.shape[axis] != scale.size:
                raise ctx.unsupported(op, f"{scale.size} scales along axis {axis} of shape {list(q.shape)}")
            bshape = [1] * q.ndim
            bshape[axis] = scale.size
            scale = scale.reshape(bshape)
            zp = zp.reshape(bshape) if zp.size > 1 else zp.reshape(())
        value = ((q.astype(np.float64) - zp) * scale.astype(np.float64)).astype(np.float32)
    else:
        raise ctx.unsupported(op, f"cannot dequantize a constant of type {t.type_name} "
                                  f"{'without quantization parameters' if t.quant is None else ''}".rstrip())
    return ctx.graph.constant(value, ctx.out_name(op))
