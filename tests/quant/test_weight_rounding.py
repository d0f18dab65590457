"""Data-aware rounding of KPU weights (kcc.quant.weight_rounding): bias correction and GPTQ-style
sequential rounding from the calibration inputs' moments, judged on inputs the moments never saw."""

import numpy as np
import pytest

import kcc.pipeline as P
import kcc.quant.policy
import kpu_sim
from kcc.eval.interpreter import run
from kcc.eval.kernels import KERNELS
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.quant import weight_rounding as WR
from kcc.quant.kpu_params import equalize_weights
from kcc.quant.params import get_quant_param, get_range

rng = np.random.default_rng(11)


def _maps(n, c, h=24, w=24):
    """Smooth positive maps (a post-ReLU feature map: neighbours nearly equal, a large mean)."""
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        for ch in range(c):
            fy, fx = rng.uniform(0.05, 0.3, 2)
            py, px = rng.uniform(0, 2 * np.pi, 2)
            out[i, ch] = 1.0 + rng.uniform(0.2, 1.0) * np.sin(fy * y + py) * np.cos(fx * x + px)
    return out


def _conv(op, x, w):
    return KERNELS[KO.FloatKpuConv](op, x, w, np.zeros(w.shape[0], np.float32)).astype(np.float64)


def _rounded(w, moments, depthwise):
    """(dequantized weights, bias correction) as kpu_layer uses them (per-channel equalized grid)."""
    w_eq, e = equalize_weights(w)
    grid = get_quant_param(*get_range(w_eq))
    codes, mean_err = WR.round_weights(w_eq, grid, moments, depthwise)
    shape = (-1,) + (1,) * (w.ndim - 1)
    return grid.dequantize(codes) / e.reshape(shape), mean_err / e


@pytest.mark.parametrize("kind", ["depthwise", "dense", "block_diagonal"])
def test_rounding_with_the_inputs_in_view_cuts_the_output_error(kind):
    c = 16
    depthwise = kind == "depthwise"
    oc = c if kind != "dense" else 8
    op = KO.FloatKpuConv(3, depthwise)
    w = rng.normal(0, 1, (oc, 1 if depthwise else c, 3, 3)).astype(np.float32)
    if kind == "block_diagonal":  # a depthwise stacked as a dense layer (decompose_kernels)
        w *= np.eye(c, dtype=np.float32)[:, :, None, None]
        assert [list(b) for b in WR.tap_blocks(w, False)] == [list(range(9 * i, 9 * i + 9)) for i in range(c)]
    moments = WR.PatchMoments(3, WR.tap_blocks(w, depthwise))
    for x in _maps(8, c):
        moments.add(x[None])
    test = _maps(8, c)
    want = _conv(op, test, w)
    errors = {}
    for name, m in (("nearest", None), ("aware", moments)):
        wq, correction = _rounded(w, m, depthwise)
        got = _conv(op, test, wq) - correction[None, :, None, None]
        errors[name] = float(np.sqrt(np.mean((got - want) ** 2)))
    # measured over three seeds: 0.15-0.31 of the rms error of nearest rounding: the mean error
    # goes into the bias, the rest mostly onto later taps whose inputs cancel it
    assert errors["aware"] < 0.5 * errors["nearest"], errors


def test_zero_taps_stay_zero_and_too_few_positions_give_nearest_codes():
    w = rng.normal(0, 1, (4, 4, 3, 3)).astype(np.float32)
    w[:, :, 2, :] = 0.0  # e.g. a 2x3 term of a decomposed kernel
    w[0, 1:] = 0.0  # e.g. a stacked depthwise: channel 0 reads only input 0
    w_eq, _ = equalize_weights(w)
    grid = get_quant_param(*get_range(w_eq))
    moments = WR.PatchMoments(3, WR.tap_blocks(w, False))
    for x in _maps(4, 4):
        moments.add(x[None])
    codes, _ = WR.round_weights(w_eq, grid, moments)
    assert np.all(codes[w == 0] == grid.zero_point)
    assert not np.array_equal(codes, grid.quantize(w_eq))  # the rounding did use the moments

    few = WR.PatchMoments(3, WR.tap_blocks(w, False))
    few.add(_maps(1, 4, 4, 4))  # 16 positions for 24 (row 0: 6) taps
    codes, correction = WR.round_weights(w_eq, grid, few)
    assert np.array_equal(codes, grid.quantize(w_eq)) and np.any(correction != 0)


def test_too_wide_layers_get_no_covariance_but_a_bias_correction():
    g = Graph()
    x = g.input(0, (1, 160, 4, 4))
    w = g.constant(rng.normal(0, 1, (8, 160, 3, 3)).astype(np.float32))  # 1440 taps > GRAM_MAX_TAPS
    g.outputs = [g.add(KO.FloatKpuConv(3), (x, w, g.constant(np.zeros(8, np.float32))), "wide")]
    moments = WR.InputMoments(g)
    moments.observe(x.name, rng.uniform(0, 1, (1, 160, 4, 4)).astype(np.float32))
    m = moments.layers["wide"]
    assert m.blocks == [] and m.outer is None and m.mean().shape == (1440,)


