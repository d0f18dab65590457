"""A pre-quantized model's own numbers, in terms every frontend shares: the grid of each activation.

A frontend that reads a quantized model (today the TFLite one, kcc.frontend.tflite.quantization)
imports it as the float graph it stands for and keeps each uint8/int8 activation's grid here, under
the IR node name of the tensor. The compiler uses those grids instead of calibrating
(kcc.quant.prequantized).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: producer kinds: a conv / depthwise / fully-connected / transposed conv (whose output a fused
#: activation reads), or any other single-input op
PRODUCER_CONV, PRODUCER_OTHER = "conv", "other"


@dataclass(frozen=True)
class TensorQuant:
    """One activation tensor's grid, in uint8 terms: real = scale * (q - zero_point), 0 <= q <= 255."""

    scale: float  # real value of one step (TFLite's convention, the inverse of kcc's QuantParam.scale)
    zero_point: int  # int8 zero points are shifted by +128
    dtype: str  # "UINT8" or "INT8": the tflite type it came from

    @property
    def real_range(self) -> tuple[float, float]:
        """[scale * (0 - zero_point), scale * (255 - zero_point)], what the 256 levels represent."""
        s = float(self.scale)
        return s * (0 - self.zero_point), s * (255 - self.zero_point)


@dataclass
class ModelQuantization:
    """The quantization facts of one imported model (None for a float model)."""

    #: IR node name -> the grid of that uint8/int8 activation tensor
    activations: dict[str, TensorQuant] = field(default_factory=dict)
    #: for each tensor produced by a single-data-input op: (PRODUCER_CONV or PRODUCER_OTHER, name of that
    #: input tensor); lets the compiler find the input of an activation it fused into a KPU layer
    producers: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: weight tensors with asymmetric per-channel grids (re-quantized per layer by kcc, not bit-exact)
    per_channel_weights: list[str] = field(default_factory=list)

    @property
    def fully_quantized(self) -> bool:
        """Activations carry grids (uint8/int8 model); False for weights-only (dynamic range) models."""
        return bool(self.activations)

    def notes(self) -> list[str]:
        """Warnings for the user about what the import could not keep bit-exact."""
        if not self.per_channel_weights:
            return []
        note = (f"{len(self.per_channel_weights)} weight tensor(s) are quantized per channel with zero points "
                f"(e.g. '{self.per_channel_weights[0]}'); the KPU has one weight grid per layer, so kcc rounds them "
                f"again onto a per-layer grid (with per-channel equalization): a second weight rounding about "
                f"as large as the int8 one, so expect slightly lower accuracy than the tflite model (its activation "
                f"grids, if any, are kept exactly)")
        return [note]
