"""Blocks of users' backbones through the whole uint8 path, bit-exact in kpu_sim where new KPU
forms serve them (issue #16): a 3x3 stride-2 max pool as two pool-unit codes (kcc.passes.kpu_pools),
a decomposed 5x5 depthwise taking its hard-swish (stage form_activations), a model's own channel
split (kcc.passes.channel_split), and an upload padded for DMA (kcc.quant.kpu_ram.upload).
Bars: the measured error plus 5 %, as tests/e2e/test_k210_layers.py's."""

import numpy as np
import pytest
from kpu_checks import RNG, kpu_layers_match_the_scalar_reference, layer_maps, max_steps
from kpu_checks import const as _const

import kpu_sim
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph
from kcc.target.k210 import dma_upload_width

rng = RNG


@pytest.mark.parametrize("hw,pad", [((11, 9), ((0, 0), (0, 0))), ((12, 10), ((1, 1), (1, 1)))])
@pytest.mark.parametrize("groups", [1, 4])
def test_a_3x3_stride_2_max_pool_moves_codes_exactly(hw, pad, groups):
    """VALID on an 11x9 map, PyTorch's padding 1 on a 12x10 ReLU6 map (kcc.passes.kpu_pools): every
    layer is the scalar reference's, the shifting copy's output is its input a row and a column down
    with code 0 in the first, and the last layer's max_2_s2 output is the max of the 2x2 blocks of the
    codes it read."""
    g = Graph()
    x = g.input(0, (1, 4, *hw))
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), groups=groups, act=(0.0, 6.0)), (x, _const(g, (4, 4 // groups, 3, 3)), _const(g, (4,))))
    g.outputs = [g.add(O.Pool2D("max", (3, 3), (2, 2), pad), (y,))]
    calib = [[rng.uniform(-1, 1, (1, 4, *hw)).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    assert all(p.on_kpu for p in res.placements), res.placements
    maps = layer_maps(res.kmodel, calib[0][0])
    shifted = pad != ((0, 0), (0, 0))
    pools = ["BYPASS"] * (groups > 1) + ["MAX_2_S1"] + ["BYPASS"] * shifted + ["MAX_2_S2"]
    assert [m[0].layer.pool_type.name for m in maps] == pools
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == len(maps)
    if shifted:
        (_, m1, moved) = maps[-2]
        np.testing.assert_array_equal(moved[:, :, 1:, 1:], m1[:, :, :-1, :-1])
        assert not moved[:, :, 0].any() and not moved[:, :, :, 0].any()
    (_, codes, pooled) = maps[-1]
    h, w = hw[0] // 2, hw[1] // 2
    blocks = codes[:, :, :2 * h, :2 * w].reshape(1, 4, h, 2, w, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(pooled, blocks)
    want = run(g, calib[0])[0]
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    bars = {((11, 9), 1): 1.86, ((12, 10), 1): 1.23, ((11, 9), 4): 1.69, ((12, 10), 4): 1.87}  # measured + 5 %
    assert max_steps(got, want) <= bars[hw, groups]


def _steps_and_names(g, shape):
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    want = run(g, calib[0])[0]
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    return res, max_steps(got, want), [n.opcode.kmodel_name for n in res.emitted.model.nodes]


def test_a_grouped_5x5_depthwise_takes_its_hard_swish_into_each_group():
    """MobileNetV3: a 5x5 depthwise over 8 channels, decomposed in two channel groups, then hard-swish
    (kcc.passes.concat_activations, stage form_activations): each group's last KPU layer applies it
    from its activation table, no CPU unary, the groups' concatenation in KPU RAM. Measured: 2.37
    output steps from float (+ 5 %; hard-swish's 16-segment fit)."""
    g = Graph()
    x = g.input(0, (1, 4, 12, 10))
    y = g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (8, 4, 1, 1)), _const(g, (8,))))
    y = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=8), (y, _const(g, (8, 1, 5, 5)), _const(g, (8,))))
    g.outputs = [g.add(O.Conv2D(), (g.add(O.Unary("hard_swish"), (y,)), _const(g, (6, 8, 1, 1)), _const(g, (6,))))]
    res, steps, names = _steps_and_names(g, (1, 4, 12, 10))
    assert all(p.on_kpu for p in res.placements), [p for p in res.placements if not p.on_kpu]
    assert not {"nnil_unary_method", "unary", "concat", "kpu_upload"} & set(names[2:]), names
    assert steps <= 2.49, steps


def test_a_split_passed_through_to_a_concatenation_is_a_kpu_layer_of_its_own():
    """CSP / ShuffleNetV2: a 1x1 conv's channels split in two, one half through a 3x3 conv, both
    concatenated: the conv is cut into the two halves (kcc.passes.channel_split), each a KPU layer, the
    first writing its range of the concatenation in KPU RAM: no copy-out, slice, concat or upload.
    Measured: 1.15 output steps from float (+ 5 %)."""
    g = Graph()
    x = g.input(0, (1, 4, 12, 10))
    y = g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (8, 4, 1, 1)), _const(g, (8,))))
    a = g.add(O.StridedSlice((0, 0, 0, 0), (1, 4, 12, 10), (1, 1, 1, 1)), (y,))
    b = g.add(O.StridedSlice((0, 4, 0, 0), (1, 8, 12, 10), (1, 1, 1, 1)), (y,))
    b = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (b, _const(g, (4, 4, 3, 3)), _const(g, (4,))))
    y = g.add(O.Concat(1), (a, b))
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (6, 8, 1, 1)), _const(g, (6,))))]
    res, steps, names = _steps_and_names(g, (1, 4, 12, 10))
    assert all(p.on_kpu for p in res.placements), [p for p in res.placements if not p.on_kpu]
    assert names == ["quantize", "kpu_upload"] + ["kpu_conv2d"] * 4 + ["dequantize"], names
    assert steps <= 1.21, steps


