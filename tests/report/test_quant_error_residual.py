"""The per-layer error report leaves out KPU layers that hold a rounding residual: 0 in float by
construction, they used to top the report as its worst layer at about -3000 dB (BlazePalm)."""

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir.code_moves import shift_copy
from kcc.ir.graph import Graph
from kcc.report.quant_error import residual_layers


def _copy_weights(g, c):
    w = np.zeros((c, 1, 3, 3), np.float32)
    w[:, 0, 0, 0] = 1.0  # one tap of 1: a shifted copy (kcc.ir.code_moves.shift_copy)
    return g.constant(w), g.constant(np.zeros(c, np.float32))


def test_residual_layers_and_their_copies_have_no_float_reference():
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))
    r = g.add(KO.QuantResidual(16.0), (x,), "residual")
    copy = KO.FloatKpuConv(3, True, "bypass", KO.NO_CLAMP, None)
    shifted = g.add(copy, (r, *_copy_weights(g, 4)), "residual/shift")
    again = g.add(copy, (shifted, *_copy_weights(g, 4)), "residual/shift_again")
    w = g.constant(np.ones((4, 4, 3, 3), np.float32))
    combine = g.add(KO.FloatKpuConv(3, False, "bypass", KO.NO_CLAMP, None), (again, w, g.constant(np.zeros(4, np.float32))), "combine")
    of_x = g.add(copy, (x, *_copy_weights(g, 4)), "x/shift")
    g.outputs = [combine, of_x]
    assert shift_copy(shifted) is not None
    assert residual_layers(g) == {"residual/shift", "residual/shift_again"}
