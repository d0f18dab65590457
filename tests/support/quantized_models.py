"""Tiny pre-quantized .tflite models (uint8 and int8, TFLite's own conventions), built in-process.

Shared by tests/frontend/test_prequantized.py and tests/e2e/test_prequantized.py. Each builder can
also emit its *float twin*: the same graph with every constant dequantized and every tensor float32,
what kcc's import of the quantized model must compute (the Coral `_dequant_float` twins are made
the same way, ../shared/reference/scripts/dequantize_tflite.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/tflite_builder.py
from tflite_builder import TfliteBuilder  # noqa: E402

F32 = np.float32


class QBuilder(TfliteBuilder):
    """TfliteBuilder that writes either the quantized model or its float twin from one description."""

    def __init__(self, quantized: bool, act_type: str = "UINT8"):
        super().__init__()
        self.quantized = quantized
        self.act_type = act_type  # "UINT8" or "INT8"

    def _grid(self, t: int, scale: float, zp: int) -> int:
        if self.quantized:
            self.tensors[t].quant = (np.array([scale], F32), np.array([zp], np.int64), 0)
        return t

    def qinput(self, shape, name: str, scale: float, zp: int, float_io: bool = False) -> int:
        """A graph input; `float_io` keeps it float32 (the quantized model then starts with QUANTIZE)."""
        if self.quantized and float_io:
            x = self.input(shape, name)
            return self.qop("QUANTIZE", [x], f"{name}/q", scale, zp)
        t = self.input(shape, name, self.act_type if self.quantized else "FLOAT32")
        return self._grid(t, scale, zp)

    def qop(self, opcode: str, inputs, name: str, scale: float, zp: int, **options) -> int:
        t = self.op(opcode, inputs, name=name, out_type=self.act_type if self.quantized else "FLOAT32", **options)
        return self._grid(t, scale, zp)

    def weights(self, q: np.ndarray, scale, zp, axis: int = 0, name: str | None = None) -> int:
        """Quantized weights `q` (uint8/int8 per act_type) with per-tensor or per-channel scale."""
        scale, zp = np.atleast_1d(np.asarray(scale, np.float64)), np.atleast_1d(np.asarray(zp, np.int64))
        if not self.quantized:
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            real = ((q.astype(np.float64) - zp.reshape(shape if zp.size > 1 else [1] * q.ndim))
                    * scale.astype(F32).astype(np.float64).reshape(shape)).astype(F32)
            return self.const(real, name)
        return self.const(q, name, quant=(scale.astype(F32), zp, axis))

    def bias(self, q: np.ndarray, scale, name: str | None = None) -> int:
        """int32 bias with scale s_in * s_w (per channel when s_w is)."""
        scale = np.atleast_1d(np.asarray(scale, np.float64))
        if not self.quantized:
            return self.const((q.astype(np.float64) * scale.astype(F32).astype(np.float64)).astype(F32), name)
        return self.const(q.astype(np.int32), name, quant=(scale.astype(F32), np.zeros(scale.size, np.int64), 0))

    def dequantize_output(self, t: int, name: str) -> int:
        """DEQUANTIZE to a float output in the quantized model; nothing in the twin."""
        if not self.quantized:
            return t
        return self.op("DEQUANTIZE", [t], name=name)


def quantize_weights(w: np.ndarray, signed: bool = False, axis: int | None = None):
    """(q, scale, zero point) of real weights: uint8 asymmetric per tensor, or int8 symmetric per
    channel along `axis` (TFLite's post-training quantization)."""
    if not signed:
        lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
        scale = (hi - lo) / 255
        zp = int(round(-lo / scale))
        return np.clip(np.round(w / scale) + zp, 0, 255).astype(np.uint8), scale, zp
    red = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=red) / 127
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale, np.zeros(scale.size, np.int64)


def _layer(b: QBuilder, rng, shape, s_in: float, name: str, signed: bool = False, axis: int = 0):
    """Random He-scaled weights and a small bias, quantized the way TFLite stores them."""
    fan_in = int(np.prod(shape[1:])) if shape[0] != 1 else int(np.prod(shape[1:3]))
    w = rng.normal(0, 1 / np.sqrt(fan_in), shape)
    q, s_w, zp = quantize_weights(w, signed, axis if signed else None)
    oc = shape[axis] if signed else (shape[3] if shape[0] == 1 else shape[0])
    s_b = s_in * np.asarray(s_w, np.float64).astype(F32)
    bias = np.round(rng.normal(0, 0.1, oc) / s_b).astype(np.int64)
    return b.weights(q, s_w, zp, axis, name), b.bias(bias, s_b, name + "_bias")


