"""Layers whose activation table kcc fits to a function (kcc.quant.kpu_params.activation_table:
silu, hard_swish, logistic, tanh) through kpu_sim, against the scalar reference `reference_layer`
(kpu_reference.py, written from kpu_semantics.md §3), bit for bit. silu's and hard_swish's tables are
not monotone (both dip below 0 before rising), so kpu_sim must take its formula path for them rather
than the step lookup; and the table must still be within a few output steps of the function."""

from __future__ import annotations

import numpy as np
import pytest
from kpu_reference import Layer, reference_layer, run_layer

from kcc.emit.kpu import _activation_table
from kcc.eval.kernels import kpu_activation
from kcc.ir import kpu_ops as KO
from kcc.quant.kpu_params import LayerRanges, kpu_layer, range_param
from kcc.quant.params import QuantParam
from kpu_sim.kernels.kpu_activation import activate_exact, build_step_lut
from kpu_sim.kernels.kpu_layer import decode_activation

# (y range read by the table, bar on max |table - f| in output steps over that range: measured + ~5 %)
FUNCTIONS = {
    "silu": ((-7.0, 5.0), 2.76),  # measured 2.63
    "hard_swish": ((-5.0, 5.0), 2.43),  # 2.32
    "logistic": ((-6.0, 6.0), 4.76),  # 4.54: the 16 segments over 12 units of a sigmoid
    "tanh": ((-3.0, 3.0), 2.52),  # 2.40
}


def _ranges(fn: str) -> LayerRanges:
    y = FUNCTIONS[fn][0]
    f = kpu_activation((fn, 0.0), np.linspace(*y, 4001, dtype=np.float32))
    return LayerRanges(x=QuantParam(121, 255 / 2.0), y=y, z=(min(float(f.min()), 0.0), float(f.max())))


def _layer(fn: str, k: int, depthwise: bool, seed: int):
    r = np.random.default_rng(seed)
    c, oc = 4, (4 if depthwise else 6)
    w = r.normal(0, 0.6 / k, (oc, 1 if depthwise else c, k, k)).astype(np.float32)
    b = r.uniform(-1, 1, oc).astype(np.float32)
    q = kpu_layer(KO.FloatKpuConv(k, depthwise, fn=(fn, 0.0)), w, b, _ranges(fn))
    layer = Layer((1, c, 6, 9), oc, q.weights.reshape(oc, -1, k, k)[:, 0] if depthwise else q.weights, k=k,
                  depthwise=depthwise, pad_value=q.pad_value, arg_x=q.arg_x, arg_w=q.arg_w, arg_add=q.arg_add,
                  bn=[tuple(int(v) for v in row) for row in q.bn],
                  act=[tuple(int(v) for v in row) for row in q.act_table])
    return layer, q


@pytest.mark.parametrize("fn", sorted(FUNCTIONS))
@pytest.mark.parametrize("k,depthwise", [(3, False), (1, False), (3, True)])
def test_fitted_table_layer_is_bit_exact_to_the_reference(fn, k, depthwise):
    layer, _ = _layer(fn, k, depthwise, seed=len(fn) * 10 + k + depthwise)
    x = np.random.default_rng(k).integers(0, 256, layer.in_shape).astype(np.uint8)
    got, want = run_layer(layer, x), reference_layer(layer, x)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 20  # the table's range is exercised, not one saturated byte


def test_silu_table_is_not_monotone_and_takes_the_formula_path():
    _, q = _layer("silu", 3, False, seed=1)
    act = decode_activation(_activation_table(q.act_table))
    assert build_step_lut(act) is None
    assert (q.act_table[1:, 1] < 0).any()  # a falling segment: silu's dip to -0.28 at x = -1.28


@pytest.mark.parametrize("fn", sorted(FUNCTIONS))
def test_fitted_table_follows_the_function(fn):
    """Every BN output y over the table's input range: the table's byte against f(y) rounded to the
    output grid, in output steps."""
    ranges = _ranges(fn)
    _, q = _layer(fn, 1, False, seed=3)
    yq, zq = range_param(ranges.y), range_param(ranges.z)
    act = decode_activation(_activation_table(q.act_table))
    # the table reads y = real * s_act_in (s_y * 2^up); recover s_act_in from segment 1's start,
    # round(xf_min * s_act_in) with xf_min = -z_y / s_y (relative error < 1e-5 here)
    s_act_in = q.act_table[1, 0] / (-yq.zero_point / yq.scale)
    ys = np.arange(int(q.act_table[1, 0]) + 1, int(round(ranges.y[1] * s_act_in)), max(1, int(s_act_in / yq.scale / 8)))
    got = activate_exact(ys.astype(np.int64), act).astype(np.float64)
    real = kpu_activation((fn, 0.0), (ys / s_act_in).astype(np.float32)).astype(np.float64)
    want = np.clip(real * zq.scale + zq.zero_point, 0, 255)
    err = float(np.abs(got - want).max())
    assert err <= FUNCTIONS[fn][1], f"{fn}: max |table - f| {err:.2f} output steps"
