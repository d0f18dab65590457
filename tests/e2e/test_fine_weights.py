"""kcc.passes.fine_weights end to end: a depthwise layer's channels over --weights-quantize-threshold as
a coarse KPU layer on its own weight grid and a correction layer, instead of a float conv on the CPU.
Each kmodel runs on kpu_sim, every KPU layer against the scalar reference, the result against the
float graph and against the same model with those channels in float on the CPU."""

import numpy as np
import pytest
from kpu_checks import kpu_layers_match_the_scalar_reference, layer_maps, opcodes

import kpu_sim
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import fine_weights
from kcc.passes.channel_split import split_channels
from kcc.passes.manager import CompileContext
from kcc.pipeline import compile_graph

rng = np.random.default_rng(11)
RELU6 = (0.0, 6.0)
SHAPE = (1, 3, 24, 40)


def _model(seed: int = 0, stride: int = 1, padding=((1, 1), (1, 1))) -> Graph:
    """stem (3x3, 8 channels, relu6) -> 3x3 depthwise (relu6; `stride`, `padding`) whose channels 4..7
    have taps of -40..40 summing to ~1 (BlazeHand's stem: wide taps that cancel over a smooth map) ->
    project (1x1, 4)."""
    r = np.random.default_rng(seed)
    g = Graph()
    x = g.input(0, SHAPE)
    pad = ((1, 1), (1, 1))
    w1 = r.uniform(-0.3, 0.3, (8, 3, 3, 3)).astype(np.float32)
    y = g.add(O.Conv2D((1, 1), pad, act=RELU6), (x, g.constant(w1), g.constant(np.full(8, 0.4, np.float32))), "stem")
    w2 = r.uniform(-1, 1, (8, 1, 3, 3))
    wide = r.uniform(-40, 40, (4, 1, 3, 3))
    wide[:, 0, 1, 1] += 1.0 - wide.sum(axis=(1, 2, 3))  # the taps cancel but for ~1
    w2[4:] = wide
    b2 = np.full(8, 0.5, np.float32)
    dw = O.Conv2D((stride, stride), padding, groups=8, act=RELU6)
    y = g.add(dw, (y, g.constant(w2.astype(np.float32)), g.constant(b2)), "dw")
    w3 = r.uniform(-1, 1, (4, 8, 1, 1)).astype(np.float32)
    g.outputs = [g.add(O.Conv2D(), (y, g.constant(w3), g.constant(np.zeros(4, np.float32))), "project")]
    return g


def _rms(res, calib, want) -> float:
    program = kpu_sim.load(res.kmodel)
    return float(np.sqrt(np.mean([np.mean((program.run(s)[0].reshape(v.shape) - v) ** 2) for s, v in zip(calib, want)])))


def test_wide_depthwise_channels_run_on_the_kpu_as_a_coarse_layer_and_a_correction(monkeypatch):
    """The four wide channels become layers A (depthwise, the correction) and B (dense over [x; t], its
    weights on their own grid of step 1/k, kept as they are), x and t one buffer in KPU RAM: no conv on
    the CPU. Every KPU layer equals the scalar reference; the output is as close to float as with the
    wide channels in float on the CPU, and closer than with their 8-bit weights on the KPU."""
    calib = [[rng.uniform(-1, 1, SHAPE).astype(np.float32)] for _ in range(6)]
    want = [run(_model(), s)[0] for s in calib]
    lines = []
    res = compile_graph(_model(), CompileOptions(input_type="float"), log=lines.append, samples=calib)
    assert all(p.on_kpu for p in res.placements), [p for p in res.placements if not p.on_kpu]
    assert ("   'dw': channel(s) 4, 5, 6, 7 of 8 over --weights-quantize-threshold run on the KPU with a "
            "correction layer (kcc.passes.fine_weights), the other 4 go to the KPU") in lines, lines
    (concat,) = [p for p in res.placements if p.node == "dw/ch4_8/fine_in"]
    assert "in place in KPU RAM" in concat.reason, concat
    names = opcodes(res.emitted.model)
    assert "conv2d" not in names and "concat" not in names, names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == names.count("kpu_conv2d")
    # B: 4 outputs over [x; t] (8 channels), every weight code on the grid of step 1/k
    (b_body,) = [m[0] for m in layer_maps(res.kmodel, calib[0][0]) if m[1].shape[1] == 8 and m[2].shape[1] == 4
                 and not m[0].layer.depth_wise_layer and m[0].layer.kernel_type.value == 1]
    w = _model().find("dw").inputs[1].data[4:]
    k = fine_weights.grid_steps(w)
    w_hi, _ = fine_weights.split_weights(w, k)
    codes = b_body.weights.reshape(4, 8, 3, 3).astype(np.int64)
    zero = int(np.bincount(codes.ravel()).argmax())  # most taps are the zeros of [x; t]'s other channels
    np.testing.assert_array_equal(codes[np.arange(4), np.arange(4)] - zero, np.round(w_hi[:, 0] * k))
    fine = _rms(res, calib, want)

    monkeypatch.setattr("kcc.passes.fine_weights.run_plans", lambda *a: {})
    cpu = compile_graph(_model(), CompileOptions(input_type="float"), samples=calib)
    assert [p.op for p in cpu.placements if not p.on_kpu] == ["conv2d"]
    eight_bit = compile_graph(_model(), CompileOptions(input_type="float", weights_quantize_threshold=1000.0),
                              samples=calib)
    assert all(p.on_kpu for p in eight_bit.placements)
    on_cpu, on_kpu = _rms(cpu, calib, want), _rms(eight_bit, calib, want)
    # measured: 0.0858 with the pair, 0.0859 on the CPU, 0.1101 with 8-bit weights
    assert fine <= 1.05 * on_cpu and fine < on_kpu, (fine, on_cpu, on_kpu)


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 1), (0, 1))])
def test_a_stride_2_pair_reads_t_at_the_centre_of_each_picked_window(monkeypatch, padding):
    """At stride 2 (symmetric, and TFLite SAME's bottom/right padding on an even size) B is a stride-2
    KPU layer over [x; t] (legalize's pick), A stays at stride 1: all on the KPU, each layer equal to the
    scalar reference, as close to float as the CPU conv or closer (measured rms: 0.0985 / 0.0906 against
    0.1100 / 0.1082)."""
    calib = [[rng.uniform(-1, 1, SHAPE).astype(np.float32)] for _ in range(6)]
    want = [run(_model(0, 2, padding), s)[0] for s in calib]
    res = compile_graph(_model(0, 2, padding), CompileOptions(input_type="float"), samples=calib)
    assert all(p.on_kpu for p in res.placements), [p for p in res.placements if not p.on_kpu]
    assert any(p.node == "dw/ch4_8/fine" for p in res.placements)
    names = opcodes(res.emitted.model)
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == names.count("kpu_conv2d")
    monkeypatch.setattr("kcc.passes.fine_weights.run_plans", lambda *a: {})
    cpu = compile_graph(_model(0, 2, padding), CompileOptions(input_type="float"), samples=calib)
    assert "conv2d" in [p.op for p in cpu.placements if not p.on_kpu]
    assert _rms(res, calib, want) <= 1.05 * _rms(cpu, calib, want)