def _smooth_conv_model():
    """A 3x3 conv over 16 channels whose every output channel has one large weight: the others get
    few steps of the grid, and their rounding, not the input's or output's, is most of the error."""
    g = Graph()
    x = g.input(0, (1, 16, 24, 24))
    w = rng.normal(0, 1, (8, 16, 3, 3)).astype(np.float32)
    w.reshape(8, -1)[np.arange(8), rng.integers(0, 144, 8)] = 30.0
    w = g.constant(w)
    b = g.constant(rng.normal(0, 0.1, (8,)).astype(np.float32))
    g.outputs = [g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (x, w, b))]
    return g


def test_the_pipeline_rounds_kpu_weights_with_the_calibration_moments(monkeypatch):
    """compile_graph collects the moments in its calibration pass and quantize uses them: on other
    inputs the KPU output is closer to float than with nearest rounding (moments switched off)."""
    calib = [[_maps(1, 16)] for _ in range(8)]
    test = [[_maps(1, 16)] for _ in range(8)]
    g = _smooth_conv_model()
    want = [run(g, t)[0] for t in test]
    errors = {}
    for aware in (True, False):
        if not aware:
            monkeypatch.setattr(kcc.quant.policy, "InputMoments", lambda graph: None)
        res = P.compile_graph(_copy(g), CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        err = np.concatenate([(program.run(t)[0].reshape(w.shape) - w).ravel() for t, w in zip(test, want)])
        errors[aware] = float(np.sqrt(np.mean(err ** 2)))
        if aware:  # deterministic
            assert P.compile_graph(_copy(g), CompileOptions(input_type="float"), samples=calib).kmodel == res.kmodel
    # measured over six seeds: 0.34-0.49 of the rms error of nearest rounding
    assert errors[True] < 0.6 * errors[False], errors


def _copy(g):
    """A fresh graph of the same model (compile_graph rewrites its graph)."""
    h = Graph()
    x = h.input(0, g.inputs[0].shape)
    conv = g.outputs[0]
    _, w, b = conv.inputs
    h.outputs = [h.add(conv.op, (x, h.constant(w.data.copy()), h.constant(b.data.copy())))]
    return h


@pytest.mark.parametrize("k,shape", [(1, (1, 5, 7, 6)), (3, (1, 5, 7, 6)), (3, (2, 3, 1, 4)), (3, (1, 2, 2, 2))])
def test_moments_equal_those_of_the_patch_matrix(k, shape):
    """The mean comes from border sums and the covariance from a gathered subsample: both must be
    those of the zero-padded "same" patches the KPU convolves."""
    x = rng.normal(0, 1, shape)
    xp = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    patches = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5)
    patches = patches.reshape(-1, shape[1] * k * k)
    m = WR.PatchMoments(k, [np.arange(shape[1] * k * k)])
    m.add(x)
    assert m.picked == len(patches)  # few positions: all of them
    np.testing.assert_allclose(m.mean(), patches.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(m.covariance(0), np.cov(patches.T, bias=True), atol=1e-12)


@pytest.mark.parametrize("phase", [(1, 1), (1, 0), (0, 1)])
def test_a_layer_read_by_a_pick_layer_is_rounded_for_the_positions_it_picks(phase):
    """A SAME stride-2 conv run at stride 1 (kcc.passes.row_pick) is read only by a copy shifted a row
    up that picks one pixel of each 2x2 block: its outputs at (2i + 1, 2j + 1) (right_top) or
    (2i + 1, 2j) (left_top) are the model's, the rest are dropped. Its moments are those of the
    patches at exactly those positions; a layer the model also reads keeps all positions."""
    from kcc.passes.kernel_forms import shift_weights

    g = Graph()
    x = g.input(0, (1, 3, 8, 10))
    y = g.add(KO.FloatKpuConv(3, False), (x, g.constant(rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)),
                                          g.constant(np.zeros(4, np.float32))))
    pool = {(1, 1): "right_top_2_s2", (1, 0): "left_top_2_s2"}.get(phase)
    if pool is None:  # any shifted copy with a 2x2 pick: shifted a column, left_top reads (2i, 2j + 1)
        g.outputs = [g.add(KO.FloatKpuConv(3, True, "left_top_2_s2"),
                           (y, g.constant(shift_weights(4, (0, 1))), g.constant(np.zeros(4, np.float32))))]
    else:
        g.outputs = [g.add(KO.FloatKpuConv(3, True, pool), (y, g.constant(shift_weights(4, (1, 0))),
                                                            g.constant(np.zeros(4, np.float32))))]
    moments = WR.InputMoments(g)
    assert moments.layers[y.name].phase == phase
    data = rng.normal(0, 1, x.shape)
    moments.observe(x.name, data)
    xp = np.pad(data, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, phase[0]::2, phase[1]::2]
    patches = patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 27)
    m = moments.layers[y.name]
    assert m.count == m.picked == len(patches) == 20
    np.testing.assert_allclose(m.mean(), patches.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(m.covariance(0), np.cov(patches.T, bias=True), atol=1e-12)
    g.outputs.append(y)  # read by the model too: every position counts
    assert WR.InputMoments(g).layers[y.name].phase is None
