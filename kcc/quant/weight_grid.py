"""The grid a model's weights may already lie on (pre-quantized models, quantization-aware training),
as quant params: rounding onto it is lossless, so such weights keep their codes instead of being
equalized and re-rounded (kcc.quant.kpu_params). The grids themselves are found by
`kcc.target.quant_rules`, which legalize_kpu shares.
"""

from __future__ import annotations

import numpy as np

from kcc.quant.params import QuantParam
from kcc.target.quant_rules import int8_channel_grids, uint8_grid


def weight_grid(w: np.ndarray) -> QuantParam | None:
    """The uint8 grid the weights already lie on, if any: w = (q - z)/s for integers 0 <= q <= 255
    (`kcc.target.quant_rules.uint8_grid`)."""
    grid = uint8_grid(w)
    return None if grid is None else QuantParam(*grid)


def channel_grids(w: np.ndarray) -> tuple[QuantParam, np.ndarray] | None:
    """int8 per-channel weights as one uint8 grid: (grid, e) with w[oc] * e[oc] on the grid of zero
    point 128 (`kcc.target.quant_rules.int8_channel_grids`). None if a channel is off such a grid."""
    grids = int8_channel_grids(w)
    if grids is None:
        return None
    step, e = grids
    return QuantParam(128, 1.0 / step), e
