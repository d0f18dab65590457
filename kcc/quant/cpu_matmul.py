"""A fully-connected layer the KPU cannot take, as a uint8 matmul on the CPU (issue #16 item 4).

A KPU layer reads at most 1024 input channels (kmodel_v4.md §9.3), and two layers over halves of
the inputs cannot be added exactly: each rounds its partial sum to 8 bits. A fully-connected layer
over more inputs (MobileNetV2's 1280 -> 1001 classifier) therefore stays on the CPU, but on uint8
codes rather than in float: nncase's quantized_matmul (kpu_semantics.md §4.4) keeps the weights as
uint8 (a quarter of the float weights' bytes) and accumulates exactly in int32:

    value = bias_q + sum_k (a - z_a)(w - z_w),   bias_q = round(b * s_a),  s_a = s_a_in * s_w
    out   = clamp(carry_half_up(value * mul, shift) + z_y, 0, 255),  mul * 2^-shift ~ s_y / s_a

with one per-tensor weight grid (z_w, s_w) over the weights' fixed-up range, as ncc quantizes it.
The fused clamp is the output range's (the calibrated output lies within it), as in ncc.
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Node
from kcc.quant.params import FixedMul, QuantParam, get_fixed_mul, get_quant_param, get_range, round_half_away
from kcc.target.k210 import MAX_CHANNELS

F32 = np.float32
I32 = np.iinfo(np.int32)


def uint8_matmul(n: Node) -> bool:
    """n is a fully-connected layer with constant weights over more inputs than a KPU layer reads."""
    return (isinstance(n.op, O.MatMul) and n.inputs[1].is_constant and n.inputs[2].is_constant
            and n.inputs[1].shape[0] > MAX_CHANNELS)


def quant_matmul(n: Node, a_q: QuantParam, y_q: QuantParam) -> tuple[KO.QuantMatMul, np.ndarray]:
    """The QuantMatMul computing matmul n from its input on grid a_q to its output on grid y_q, and
    the weights' uint8 codes [K, N] (module docstring)."""
    w, b = n.inputs[1].data, n.inputs[2].data
    w_q = get_quant_param(*get_range(w))
    codes = w_q.quantize(w)
    bias, fixed = int_requantize(b, a_q, w_q, y_q)
    op = KO.QuantMatMul(-a_q.zero_point, -w_q.zero_point, bias, fixed.rounded_mul, fixed.shift,
                        (y_q.zero_point, y_q.scale))
    return op, codes


def int_requantize(b: np.ndarray, a_q: QuantParam, w_q: QuantParam, y_q: QuantParam) -> tuple[np.ndarray, FixedMul]:
    """The int32 bias round(b * s_a * s_w) of a uint8 CPU op whose accumulator sums (a - z_a)(w - z_w),
    and its fixed multiplier mul * 2^-shift ~ s_y / (s_a * s_w) to the output grid (module docstring)."""
    s_acc = F32(F32(a_q.scale) * F32(w_q.scale))
    fixed = get_fixed_mul(float(F32(y_q.scale) / s_acc), 32, 32, True)
    bias = np.clip(round_half_away(np.asarray(b, np.float64) * float(s_acc)), I32.min, I32.max).astype(np.int32)
    return bias, fixed