def test_an_upload_of_a_width_not_a_multiple_of_64_is_padded_for_dma():
    """nncase uploads a map to KPU RAM by DMA only when its width is a multiple of 64 (26 cycles a byte
    otherwise, kcc.target.k210). A 3x3 layer over a 40-wide float input: the input's codes padded to 64
    a row by one concat (the padding its own first bytes: a view), uploaded by DMA and read as the
    40-wide map, whose KPU RAM layout it is. The outputs are those of the plain upload, byte for byte,
    and the estimate lower."""
    weights = [rng.uniform(-1, 1, shape).astype(np.float32) for shape in ((8, 3, 3, 3), (8,), (4, 8, 1, 1), (4,))]

    def build():  # the same weights each time (a compile edits its graph)
        g = Graph()
        w1, b1, w2, b2 = (g.constant(w) for w in weights)
        y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (g.input(0, (1, 3, 12, 40)), w1, b1))
        g.outputs = [g.add(O.Conv2D(), (y, w2, b2))]
        return g

    calib = [[rng.uniform(-1, 1, (1, 3, 12, 40)).astype(np.float32)] for _ in range(4)]
    res = compile_graph(build(), CompileOptions(input_type="float"), samples=calib)
    nodes = res.emitted.model.nodes
    assert [n.opcode.kmodel_name for n in nodes][:4] == ["quantize", "concat", "kpu_upload", "kpu_conv2d"]
    assert tuple(nodes[2].body.in_shape) == (1, 3, 12, 64) and nodes[3].body.layer.i_row_wid == 39
    import kcc.quant.kpu_ram as kpu_ram_module
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kpu_ram_module, "dma_upload_width", lambda shape: None)
        plain = compile_graph(build(), CompileOptions(input_type="float"), samples=calib)
    assert [n.opcode.kmodel_name for n in plain.emitted.model.nodes][:3] == ["quantize", "kpu_upload", "kpu_conv2d"]
    for s in calib:
        np.testing.assert_array_equal(kpu_sim.load(res.kmodel).run(s)[0], kpu_sim.load(plain.kmodel).run(s)[0])
    assert res.latency.total_ms < plain.latency.total_ms
    widths = [(1, 3, 12, 40), (1, 3, 12, 129), (1, 3, 12, 32), (1, 3, 12, 128)]  # 32: two channels a line
    assert [dma_upload_width(s) for s in widths] == [64, 192, None, None]