def test_without_samples_the_wide_channels_stay_in_float_on_the_cpu():
    """The pair is planned on the calibration samples (x's range): one sample is enough, without any
    split_channels keeps today's CPU part."""
    res = compile_graph(_model(), CompileOptions(input_type="float"), samples=[[rng.uniform(-1, 1, SHAPE).astype(np.float32)]])
    assert any(p.node == "dw/ch4_8/fine" for p in res.placements)
    out = split_channels(_model(), CompileContext(CompileOptions()))
    assert not any(n.name.endswith("/fine") for n in out.nodes)
    assert any(n.name == "dw/ch4_8" and n.op.groups == 4 for n in out.nodes)


def _dense_model(depthwise: bool) -> Graph:
    """stem (3x3, 8 channels, relu6) -> a 3x3 conv (dense 8 -> 6, or depthwise 8) with every output
    channel's taps spanning ~80 -> project (1x1, 4)."""
    r = np.random.default_rng(5)
    g = Graph()
    x = g.input(0, SHAPE)
    pad = ((1, 1), (1, 1))
    w1 = r.uniform(-0.3, 0.3, (8, 3, 3, 3)).astype(np.float32)
    y = g.add(O.Conv2D((1, 1), pad, act=RELU6), (x, g.constant(w1), g.constant(np.full(8, 0.4, np.float32))), "stem")
    oc = 8 if depthwise else 6
    w2 = r.uniform(-40, 40, (oc, 1 if depthwise else 8, 3, 3))
    w2[:, :, 0, 0], w2[:, :, 2, 2] = -40.0, 40.0  # every channel over the threshold (64)
    w2[:, :, 1, 1] += 1.0 - w2.sum(axis=(2, 3))  # each input channel's taps cancel but for ~1
    b2 = np.full(oc, 0.5, np.float32)
    y = g.add(O.Conv2D((1, 1), pad, groups=8 if depthwise else 1, act=RELU6),
              (y, g.constant(w2.astype(np.float32)), g.constant(b2)), "wide")
    w3 = r.uniform(-1, 1, (4, oc, 1, 1)).astype(np.float32)
    g.outputs = [g.add(O.Conv2D(), (y, g.constant(w3), g.constant(np.zeros(4, np.float32))), "project")]
    return g


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_conv_wholly_over_the_threshold_is_one_pair(monkeypatch, depthwise):
    """A dense conv with output channels over the threshold, or a depthwise one with all of them (no
    channel split separates them), becomes one pair when both layers land on the KPU: no conv on the
    CPU, each layer equal to the scalar reference, as close to float as the float conv on the CPU."""
    calib = [[rng.uniform(-1, 1, SHAPE).astype(np.float32)] for _ in range(6)]
    want = [run(_dense_model(depthwise), s)[0] for s in calib]
    lines = []
    res = compile_graph(_dense_model(depthwise), CompileOptions(input_type="float"), log=lines.append, samples=calib)
    assert all(p.on_kpu for p in res.placements), [p for p in res.placements if not p.on_kpu]
    assert any(p.node == "wide/pair/fine" for p in res.placements), res.placements
    assert "   'wide': weights over --weights-quantize-threshold: on the KPU with a correction layer " \
           "(kcc.passes.fine_weights)" in lines, lines
    names = opcodes(res.emitted.model)
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == names.count("kpu_conv2d")
    monkeypatch.setattr("kcc.passes.fine_weights.whole_pair", lambda *a: False)
    cpu = compile_graph(_dense_model(depthwise), CompileOptions(input_type="float"), samples=calib)
    assert [p.node for p in cpu.placements if not p.on_kpu] == ["wide"]
    fine, on_cpu = _rms(res, calib, want), _rms(cpu, calib, want)
    # measured rms: dense 0.1671 against 0.1669 on the CPU, depthwise 0.1513 against 0.1511 (x's own
    # rounding, amplified by the wide taps, is most of both)
    assert fine <= 1.05 * on_cpu, (fine, on_cpu)
