"""Per-channel weight equalization (kcc.quant.kpu_params.equalize_weights): channels turned over so
that their larger side is positive, one grid chosen for the least relative step, and a turned
channel's negative BN multiplier still rounding every accumulator exactly."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from kcc.emit.kpu import _activation_table
from kcc.ir import kpu_ops as KO
from kcc.quant.kpu_params import LayerRanges, equalize_weights, kpu_layer, layer_weights
from kcc.quant.params import QuantParam, get_quant_param, get_range
from kpu_sim.kernels.kpu_activation import activate_exact
from kpu_sim.kernels.kpu_layer import decode_activation


def _depthwise_kernels(c: int, seed: int) -> np.ndarray:
    """3x3 depthwise kernels as trained ones look: a large centre of either sign, small surround."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, (c, 1, 3, 3))
    w[:, 0, 1, 1] = rng.choice([-1.0, 1.0], c) * rng.uniform(0.5, 2.0, c)
    return w.astype(np.float32)


def _relative_steps(w: np.ndarray, w_eq: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Each channel's weight step on the layer's grid, in units of its own largest |weight|."""
    grid = get_quant_param(*get_range(w_eq))
    peak = np.abs(w.reshape(len(w), -1)).max(axis=1)
    return 1.0 / (grid.scale * np.abs(e) * peak)


def test_channels_are_turned_so_their_larger_side_is_positive():
    w = _depthwise_kernels(16, 0)
    w_eq, e = equalize_weights(w)
    np.testing.assert_allclose(w_eq, w * e.reshape(-1, 1, 1, 1), rtol=1e-6)
    centre = w[:, 0, 1, 1]
    assert np.array_equal(e < 0, centre < 0) and (e < 0).any() and (e > 0).any()
    flat = w_eq.reshape(16, -1)
    assert np.all(flat.max(axis=1) >= -flat.min(axis=1))


def test_kernels_of_either_sign_get_finer_steps_than_ncc_equalization():
    # unturned, a kernel whose centre has the minority sign sits on the grid's short side: its
    # steps are ~2x as coarse; turned, every centre spans nearly the whole grid
    for seed in range(4):
        w = _depthwise_kernels(32, seed)
        ours = np.mean(_relative_steps(w, *equalize_weights(w)) ** 2)
        theirs = np.mean(_relative_steps(w, *equalize_weights(w, turn=False)) ** 2)  # ncc's rule
        assert ours < 0.6 * theirs, (seed, ours, theirs)


def test_a_turned_channel_rounds_every_input_exactly():
    """A 3x3 layer on one input channel, every input code at an interior pixel of a constant map:
    each channel, turned over (negative BN multiplier) or not, outputs
    z_z + round_half_up((x * sum(w_q) + b) * s_z) of its own rounded weights, exactly."""
    op = KO.FloatKpuConv(3, act=(0.0, 6.0))
    w = np.random.default_rng(1).normal(0, 0.05, (3, 1, 3, 3)).astype(np.float32)
    w[:, 0, 1, 1] = [0.7, -0.9, -0.4]
    b = np.array([0.3, 4.1, 2.0], np.float32)
    xq, zq = QuantParam(97, 255 / 5.0), get_quant_param(0.0, 6.0)
    layer = kpu_layer(op, w, b, LayerRanges(x=xq, y=(-6.0, 8.0), z=(0.0, 6.0)))
    w_eq, e = equalize_weights(w)
    assert list(np.sign(layer.bn[:, 0])) == [1, -1, -1] and list(np.sign(e)) == [1, -1, -1]
    taps = layer.weights.reshape(3, 9).astype(np.int64) + layer.arg_x  # q - z_w
    x = np.arange(256, dtype=np.int64)
    acc = (x - xq.zero_point)[:, None] * taps.sum(axis=1)[None, :]
    y = ((acc * layer.bn[:, 0]) >> layer.bn[:, 1]) + layer.bn[:, 2]
    got = activate_exact(y, decode_activation(_activation_table(layer.act_table)))
    grid = get_quant_param(*get_range(w_eq))
    for oc in range(3):
        w_sum = Fraction(int(taps[oc].sum())) / (Fraction(grid.scale) * Fraction(float(e[oc])))
        for code in range(256):
            real = Fraction(code - xq.zero_point) / Fraction(xq.scale) * w_sum + Fraction(float(b[oc]))
            want = min(max(zq.zero_point + int(np.floor(real * Fraction(zq.scale) + Fraction(1, 2))), 0), 255)
            assert got[code, oc] == want, (oc, code)


def test_layer_weights_are_what_the_layer_computes_with():
    """layer_weights: the codes kpu_layer encodes, and dequantized() within half a step of W per tap
    (nearest, without moments), in each channel's own (turned) scale."""
    w = _depthwise_kernels(16, 3)
    b = np.linspace(-1, 1, 16).astype(np.float32)
    lw = layer_weights(w, b, True)
    layer = kpu_layer(KO.FloatKpuConv(3, depthwise=True), w, b,
                      LayerRanges(x=QuantParam(128, 40.0), y=(-5.0, 5.0), z=(-5.0, 5.0)))
    assert np.array_equal(lw.codes, layer.weights) and np.array_equal(lw.bias, b)
    half_step = 0.5 / (lw.grid.scale * np.abs(lw.e.astype(np.float64)))
    err = np.abs(lw.dequantized() - w).reshape(16, -1).max(axis=1)
    assert np.all(err <= half_step * 1.0001) and np.all(err > 0)


def test_a_nearly_dead_channel_neither_blows_up_nor_sets_the_grid():
    """ulffd has 1x1 channels whose weights are ~1e-34: scaling them to fill the grid would need
    e ~ 1e34 (and a BN multiplier of 1e-34), and weighing their relative step would let them choose
    a grid that squeezes every live channel (cos 0.87 instead of 0.996 end to end, before the fix)."""
    w = _depthwise_kernels(16, 3)
    w[5] = 1e-34
    w_eq, e = equalize_weights(w)
    assert np.all(np.isfinite(e)) and np.abs(e).max() < 1e4
    live = np.arange(16) != 5
    steps = _relative_steps(w[live], w_eq[live], e[live])
    healthy = _relative_steps(np.delete(w, 5, axis=0), *equalize_weights(np.delete(w, 5, axis=0)))
    np.testing.assert_allclose(steps, healthy, rtol=1e-5)


def test_ncc_equalization_keeps_every_scale_positive():
    w = _depthwise_kernels(16, 5)
    w_eq, e = equalize_weights(w, turn=False)
    assert np.all(e > 0)
    np.testing.assert_allclose(w_eq, w * e.reshape(-1, 1, 1, 1), rtol=1e-6)