def test_parts_uploaded_into_a_concatenation_in_kpu_ram_are_padded_for_dma_too():
    """deeplabv3's stem: the input's four stride-2 phases (CPU slices of its codes) concatenated in KPU
    RAM for a 3x3 layer, each uploaded into its channel range. At a width of 40 each is padded to 64
    and uploaded by DMA; the outputs are those of the plain uploads, byte for byte."""
    weights = [rng.uniform(-1, 1, shape).astype(np.float32) for shape in ((8, 12, 3, 3), (8,))]

    def build():
        g = Graph()
        x = g.input(0, (1, 3, 16, 80))
        phases = [g.add(O.StridedSlice((0, 0, a, b), (1, 3, 16, 80), (1, 1, 2, 2)), (x,)) for a in (0, 1) for b in (0, 1)]
        w, b = (g.constant(v) for v in weights)
        g.outputs = [g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (g.add(O.Concat(1), phases), w, b))]
        return g

    calib = [[rng.uniform(-1, 1, (1, 3, 16, 80)).astype(np.float32)] for _ in range(4)]
    opts = CompileOptions(input_mean=0.5, input_std=0.5)  # uint8 input, sliced on the CPU
    res = compile_graph(build(), opts, samples=calib)
    uploads = [n.body for n in res.emitted.model.nodes if n.opcode.kmodel_name == "kpu_upload"]
    assert [tuple(u.in_shape) for u in uploads] == [(1, 3, 8, 64)] * 4
    import kcc.quant.kpu_ram as kpu_ram_module
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kpu_ram_module, "dma_upload_width", lambda shape: None)
        plain = compile_graph(build(), opts, samples=calib)
    assert [tuple(n.body.in_shape) for n in plain.emitted.model.nodes if n.opcode.kmodel_name == "kpu_upload"] == \
        [(1, 3, 8, 40)] * 4
    for _ in range(3):
        x = rng.integers(0, 256, (1, 3, 16, 80), dtype=np.uint8)
        np.testing.assert_array_equal(kpu_sim.load(res.kmodel).run([x])[0], kpu_sim.load(plain.kmodel).run([x])[0])
    assert res.latency.total_ms < plain.latency.total_ms


