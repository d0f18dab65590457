"""What a quantized .tflite states about its own numbers: activation ranges and exact weights.

TFLite's affine quantization is `real = scale * (q - zero_point)`: per tensor for activations, per
tensor or per channel (`quantized_dimension`) for weights; int32 biases have zero point 0 and
scale s_in * s_w. kcc imports such a model as the float graph it stands for:

* constants are dequantized exactly as TFLite defines it (`dequantize_constant`: the float64 product
  rounded once to float32). uint8 and per-tensor int8 weights then lie on a uint8 grid, which kcc's
  quantizer finds again and reproduces losslessly (kcc.quant.weight_grid.weight_grid); so do
  symmetric per-channel int8 weights (TFLite's scheme), each channel scaled onto one grid and the
  scale undone by its batch-norm multiplier (kcc.quant.weight_grid.channel_grids). Other per-channel
  weights (asymmetric) are re-quantized per layer (`ModelQuantization.notes` says so);
* every uint8 / int8 activation tensor becomes float32, and its quantization is kept as a
  `TensorQuant` under the tflite tensor name, which is the IR node name (kcc.ir.graph). The
  compiler uses those ranges instead of calibrating (kcc.quant.prequantized): the model was trained
  or calibrated for exactly these grids, and no dataset is needed.

int8 activations [-128, 127] map onto the KPU's uint8 [0, 255] as q + 128 with the same scale, so
both kinds are exact. What has no uint8 equivalent is refused by `problems`: int16 activations (16x8
models), per-channel activation scales, integer activations without a scale.
"""

from __future__ import annotations

import numpy as np

from kcc.frontend.quantization import TensorQuant
from kcc.frontend.tflite.reader import TfliteModel, TfliteTensor

ACTIVATION_TYPES = ("UINT8", "INT8")  # quantized activations kcc maps onto uint8
WEIGHT_TYPES = ("UINT8", "INT8", "INT16", "INT32")  # quantized constants kcc dequantizes
_OFFSET = {"UINT8": 0, "INT8": 128}  # shift onto the uint8 grid


def activation_quant(t: TfliteTensor) -> TensorQuant | None:
    """The grid of a uint8/int8 activation tensor with one scale; None for anything else."""
    if t.type_name not in ACTIVATION_TYPES or t.quant is None or t.quant.scale.size != 1:
        return None
    return TensorQuant(float(t.quant.scale[0]), int(t.quant.zero_point.ravel()[0]) + _OFFSET[t.type_name],
                       t.type_name)


def is_quantized_constant(t: TfliteTensor) -> bool:
    return t.is_constant and t.type_name in WEIGHT_TYPES and t.quant is not None


def is_per_channel(t: TfliteTensor) -> bool:
    return t.quant is not None and t.quant.scale.size > 1


def is_symmetric_int8(t: TfliteTensor) -> bool:
    """int8 with zero points 0: kcc keeps such per-channel weights exact (module docstring)."""
    return t.type_name == "INT8" and t.quant is not None and not np.any(t.quant.zero_point)


def dequantize_constant(t: TfliteTensor, q: np.ndarray | None = None) -> np.ndarray:
    """real = scale * (q - zero_point) in float64, rounded once to float32 (per channel along
    `quantized_dimension` when there are several scales). `q` defaults to the tensor's data.

    Raises ValueError when the scales do not fit the shape (the caller names the op)."""
    q = t.data if q is None else q
    scale, zp, axis = t.quant.scale.astype(np.float64), t.quant.zero_point.astype(np.float64), t.quant.axis
    if scale.size > 1:
        if not 0 <= axis < q.ndim or q.shape[axis] != scale.size:
            raise ValueError(f"{scale.size} scales along axis {axis} of shape {list(q.shape)}")
        bshape = [1] * q.ndim
        bshape[axis] = scale.size
        scale = scale.reshape(bshape)
        zp = zp.reshape(bshape) if zp.size > 1 else zp.reshape(())
    else:
        scale, zp = scale.reshape(()), zp.ravel()[:1].reshape(())
    return ((q.astype(np.float64) - zp) * scale).astype(np.float32)


def problems(model: TfliteModel) -> list[str]:
    """Every quantization kcc cannot represent, one phrase each (empty when the model is fine)."""
    producers = model.producers()
    found: dict[str, str] = {}
    for t in model.tensors:
        runtime = not t.is_constant and (t.index in producers or t.index in model.inputs)
        if not runtime:
            continue
        if t.type_name == "INT16" and t.quant is not None:
            found.setdefault("int16", f"int16 activations (e.g. '{t.name}'): 16x8 quantization has no uint8 "
                                      f"equivalent; export uint8 or int8, or the float model")
        elif t.type_name in ACTIVATION_TYPES and t.quant is None:
            found.setdefault("noscale", f"{t.type_name.lower()} tensor '{t.name}' has no quantization scale")
        elif t.type_name in ACTIVATION_TYPES and t.quant.scale.size != 1:
            found.setdefault("perchannel", f"activation '{t.name}' is quantized per channel "
                                           f"({t.quant.scale.size} scales); the KPU needs one per tensor")
    return list(found.values())