def mobilenet_block(quantized: bool) -> bytes:
    """uint8, like the Coral MobileNets: conv3x3 s2 RELU6 -> depthwise 3x3 RELU6 -> conv1x1 RELU6 ->
    average pool 8x8 -> conv1x1 logits -> reshape -> softmax. Input 1x16x16x3, scale 1/128, zp 128."""
    rng = np.random.default_rng(7)
    b = QBuilder(quantized)
    s_in, s_act = 1 / 128, 6 / 255
    x = b.qinput([1, 16, 16, 3], "input", s_in, 128)
    w, bias = _layer(b, rng, (8, 3, 3, 3), s_in, "conv0_w")
    y = b.qop("CONV_2D", [x, w, bias], "conv0", s_act, 0, padding="SAME", stride_h=2, stride_w=2,
              fused_activation_function="RELU6")
    w, bias = _layer(b, rng, (1, 3, 3, 8), s_act, "dw1_w")
    y = b.qop("DEPTHWISE_CONV_2D", [y, w, bias], "dw1", s_act, 0, padding="SAME", depth_multiplier=1,
              stride_h=1, stride_w=1, fused_activation_function="RELU6")
    w, bias = _layer(b, rng, (16, 1, 1, 8), s_act, "pw1_w")
    y = b.qop("CONV_2D", [y, w, bias], "pw1", s_act, 0, padding="SAME", stride_h=1, stride_w=1,
              fused_activation_function="RELU6")
    y = b.qop("AVERAGE_POOL_2D", [y], "pool", s_act, 0, padding="VALID", filter_height=8, filter_width=8,
              stride_h=8, stride_w=8)
    w, bias = _layer(b, rng, (10, 1, 1, 16), s_act, "logits_w")
    s_logit = 4 / 255
    y = b.qop("CONV_2D", [y, w, bias], "logits", s_logit, 128, padding="SAME", stride_h=1, stride_w=1)
    y = b.qop("RESHAPE", [y, b.const(np.array([1, 10], np.int32))], "flat", s_logit, 128)
    b.output(b.qop("SOFTMAX", [y], "prob", 1 / 256, 0, beta=1.0))
    return b.build()


def int8_per_channel(quantized: bool) -> bytes:
    """int8 `_ptq` style with float input and output: QUANTIZE -> conv3x3 (per-channel int8 weights,
    int32 per-channel bias) RELU -> depthwise 3x3 (per-channel) -> DEQUANTIZE. Input 1x12x12x4."""
    rng = np.random.default_rng(11)
    b = QBuilder(quantized, "INT8")
    s_in = 2 / 255  # input grid [-1, 1], zero point -1 (int8)
    x = b.qinput([1, 12, 12, 4], "input", s_in, -1, float_io=True)
    w, bias = _layer(b, rng, (8, 3, 3, 4), s_in, "conv0_w", signed=True, axis=0)
    s_y0 = 4 / 255  # [0, 4]
    y = b.qop("CONV_2D", [x, w, bias], "conv0", s_y0, -128, padding="SAME", stride_h=1, stride_w=1,
              fused_activation_function="RELU")
    w, bias = _layer(b, rng, (1, 3, 3, 8), s_y0, "dw1_w", signed=True, axis=3)
    y = b.qop("DEPTHWISE_CONV_2D", [y, w, bias], "dw1", 6 / 255, -43, padding="SAME", depth_multiplier=1,
              stride_h=1, stride_w=1)  # [-2, 4]
    b.output(b.dequantize_output(y, "out"))
    return b.build()


def conv_logistic(quantized: bool) -> bytes:
    """uint8 conv3x3 (no activation) -> LOGISTIC: kcc fuses the sigmoid into the KPU layer, whose
    activation table then reads the conv's grid (the 'pre-activation' range). Input 1x8x8x4."""
    rng = np.random.default_rng(3)
    b = QBuilder(quantized)
    s_in = 2 / 255
    x = b.qinput([1, 8, 8, 4], "input", s_in, 128)
    w, bias = _layer(b, rng, (6, 3, 3, 4), s_in, "conv_w")
    y = b.qop("CONV_2D", [x, w, bias], "conv", 8 / 255, 128, padding="SAME", stride_h=1, stride_w=1)
    b.output(b.qop("LOGISTIC", [y], "sigmoid", 1 / 256, 0))
    return b.build()