@pytest.mark.parametrize("source,reader,c", [("conv", None, 40), ("conv", "conv", 8), ("input", "conv", 40)])
def test_a_half_pixel_x2_upsampling_is_two_mean_pools_over_the_late_nearest_codes(source, reader, c):
    """Keras UpSampling2D(bilinear) (kcc.passes.kpu_pools.half_pixel_x2_on_kpu) of a KPU layer's
    codes or of the float input, read by the CPU or by a 3x3 KPU layer, 40 channels in two groups of
    mean layers on one grid (kcc.quant.policy.share_view_grids): the first mean layer of a group reads the nearest x2 map of the codes one sample late,
    moved exactly by the CPU (v[k] = x[max(0, (k-1)//2)] on both axes), every layer is the scalar
    reference's, and the floors of the two mean_2_s1 pools are paid by the layer before them or the
    one after (kcc.quant.floors): the mean error is within 0.02 output steps."""
    g = Graph()
    shape = (1, 4 if source == "conv" else c, 7, 6)
    x = g.input(0, shape)
    if source == "conv":
        x = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (x, _const(g, (c, 4, 3, 3)), _const(g, (c,))))
    y = g.add(O.Resize("bilinear", (14, 12), False, True), (x,))
    if reader == "conv":
        y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (y, _const(g, (6, x.shape[1], 3, 3)), _const(g, (6,))))
    g.outputs = [y]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    assert all(p.on_kpu for p in res.placements), res.placements
    assert "resize" in {p.op for p in res.placements}
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert not {"resize_image", "reduce_window2d"} & set(names), names
    maps = layer_maps(res.kmodel, calib[0][0])
    means = [i for i, m in enumerate(maps) if m[0].layer.pool_type.name == "MEAN_2_S1"]
    groups = 2 if c == 40 else 1
    assert len(means) == 2 * groups and means[1::2] == [i + 1 for i in means[::2]]
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == len(maps)
    late = np.maximum(0, (np.arange(14) - 1) // 2), np.maximum(0, (np.arange(12) - 1) // 2)
    v = np.concatenate([maps[i][1] for i in means[::2]], axis=1)
    # the conv's codes, or the input's (v's odd samples are x's)
    codes = maps[means[0] - 1][2] if source == "conv" else v[:, :, 1::2, 1::2]
    np.testing.assert_array_equal(v, codes[:, :, late[0]][:, :, :, late[1]])
    errors = []
    for sample in calib:
        want = run(g, sample)[0]
        got = kpu_sim.load(res.kmodel).run(sample)[0].reshape(want.shape)
        step = (want.max() - min(want.min(), 0)) / 255
        errors.append((got - want) / step)
    assert abs(np.mean(errors)) <= 0.02, np.mean(errors)  # measured <= 0.004; no floors paid: -0.87
    bars = {None: 2.06, "conv": 3.08}  # max error measured (8 samples) + 5 %; the input's: 1.79
    assert np.abs(errors).max() <= (1.79 if source == "input" else bars[reader])


def test_a_max_pool_of_a_float_map_uploaded_in_groups_pools_each_group_on_the_kpu(monkeypatch):
    """BlazePalm's stride-2 skip: the max pool of a PReLU (a float of the CPU) whose channel groups KPU
    layers read anyway, each uploaded on its own grid (as a decomposed 5x5's codes forms read them;
    kcc.passes.kpu_pools.max_pools_of_uploaded_groups): one 1x1 KPU layer with identity weights and
    max_2_s2 per group, the scalar reference's, each output the max of the 2x2 blocks of its group's
    codes; no reduce_window2d left. Measured: 0.59 output steps from float (+ 5 %), the PReLU in
    float (with kcc.passes.prelu_tables' tables, whose input grid spends half its codes on the side
    slopes of 0.05 to 0.3 shrink: 1.94)."""
    import kcc.passes.prelu_tables as pt
    monkeypatch.setattr(pt, "MIN_CYCLES_PER_BYTE", float("inf"))  # the PReLU in float, as measured
    g = Graph()
    c, hw = 16, 24
    x = g.input(0, (1, c, hw, hw))
    a = g.add(O.PRelu(), (x, g.constant(rng.uniform(0.05, 0.3, (1, c, 1, 1)).astype(np.float32))))
    groups = []
    for c0 in (0, 8):
        part = g.add(O.StridedSlice((0, c0, 0, 0), (1, c0 + 8, hw, hw), (1, 1, 1, 1)), (a,))
        groups.append(g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), groups=8), (part, _const(g, (8, 1, 3, 3)), _const(g, (8,)))))
    y = g.add(O.Conv2D(act=(0.0, 6.0)), (g.add(O.Concat(1), tuple(groups)), _const(g, (c, c, 1, 1)), _const(g, (c,))))
    skip = g.add(O.Pool2D("max", (2, 2), (2, 2)), (a,), "skip")
    g.outputs = [y, skip]
    calib = [[rng.uniform(-1, 1, (1, c, hw, hw)).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    (pool,) = [p for p in res.placements if p.node == "skip"]
    assert pool.on_kpu and "channel groups" in pool.reason, pool
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert "reduce_window2d" not in names, names
    maps = layer_maps(res.kmodel, calib[0][0])
    pools = [(m[1], m[2]) for m in maps if m[0].layer.pool_type.name == "MAX_2_S2"]
    assert [p[1].shape[1] for p in pools] == [8, 8]
    for codes, pooled in pools:
        blocks = codes.reshape(1, -1, hw // 2, 2, hw // 2, 2).max(axis=(3, 5))
        np.testing.assert_array_equal(pooled, blocks)
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == len(maps)
    want = run(g, calib[0])[1]
    got = kpu_sim.load(res.kmodel).run(calib[0])[1].reshape(want.shape)
    assert max_steps(got, want) <= 0.62, max_steps(got, want)
