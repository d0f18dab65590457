"""A PReLU channel left on the CPU, on uint8 codes through a 256-byte table: nncase's table_lookup1d.

kcc.passes.prelu_tables cuts a float PReLU into one PReLU a channel (its `uint8_prelu`): each reads its
channel's own grid and writes its own, so its whole function on the codes is one table

    table[k] = quantize_y(prelu(dequantize_x(k)))        k = 0..255

in float32 with the runtime's own dequantize and quantize (kcc.quant.params.QuantParam: round half
away from zero, clamp to 0..255), so the table gives what the float PReLU between a dequantize and a
quantize would. The table is the op's truth: kpu_sim and the runtime look it up, nothing
recomputes it. Its readers take the codes on the output grid (a float CPU reader dequantizes them).
"""

from __future__ import annotations

import numpy as np

from kcc.quant.params import QuantParam


def prelu_table(alpha: float, x_q: QuantParam, y_q: QuantParam) -> np.ndarray:
    """The 256 output codes on y_q of PReLU with slope `alpha` over the 256 codes of x_q."""
    x = x_q.dequantize(np.arange(256))
    return y_q.quantize(np.where(x >= 0, x, np.float32(alpha) * x))
