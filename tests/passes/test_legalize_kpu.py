"""legalize_kpu: every rewrite computes exactly what the float graph did, and lands on the KPU."""

import itertools
import re

import numpy as np
import pytest
import refkit

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import shift_copy
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import row_pick
from kcc.passes.legalize_kpu import Placement, legalize_kpu
from kcc.passes.manager import CompileContext


def legalize(g, opts=None):
    """legalize_kpu over a fresh context: (legalized graph, placements)."""
    ctx = CompileContext(opts or CompileOptions())
    return legalize_kpu(g, ctx), ctx.placements


rng = np.random.default_rng(7)


def _conv_graph(c, oc, h, w, k, stride, pad, groups=1, act=O.NO_CLAMP, after=None, producer=False):
    """x -> [a 1x1 conv 'pw', a KPU layer's map] -> conv 'conv' -> [after]"""
    g = Graph()
    x = g.input(0, (1, c, h, w))
    if producer:
        wp = g.constant(rng.uniform(-1, 1, (c, c, 1, 1)).astype(np.float32), "wp")
        x = g.add(O.Conv2D(act=(0.0, 6.0)), (x, wp, g.constant(np.zeros(c, np.float32), "bp")), "pw")
    wt = g.constant(rng.uniform(-1, 1, (oc, c // groups, k, k)).astype(np.float32), "w")
    b = g.constant(rng.uniform(-1, 1, oc).astype(np.float32), "b")
    y = g.add(O.Conv2D((stride, stride), pad, (1, 1), groups, act), (x, wt, b), "conv")
    if after is not None:
        y = g.add(after, (y,), "after")
    g.outputs = [y]
    g.verify()
    return g


def _same_pad(size, k, s):
    out = -(-size // s)
    total = max(0, (out - 1) * s + k - size)
    return (total // 2, total - total // 2)


def _assert_equivalent(g):
    x = rng.uniform(-1, 1, g.inputs[0].shape).astype(np.float32)
    want = run(g, [x])[0]
    lg, placements = legalize(g)
    lg.verify("legalize_kpu")
    got = run(lg, [x])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return lg, placements


def _case_pad(k, stride, padding, size):
    if padding == "same":
        return _same_pad(size, k, stride), _same_pad(size + 1, k, stride)
    if padding == "valid":
        return (0, 0), (0, 0)
    return (k // 2 + 1, 0), (0, 1)


def _has_output(k, stride, padding, depthwise, size):
    pad = _case_pad(k, stride, padding, size)
    return size + sum(pad[0]) - k >= 0 and size + 1 + sum(pad[1]) - k >= 0


# every combination with a non-empty output (a 3x3 VALID conv of a 2x3 map has none)
CASES = [case for case in itertools.product((1, 2, 3), (1, 2, 3), ("same", "valid", "asym"), (False, True),
                                           (7, 8, 2)) if _has_output(*case)]


@pytest.mark.parametrize("k,stride,padding,depthwise,size", CASES)
def test_conv_rewrites_are_exact(k, stride, padding, depthwise, size):
    c = 4
    pad = _case_pad(k, stride, padding, size)
    h, w = size, size + 1
    g = _conv_graph(c, c if depthwise else 5, h, w, k, stride, pad, groups=c if depthwise else 1)
    lg, placements = _assert_equivalent(g)
    assert sum(isinstance(n.op, KO.FloatKpuConv) for n in lg.nodes) == 1  # (the graph input: no gap_pick)
    assert placements[0].on_kpu
    kpu = next(n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv))
    assert kpu.inputs[0].shape[2] >= 4 and kpu.inputs[0].shape[3] >= 4
    # stride 2 of a non-depthwise conv is done by the pool unit, never by a CPU slice step; so is a
    # depthwise one whose pick needs no pre-pad (symmetric padding: PyTorch-style exports)
    if stride == 2 and not depthwise:
        assert kpu.op.pool in ("left_top_2_s2", "right_top_2_s2")
        assert all(n.op.strides == (1, 1, 1, 1) for n in lg.nodes if isinstance(n.op, O.StridedSlice))
    # a slice that copies its tensor unchanged is never emitted (it only moves the map out of KPU RAM)
    for n in lg.nodes:
        if isinstance(n.op, O.StridedSlice):
            assert n.shape != n.inputs[0].shape or n.op.strides != (1, 1, 1, 1), n


@pytest.mark.parametrize("k,h,w", [(3, 8, 10), (3, 12, 16), (1, 8, 10)])
def test_stride2_depthwise_with_symmetric_padding_picks_on_the_kpu(k, h, w):
    """ZeroPadding2D(1) + VALID (ulffd) or a 1x1 stride-2 depthwise: output i is centred on input
    row 2i, which left_top_2_s2 picks; no pad, no slice, the map stays in KPU RAM."""
    g = _conv_graph(4, 4, h, w, k, 2, ((k // 2, k // 2), (k // 2, k // 2)), groups=4, act=(0.0, np.inf))
    lg, placements = _assert_equivalent(g)
    assert [n.op.pool for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)] == ["left_top_2_s2"]
    assert not [n for n in lg.nodes if isinstance(n.op, (O.Pad, O.StridedSlice))]
    assert placements[0].on_kpu and "slice" not in placements[0].reason


def test_stride2_depthwise_on_an_odd_width_is_a_gap_pick():
    """TFLite SAME, 8 rows but 9 columns (row_pick takes even sizes only): the conv at stride 1 (one
    line group of 4 channels), a column of padding the pick layer never picks, then the pick, shifted
    one row up for the odd rows (kcc.passes.gap_pick): no CPU slice, the same values."""
    g = _conv_graph(4, 4, 8, 9, 3, 2, ((0, 1), (1, 1)), groups=4, producer=True)
    lg, placements = _assert_equivalent(g)
    _, full, pick = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert (full.op.pool, pick.op.pool, shift_copy(pick)) == ("bypass", "left_top_2_s2", (1, 0))
    (pad,) = [n for n in lg.nodes if isinstance(n.op, O.Pad)]
    assert pad.op.paddings[2:] == ((0, 0), (0, 1)) and pick.inputs[0] is pad and pad.inputs[0] is full
    assert not [n for n in lg.nodes if isinstance(n.op, O.StridedSlice)]
    assert "then a pick layer" in placements[1].reason
    lg, placements = _assert_equivalent(_conv_graph(4, 4, 8, 9, 3, 2, ((0, 1), (1, 1)), groups=4))
    assert "odd size" in placements[0].reason  # the graph input: its channels would be sliced on the CPU


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("h,w,left,pool", [(8, 10, 0, "right_top_2_s2"), (16, 16, 0, "right_top_2_s2"),
                                           (12, 70, 0, "right_top_2_s2"), (8, 20, 1, "left_top_2_s2")])
def test_stride2_centred_on_odd_rows_is_a_kpu_layer_and_a_pick_layer(depthwise, h, w, left, pool):
    """TFLite SAME on an even size (and the asymmetric padding whose columns are centred on even
    columns): the conv at stride 1, then a 3x3 depthwise copy shifted one row up picks its odd rows
    (kcc.passes.row_pick): no pad, no slice, the same values."""
    c = 4
    g = _conv_graph(c, c if depthwise else 6, h, w, 3, 2, ((0, 1), (left, 1 - left)), groups=c if depthwise else 1,
                    act=(0.0, 6.0))
    lg, placements = _assert_equivalent(g)
    full, pick = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert (full.op.pool, full.op.depthwise, full.op.act, full.shape[2:]) == ("bypass", depthwise, (0.0, 6.0), (h, w))
    assert pick.op.pool == pool and shift_copy(pick) == (1, 0) and pick.inputs[0] is full
    assert not [n for n in lg.nodes if isinstance(n.op, (O.Pad, O.StridedSlice))]
    assert placements[0].on_kpu and "pick layer" in placements[0].reason and "CPU" not in placements[0].reason


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_pick_layer_costing_more_than_the_cpu_work_it_saves_is_not_taken(depthwise):
    """Two channels of 4x4: the pick layer's fixed cost (k210.KPU_LAYER_US, ~10000 cycles) is more than
    the CPU work it saves (a depthwise layer's copy-out and slice of 32 bytes; a conv's pad of its input
    and crop of its output), so legalize keeps the CPU form; on 8x8 maps the pick layer pays."""
    assert not row_pick.cheaper((1, 2, 4, 4), 2, depthwise) and row_pick.cheaper((1, 4, 8, 8), 4, depthwise)
    g = _conv_graph(2, 2, 4, 4, 3, 2, ((0, 1), (0, 1)), groups=2 if depthwise else 1)
    lg, placements = _assert_equivalent(g)
    assert [n.op.kind for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)] == ["kpu_conv2d"]
    assert "CPU" in placements[0].reason and "pick layer" not in placements[0].reason


@pytest.mark.parametrize("pool,code", [
    (O.Pool2D("max", (2, 2), (2, 2)), "max_2_s2"), (O.Pool2D("mean", (2, 2), (2, 2)), "mean_2_s2"),
    (O.Pool2D("max", (2, 2), (1, 1), ((0, 1), (0, 1))), "max_2_s1"),
    (O.Pool2D("mean", (2, 2), (1, 1), ((0, 1), (0, 1))), "mean_2_s1"),
    (O.Pool2D("max", (4, 4), (4, 4)), "max_4_s4"),
])
def test_pool_fuses_into_the_layer(pool, code):
    g = _conv_graph(3, 6, 8, 12, 3, 1, ((1, 1), (1, 1)), act=(0.0, 6.0), after=pool)
    lg, _ = _assert_equivalent(g)
    (kpu,) = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert kpu.op.pool == code and not any(isinstance(n.op, O.Pool2D) for n in lg.nodes)


@pytest.mark.parametrize("h,w,pad", [(8, 12, ((0, 1), (0, 1))), (9, 11, ((0, 0), (0, 0))), (8, 11, ((0, 1), (0, 0)))])
@pytest.mark.parametrize("groups", [1, 6])
def test_a_3x3_stride_2_max_pool_is_two_pools_of_the_unit(h, w, pad, groups):
    """TFLite SAME on even sizes, VALID on odd ones: max_2_s1 then max_2_s2. A dense layer takes the
    first (its max_2_s2 half a 1x1 layer after it), a depthwise one none (two 1x1 layers); the values
    are the float pool's."""
    g = _conv_graph(6, 6, h, w, 3, 1, ((1, 1), (1, 1)), groups=groups, act=(0.0, 6.0),
                    after=O.Pool2D("max", (3, 3), (2, 2), pad))
    lg, placements = _assert_equivalent(g)
    pools = [n.op.pool for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert pools == (["max_2_s1", "max_2_s2"] if groups == 1 else ["bypass", "max_2_s1", "max_2_s2"])
    assert not any(isinstance(n.op, O.Pool2D) for n in lg.nodes)
    (pool,) = [p for p in placements if p.op == "pool2d"]
    assert pool.on_kpu and pool.reason.startswith("max_2_s1 fused into the layer before it, then max_2_s2: a 1x1 KPU layer with identity weights pools"
                                                  if groups == 1 else "max_2_s1 then max_2_s2: two 1x1"), pool


@pytest.mark.parametrize("h,w,pad", [(8, 12, ((1, 1), (1, 1))), (8, 11, ((1, 1), (0, 0)))])
@pytest.mark.parametrize("groups", [1, 6])
def test_pytorchs_3x3_stride_2_max_pool_on_a_relu_map_is_shifted_between_the_two(h, w, pad, groups):
    """PyTorch's padding 1 on an even size (windows 2i-1..2i+1) over a ReLU's map: max_2_s1, a 3x3
    depthwise copy shifting that map a row (column) down, then max_2_s2; the copy's zero padding is
    the map's least value, as -inf is in the float pool."""
    g = _conv_graph(6, 6, h, w, 3, 1, ((1, 1), (1, 1)), groups=groups, act=(0.0, 6.0),
                    after=O.Pool2D("max", (3, 3), (2, 2), pad))
    lg, placements = _assert_equivalent(g)
    layers = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert [n.op.pool for n in layers] == ["max_2_s1", "bypass", "max_2_s2"] if groups == 1 else \
        ["bypass", "max_2_s1", "bypass", "max_2_s2"]
    assert shift_copy(layers[-2]) == (-1, -1 if pad[1] == (1, 1) else 0)
    (pool,) = [p for p in placements if p.op == "pool2d"]
    assert pool.on_kpu and "map shifted by a 3x3 depthwise copy" in pool.reason, pool


@pytest.mark.parametrize("h,w,pad,act", [(9, 11, ((1, 1), (1, 1)), (0.0, 6.0)), (8, 12, ((0, 0), (0, 0)), (0.0, 6.0)),
                                         (8, 12, ((1, 1), (1, 1)), O.NO_CLAMP)])
def test_a_3x3_stride_2_max_pool_reaching_past_the_map_stays_on_the_cpu(h, w, pad, act):
    """SAME on odd sizes, VALID on even ones (the last row read by no window, which max_2_s2 would
    read) and PyTorch's padding on a map that may be negative: the pool unit has no such window."""
    g = _conv_graph(6, 6, h, w, 3, 1, ((1, 1), (1, 1)), act=act, after=O.Pool2D("max", (3, 3), (2, 2), pad))
    lg, placements = _assert_equivalent(g)
    assert [n.op.pool for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)] == ["bypass"]
    (pool,) = [p for p in placements if p.op == "pool2d"]
    assert not pool.on_kpu


def test_the_kpu_limits_apply_to_a_fused_pools_output():
    """Tiny YOLO's first layer at 320x240: a 3x3 conv of 76800 pixels and its 2x2 max pool. The layer
    writes the pooled 160x120 map, within the DMA register's 65536 pixels: it is one KPU layer (it
    was a float CPU conv, ~5 s estimated)."""
    g = _conv_graph(3, 16, 240, 320, 3, 1, ((1, 1), (1, 1)), act=(0.0, 6.0), after=O.Pool2D("max", (2, 2), (2, 2)))
    lg, placements = _assert_equivalent(g)
    (kpu,) = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert kpu.op.pool == "max_2_s2" and kpu.shape == (1, 16, 120, 160) and placements[0].on_kpu
    # without the pool: the conv on two row bands of 120 rows (kcc.passes.row_bands), the rows at the
    # band edge rewritten by copies; a depthwise one (never banded) over the limit stays on the CPU
    lg, placements = _assert_equivalent(_conv_graph(3, 16, 240, 320, 3, 1, ((1, 1), (1, 1))))
    assert placements[0].on_kpu and "in 2 row bands of 120 rows" in placements[0].reason, placements
    assert sum(isinstance(n.op, KO.KpuRowPatch) for n in lg.nodes) == 1
    _, placements = _assert_equivalent(_conv_graph(8, 8, 240, 320, 3, 1, ((1, 1), (1, 1)), groups=8))
    assert not placements[0].on_kpu and "240x320 > 65536 pixels" in placements[0].reason


@pytest.mark.parametrize("act,fn", [(O.LeakyRelu(0.1), "leaky_relu"), (O.Unary("logistic"), "logistic"),
                                    (O.Unary("tanh"), "tanh"), (O.Unary("hard_swish"), "hard_swish"),
                                    (O.Unary("silu"), "silu")])
def test_activation_fuses_into_the_layer(act, fn):
    g = _conv_graph(3, 6, 8, 8, 1, 1, ((0, 0), (0, 0)), after=act)
    lg, _ = _assert_equivalent(g)
    (kpu,) = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert kpu.op.fn[0] == fn and kpu.name == "after"


def test_fully_connected_becomes_one_3x3_layer_over_its_inputs_as_a_map():
    """64 inputs read as an 8x3x3 map (zero-padded to 72, then to the KPU's 4x4): one 3x3 window
    sums them all, at an eighth of a 1x1 layer's input channels (kernel_forms.fc_as_conv)."""
    g = Graph()
    x = g.input(0, (1, 64))
    w = g.constant(rng.uniform(-1, 1, (64, 1024)).astype(np.float32), "w")
    b = g.constant(rng.uniform(-1, 1, 1024).astype(np.float32), "b")
    g.outputs = [g.add(O.MatMul((0.0, np.inf)), (x, w, b), "fc")]
    lg, placements = _assert_equivalent(g)
    (kpu,) = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert kpu.inputs[0].shape == (1, 8, 4, 4) and kpu.op.kernel == 3 and placements[0].on_kpu
    assert placements[0].reason == "as 3x3 conv over its 64 inputs as a 8x3x3 map"


def test_a_1x1_conv_of_a_1x1_map_is_a_fully_connected_layer():
    """MobileNet v1's classifier, a 1x1 conv after the global mean: the same 3x3 layer."""
    g = Graph()
    x = g.input(0, (1, 64, 1, 1))
    w = g.constant(rng.uniform(-1, 1, (100, 64, 1, 1)).astype(np.float32), "w")
    b = g.constant(rng.uniform(-1, 1, 100).astype(np.float32), "b")
    g.outputs = [g.add(O.Conv2D(), (x, w, b), "logits")]
    lg, placements = _assert_equivalent(g)
    (kpu,) = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert kpu.inputs[0].shape == (1, 8, 4, 4) and kpu.op.kernel == 3 and kpu.name == "logits/kpu"
    assert placements[0] == Placement("logits", "conv2d", True, "as 3x3 conv over its 64 inputs as a 8x3x3 map")


@pytest.mark.parametrize("make,reason", [
    (lambda: _conv_graph(3, 4, 8, 8, 5, 1, ((2, 2), (2, 2))), "5x5 kernel"),
    (lambda: _conv_graph(3, 4, 300, 8, 3, 1, ((1, 1), (1, 1))), "outside"),
    (lambda: _conv_graph(4, 8, 8, 8, 3, 1, ((1, 1), (1, 1)), groups=2), "groups 2"),
])
def test_cpu_fallbacks_say_why(make, reason):
    _, placements = _assert_equivalent(make())
    assert not placements[0].on_kpu and reason in placements[0].reason


def test_small_fully_connected_head_stays_float():
    g = Graph()
    x = g.input(0, (1, 256))
    w = g.constant(rng.uniform(-1, 1, (256, 63)).astype(np.float32), "w")
    b = g.constant(rng.uniform(-1, 1, 63).astype(np.float32), "b")
    g.outputs = [g.add(O.MatMul(), (x, w, b), "landmarks")]
    _, placements = _assert_equivalent(g)
    assert not placements[0].on_kpu and "63 outputs" in placements[0].reason


def test_weights_threshold_and_target_cpu():
    g = _conv_graph(3, 4, 8, 8, 3, 1, ((1, 1), (1, 1)))
    g.find("w").op.data[0, 0, 0, 0] = 100.0
    _, placements = legalize(g)
    assert "weights range" in placements[0].reason
    # the reason names the threshold that would put the layer on the KPU, and that one does
    hint = re.search(r"--weights-quantize-threshold (\d+) puts it on the KPU", placements[0].reason)
    assert hint, placements[0].reason
    _, placements = legalize(g, CompileOptions(weights_quantize_threshold=float(hint.group(1))))
    assert placements[0].on_kpu
    _, placements = legalize(g, CompileOptions(weights_quantize_threshold=float(hint.group(1)) - 1))
    assert not placements[0].on_kpu
    _, placements = legalize(g, CompileOptions(target="cpu", weights_quantize_threshold=1000))
    assert not placements[0].on_kpu


@pytest.mark.parametrize("name,min_kpu", [("mobilenet_v1_0.25_128", 28), ("digits_mbnet32_rgb", 11)])
def test_real_models_stay_exact(name, min_kpu):
    _stays_exact(name, min_kpu, refkit.SHIPPED_MODELS)


@pytest.mark.slow
@pytest.mark.kit
def test_ulffd_stays_exact():
    _stays_exact("ulffd_landmark_320x240", 43, refkit.MODELS)


def _stays_exact(name, min_kpu, models):
    from kcc.frontend.tflite.importer import import_tflite
    from kcc.passes.canonicalize import canonicalize

    g = canonicalize(import_tflite(refkit.tflite_path(name, models)))
    s = refkit.samples(name, limit=1, models=models)[0]
    want = run(g, [s.x])
    lg, placements = legalize(g)
    got = run(lg, [s.x])
    for a, b in zip(want, got):
        assert refkit.compare(b, a)[1] < 1e-5
    assert sum(p.on_kpu for p in placements) >= min_kpu


def test_an_activation_after_a_picked_conv_fuses_into_its_stride1_layer():
    """A leaky ReLU after the SAME stride-2 conv goes into the stride-1 layer's table; the pick layer
    copies the result and carries the activation's tensor name."""
    g = _conv_graph(3, 6, 12, 16, 3, 2, ((0, 1), (0, 1)), after=O.LeakyRelu(0.1))
    lg, placements = _assert_equivalent(g)
    full, pick = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert full.op.fn == ("leaky_relu", pytest.approx(0.1)) and full.op.pool == "bypass"
    assert shift_copy(pick) == (1, 0) and pick.name == "after" and lg.outputs == [pick]
    assert "leaky_relu" in placements[0].reason


@pytest.mark.parametrize("shape", [(1, 128, 12, 12), (1, 3, 6, 7), (1, 5, 2, 9)])
def test_a_half_pixel_x2_upsampling_is_two_mean_pools_over_moved_samples(shape):
    """TF's bilinear x2 with half-pixel centres (kcc.passes.kpu_pools.half_pixel_x2_on_kpu): data
    movement on the CPU (slices, concatenations, reshapes), then two 1x1 KPU layers with identity
    weights and mean_2_s1 pools per group of 32 channels, equal to the interpreter's TF formula (clamped ends included); no
    resize is left, and its placement says it is on the KPU."""
    g = Graph()
    x = g.input(0, shape)
    g.outputs = [g.add(O.Resize("bilinear", (2 * shape[2], 2 * shape[3]), False, True), (x,), "up")]
    xs = rng.standard_normal(shape).astype(np.float32)
    lg, placements = legalize(g)
    np.testing.assert_allclose(run(lg, [xs])[0], run(g, [xs])[0], rtol=0, atol=1e-5)
    kinds = {type(n.op) for n in lg.nodes if not n.is_constant} - {O.Input}
    assert kinds == {O.StridedSlice, O.Concat, O.Reshape, KO.FloatKpuConv}
    means = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    groups = -(-shape[1] // 32)  # kpu_pools.MEAN_GROUP channels a pair of layers
    assert [n.op.pool for n in means] == ["mean_2_s1"] * 2 * groups
    assert all(second.inputs[0] is first for first, second in zip(means[::2], means[1::2]))
    assert [(p.node, p.op, p.on_kpu) for p in placements] == [("up", "resize", True)]
