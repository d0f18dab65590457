"""KPU layers that pick or pool a map already in KPU RAM: SAME stride 2 on even sizes as a stride-1
layer and a pick layer (kcc.passes.row_pick), a pool of a layer also read unpooled as a second KPU
layer, a max pool of a depthwise layer as a 1x1 identity layer (kcc.passes.kpu_pools). Each KPU layer
against the scalar reference, the picked or pooled codes against the full map's.
"""


import numpy as np
import pytest
from kpu_checks import (
    RNG,
    kpu_layers_match_the_scalar_reference,
    layer_maps,
    max_steps,
    opcodes,
    shift_of,
)
from kpu_checks import const as _const

import kcc.kmodel as km
import kpu_sim
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph

rng = RNG



def test_a_pool_of_a_layer_also_read_unpooled_is_a_bit_exact_twin_kpu_layer():
    """conv -> (output, max pool -> 1x1 conv): the pool unit writes a layer's pooled output only, so
    the same conv with max_2_s2 is a second KPU layer; no pool runs on the CPU, each layer equals the
    scalar reference, and the pooled twin is exactly the max of the unpooled layer's codes."""
    shape = (1, 4, 16, 16)
    g = Graph()
    x = g.input(0, shape)
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (x, _const(g, (8, 4, 3, 3)), _const(g, (8,))),
              "conv")
    p = g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,), "pool")
    g.outputs = [y, g.add(O.Conv2D(), (p, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    names = opcodes(res.emitted.model)
    assert names.count("kpu_conv2d") == 3 and "reduce_window2d" not in names, names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 3
    (conv, _, unpooled), (twin, _, pooled), _ = layer_maps(res.kmodel, calib[0][0])
    assert twin.layer.pool_type == km.KpuPoolType.MAX_2_S2 and twin.kpu_input() == conv.kpu_input()
    # both outputs span ReLU6's [0, 6] on these samples: one grid, one integer pipeline
    assert (conv.batch_norm, conv.activation) == (twin.batch_norm, twin.activation)
    np.testing.assert_array_equal(pooled, unpooled.reshape(1, 8, 8, 2, 8, 2).max(axis=(3, 5)))
    got = kpu_sim.load(res.kmodel).run(calib[0])
    assert max(max_steps(a.reshape(b.shape), b) for a, b in zip(got, want)) <= 2.0


def test_a_max_pool_of_a_depthwise_layer_pools_the_map_in_kpu_ram_exactly():
    """kcc never fuses a pool behind a depthwise layer (nncase never pairs them): the max pool becomes a
    1x1 KPU layer with identity weights and max_2_s2 reading the depthwise's output in KPU RAM (no
    copy-out, no CPU pool). On its input's grid it writes exactly the max of the codes; each layer
    equals the scalar reference; the whole agrees with float."""
    shape = (1, 8, 16, 16)
    g = Graph()
    x = g.input(0, shape)
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), groups=8, act=(0.0, 6.0)),
              (x, _const(g, (8, 1, 3, 3)), _const(g, (8,))), "dw")
    p = g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,), "pool")
    g.outputs = [g.add(O.Conv2D(), (p, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])[0]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    (pool,) = [pl for pl in res.placements if pl.node == "pool"]
    assert pool.on_kpu and "identity weights" in pool.reason, pool
    names = opcodes(res.emitted.model)
    assert names.count("kpu_conv2d") == 3 and "reduce_window2d" not in names and "dequantize" not in names[:-1], names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 3
    (dw, _, dw_out), (pooling, x_map, pooled), _ = layer_maps(res.kmodel, calib[0][0])
    assert pooling.layer.pool_type == km.KpuPoolType.MAX_2_S2 and pooling.kpu_input() == dw.kpu_output()
    np.testing.assert_array_equal(pooled, dw_out.reshape(1, 8, 8, 2, 8, 2).max(axis=(3, 5)))
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= 2.0, f"max error {max_steps(got, want):.2f} steps"


def _same_s2_block(g, x, oc):
    """TFLite SAME stride 2 on an even size (pad 0 top/left, 1 bottom/right): a 3x3 conv (relu6), a 3x3
    depthwise (relu6), then a 1x1 head reading the map."""
    same = ((0, 1), (0, 1))
    y = g.add(O.Conv2D((2, 2), same, act=(0.0, 6.0)), (x, _const(g, (oc, x.shape[1], 3, 3)), _const(g, (oc,))), "conv_s2")
    y = g.add(O.Conv2D((2, 2), same, groups=oc, act=(0.0, 6.0)), (y, _const(g, (oc, 1, 3, 3)), _const(g, (oc,))), "dw_s2")
    return g.add(O.Conv2D(), (y, _const(g, (5, oc, 1, 1)), _const(g, (5,))), "head")


def _rms_without_and_with(form: str, shape: tuple, block, monkeypatch) -> tuple[dict, object, list]:
    """The graph x -> block(g, x), compiled twice on the same draws of weights and samples: with the
    function `form` (dotted path) refusing (None), the CPU path, then as it is; each kmodel's rms error
    against the float graph on the samples ("cpu", "kpu"), the second compile and its samples."""
    state = rng.bit_generator.state
    rms = {}
    for path in ("cpu", "kpu"):
        rng.bit_generator.state = state
        g = Graph()
        g.outputs = [block(g, g.input(0, shape))]
        calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
        want = [run(g, s)[0] for s in calib]
        with monkeypatch.context() as m:
            if path == "cpu":
                m.setattr(form, lambda *a: None)
            res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        err = np.concatenate([(program.run(s)[0].reshape(v.shape) - v).ravel() for s, v in zip(calib, want)])
        rms[path] = float(np.sqrt(np.mean(err ** 2)))
    return rms, res, calib


ROW_PICK_CASES = {  # (input shape, conv output channels): widths of 4, 2 and 1 channels per 64-byte line
    "c3_16x16": ((1, 3, 16, 16), 8),  # Y 16 wide, the picks 8 and 4
    "c3_24x32": ((1, 3, 24, 32), 16),  # Y 32 wide, 16 channels
    "c4_16x132": ((1, 4, 16, 132), 16),  # Y 132 wide: three lines a row, the picks 66 (two) and 33
    "c16_16x68": ((1, 16, 16, 68), 8),  # 16 input channels; Y 68 wide: two lines a row
}


@pytest.mark.parametrize("name", sorted(ROW_PICK_CASES))
def test_same_stride2_on_even_sizes_is_a_kpu_pick_layer(name, monkeypatch):
    """kcc.passes.row_pick: each SAME stride-2 layer on an even size runs at stride 1 (Y, full size,
    exact at the odd centres) and a pick layer copies Y's odd rows and columns, both in KPU RAM: no
    CPU pad, slice, flip or second upload. On random weights and inputs, every layer equals the
    scalar reference of the integer pipeline, each pick layer's output is exactly Y[1::2, 1::2] of the
    codes Y left in KPU RAM, and the result agrees with the float graph as the CPU pre-pad / slice
    path does (the same weights and samples)."""
    shape, oc = ROW_PICK_CASES[name]
    rms, res, calib = _rms_without_and_with("kcc.passes.row_pick.serves", shape,
                                            lambda g, x: _same_s2_block(g, x, oc), monkeypatch)
    assert rms["kpu"] <= 1.05 * rms["cpu"], rms  # measured: 0.97-1.014 of the CPU path's
    assert all(p.on_kpu and "CPU" not in p.reason for p in res.placements), res.placements
    names = opcodes(res.emitted.model)
    assert names == ["quantize", "kpu_upload"] + ["kpu_conv2d"] * 5 + ["dequantize"], names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 5
    for sample in calib[:3]:
        maps = layer_maps(res.kmodel, sample[0])
        pools = [body.layer.pool_type.name.lower() for body, _, _ in maps]
        assert pools == ["bypass", "right_top_2_s2", "bypass", "right_top_2_s2", "bypass"], pools
        for (_, _, y), (body, x_map, out) in zip(maps[0:3:2], maps[1:4:2]):
            assert shift_of(body) == (1, 0)
            np.testing.assert_array_equal(x_map, y)  # the pick layer reads Y where its layer left it
            np.testing.assert_array_equal(out, y[:, :, 1::2, 1::2])
            assert len(np.unique(y)) > 50


def test_a_pick_pair_over_kpu_ram_runs_in_output_channel_groups(monkeypatch):
    """kcc.passes.channel_split.pick_groups: a SAME stride-2 conv on an even size whose full-resolution
    output Y does not fit KPU RAM beside the picked one (MobileNetV2's 224x224 stem on the chip; here
    the same rule with KPU RAM cut to what two groups need) runs as two output-channel groups, each
    its stride-1 layer and pick layer, the picks writing their channel ranges of one buffer in place:
    no CPU pad, slice or concatenation. Each layer equals the scalar reference, each pick is exactly
    its Y's odd rows and columns, and the picks share one grid (their Ys' union)."""
    from kcc.target.k210 import kpu_bytes

    shape, oc = (1, 3, 16, 32), 16
    half = kpu_bytes((1, oc // 2, 16, 32))
    ram = kpu_bytes(shape) + half + kpu_bytes((1, oc, 8, 16))  # two groups' Y fit, the whole Y does not
    assert 2 * half + kpu_bytes((1, oc, 8, 16)) > ram
    for module in ("row_pick", "channel_split", "legalize_kpu"):
        monkeypatch.setattr(f"kcc.passes.{module}.KPU_RAM_SIZE", ram)
    g = Graph()
    x = g.input(0, shape)
    y = g.add(O.Conv2D((2, 2), ((0, 1), (0, 1)), act=(0.0, 6.0)), (x, _const(g, (oc, 3, 3, 3)), _const(g, (oc,))), "stem")
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (5, oc, 1, 1)), _const(g, (5,))), "head")]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])[0]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    placed = {p.node: p for p in res.placements}
    assert all(p.on_kpu for p in res.placements), res.placements
    assert "pick layer of its odd rows" in placed["stem/ch0_8"].reason and "stem/ch8_16" in placed
    assert placed["stem"].reason.startswith("in place in KPU RAM"), placed["stem"]
    names = opcodes(res.emitted.model)
    assert names == ["quantize", "kpu_upload"] + ["kpu_conv2d"] * 5 + ["dequantize"], names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 5
    maps = layer_maps(res.kmodel, calib[0][0])
    picks = [body for body, _, _ in maps[1:4:2]]
    assert [shift_of(b) for b in picks] == [(1, 0), (1, 0)]
    first, second = (b.kpu_output() for b in picks)
    assert second.start == first.start + first.size  # channels 8..15 right after 0..7: one buffer
    assert maps[4][0].kpu_input().start == first.start  # the head reads it where the picks wrote it
    for (_, _, y_map), (_, x_map, out) in zip(maps[0:3:2], maps[1:4:2]):
        np.testing.assert_array_equal(x_map, y_map)
        np.testing.assert_array_equal(out, y_map[:, :, 1::2, 1::2])
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= 1.67, f"max error {max_steps(got, want):.2f} steps"  # measured 1.59


GAP_PICK_CASES = {  # (input shape, padding): odd sizes at 4, 2 and 1 channels a 64-byte line
    "odd_rows_and_columns": ((1, 8, 15, 13), ((1, 1), (1, 1))),  # 4 a line: 2 layers, gap row and column
    "odd_rows_odd_centred_columns": ((1, 8, 15, 20), ((1, 1), (0, 1))),  # ULFFD: right_top, gap row only
    "odd_centred_rows_odd_columns": ((1, 6, 12, 33), ((0, 1), (1, 1))),  # 1 a line: the row shift, gap column
    "wide_odd": ((1, 3, 9, 129), ((1, 1), (1, 1))),  # three lines a row (DeepLab's 129)
}


@pytest.mark.parametrize("name", sorted(GAP_PICK_CASES))
def test_stride2_on_odd_sizes_is_kpu_layers_and_a_pick_over_a_gap(name, monkeypatch):
    """kcc.passes.gap_pick: a stride-2 depthwise layer on an odd size (reading a KPU layer) runs at
    stride 1, one KPU layer per line group of channels, each writing its rows into a map one row (column) larger, and a pick
    layer reads that map: no CPU pad, slice or upload. On random weights and inputs every layer equals
    the scalar reference of the integer pipeline, the groups land g * (H + 1) rows apart, the pick is
    exactly the right rows and columns of the codes they left, and the result agrees with the float
    graph as the CPU slice path does (the same weights and samples)."""
    shape, padding = GAP_PICK_CASES[name]
    _, c, h, w = shape

    def block(g, x):
        x = g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (c, c, 1, 1)), _const(g, (c,))), "pw")
        y = g.add(O.Conv2D((2, 2), padding, groups=c, act=(0.0, 6.0)), (x, _const(g, (c, 1, 3, 3)), _const(g, (c,))), "dw")
        return g.add(O.Conv2D(), (y, _const(g, (5, c, 1, 1)), _const(g, (5,))), "head")

    rms, res, calib = _rms_without_and_with("kcc.passes.gap_pick.plan", shape, block, monkeypatch)
    assert rms["kpu"] <= 1.05 * rms["cpu"], rms  # measured: 0.993-1.016 of the CPU path's
    assert all(p.on_kpu and "CPU" not in p.reason for p in res.placements), res.placements
    line = km.kpu_row_layout(w).groups
    groups = -(-c // line)
    names = opcodes(res.emitted.model)
    assert names == ["quantize", "kpu_upload"] + ["kpu_conv2d"] * (groups + 3) + ["dequantize"], names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == groups + 3
    maps = layer_maps(res.kmodel, calib[0][0])
    parts, (pick, x_map, out) = maps[1:groups + 1], maps[groups + 1]
    hp, wp = x_map.shape[2:]
    assert (hp, wp) == (h + h % 2 * (padding[0][0] == 1), w + w % 2 * (padding[1][0] == 1))
    rows = km.kpu_row_layout(w).row_len * hp  # 64-byte lines a line group takes in the padded map
    for g_, (body, _, y) in enumerate(parts):
        assert body.kpu_output().start == pick.kpu_input().start + g_ * rows * 64
        np.testing.assert_array_equal(x_map[:, g_ * line:(g_ + 1) * line, :h, :w], y)
    dy, dx = padding[0][0] == 0, padding[1][0] == 0  # odd-centred axes
    assert shift_of(pick) == (int(dy), 0)
    assert pick.layer.pool_type.name.lower() == ("right_top_2_s2" if dx else "left_top_2_s2")
    np.testing.assert_array_equal(out, x_map[:, :, int(dy)::2, int(dx)::2][:, :, :out.shape[2], :out.shape[3]])
    assert out.shape[2:] == ((h + 1) // 2 if not dy else h // 2, (w + 1) // 2 if not dx else w // 2)


ROW_BAND_CASES = {  # (input shape, output channels, the rows one layer may take here): bands of 8 rows
    "two_bands": ((1, 3, 16, 132), 6, 8),
    "three_bands": ((1, 4, 24, 132), 4, 8),
    "qvga_camera": ((1, 3, 240, 320), 4, None),  # the chip's own limits: 76800 pixels > 65536
}


def _stem(g, x, oc):
    """A SAME stride-2 3x3 stem on an even size (relu6) and a 1x1 head."""
    y = g.add(O.Conv2D((2, 2), ((0, 1), (0, 1)), act=(0.0, 6.0)), (x, _const(g, (oc, x.shape[1], 3, 3)),
                                                                    _const(g, (oc,))), "stem")
    return g.add(O.Conv2D(), (y, _const(g, (5, oc, 1, 1)), _const(g, (5,))), "head")


@pytest.mark.parametrize("name", sorted(ROW_BAND_CASES))
def test_a_pick_pair_over_the_layer_limits_runs_in_row_bands(name, monkeypatch):
    """kcc.passes.row_pick's row bands: a SAME stride-2 stem whose full-resolution map is over a KPU
    layer's 256 rows or 65536 pixels (a 320x240 camera picture; in the small cases the limit is cut to
    8 rows) runs on the KPU: the conv over the bands as channels, one-channel layers rewriting the
    rows at the band edges from 5 rows of the input cut on the CPU, the pick layer over the bands.
    Every layer equals the scalar reference; the patched map in KPU RAM holds, at every odd row,
    what the edge layers wrote at the band edges and the conv elsewhere; the pick output is exactly
    its odd rows and columns; and the result agrees with the float graph as the CPU pre-pad and slice
    path does (the same weights and samples)."""
    shape, oc, rows = ROW_BAND_CASES[name]
    _, c, h, w = shape
    with monkeypatch.context() as m:
        if rows is not None:
            m.setattr("kcc.passes.row_bands.MAX_MAP_PIXELS", rows * w)
        rms, res, calib = _rms_without_and_with("kcc.passes.row_pick.serves", shape,
                                                lambda g, x: _stem(g, x, oc), monkeypatch)
    assert rms["kpu"] <= 1.05 * rms["cpu"], rms  # measured: 0.998-1.003 of the CPU path's
    stem = next(p for p in res.placements if p.node == "stem")
    m = int(stem.reason.split(" row bands")[0].rsplit(" ", 1)[1])
    hs = h // m
    assert stem.on_kpu and m == (h // rows if rows else 2), stem
    names = opcodes(res.emitted.model)
    edges = ["strided_slice", "kpu_upload"] + ["kpu_conv2d"] * oc
    assert names == ["quantize", "kpu_upload", "kpu_conv2d"] + edges * (m - 1) + ["kpu_conv2d"] * 2 + ["dequantize"], names
    layers = 2 + oc * (m - 1) + 1
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == layers
    maps = layer_maps(res.kmodel, calib[0][0])
    bulk, patches, (pick, y_fixed, out) = maps[0], maps[1:-2], maps[-2]
    assert bulk[2].shape == (1, oc * m, hs, w) and y_fixed.shape == (1, oc * m, hs, w // 1)
    tall = y_fixed.reshape(oc, h, w)
    expect = bulk[2].reshape(oc, h, w).copy()
    for k, (body, _, rows5) in enumerate(patches):
        edge, o = divmod(k, oc)
        r0 = (edge + 1) * hs - 2
        assert body.kpu_output().start == bulk[0].kpu_output().start + (o * h + r0) * km.kpu_row_layout(w).row_len * 64
        expect[o, r0:r0 + 5] = rows5[0, 0]
    np.testing.assert_array_equal(tall[:, 1::2], expect[:, 1::2])  # the odd rows are what was written
    assert shift_of(pick) == (1, 0)
    np.testing.assert_array_equal(out.reshape(oc, h // 2, w // 2), tall[:, 1::2, 1::2])


CONV_BAND_CASES = {  # (input shape, output channels, fused pool, the output rows one layer may write here)
    "conv_two_bands": ((1, 3, 16, 132), 6, None, 8),
    "conv_max_pool_two_bands": ((1, 3, 32, 132), 6, O.Pool2D("max", (2, 2), (2, 2)), 8),
    "tiny_yolo_320x320": ((1, 3, 320, 320), 4, O.Pool2D("max", (2, 2), (2, 2)), None),  # the chip's limits
}


def _conv_then(g, x, oc, pool):
    """A 3x3 stride-1 conv (relu6), its pool if any, and a 1x1 head."""
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (x, _const(g, (oc, x.shape[1], 3, 3)),
                                                                    _const(g, (oc,))), "conv")
    if pool is not None:
        y = g.add(pool, (y,), "pool")
    return g.add(O.Conv2D(), (y, _const(g, (5, oc, 1, 1)), _const(g, (5,))), "head")


@pytest.mark.parametrize("name", sorted(CONV_BAND_CASES))
def test_a_conv_over_the_layer_limits_runs_in_row_bands(name, monkeypatch):
    """kcc.passes.row_bands: a 3x3 stride-1 conv (and its fused pool) whose map is over a KPU layer's
    256 rows or 65536 output pixels (tiny YOLO's first layer at 320x320; in the small cases the limit
    is cut) runs as the conv over the row bands as channels, one edge layer per band edge over 6 rows
    of output around it (from rows of the input cut on the CPU), and one one-channel copy per output
    channel writing the edge layer's 4 good rows over the bulk's in place. Every layer equals the
    scalar reference; the map in KPU RAM holds the copies' rows at the band edges and the bulk's
    elsewhere; each copy is exactly its edge layer's rows; and the result agrees with the float graph
    as one layer over the whole map does (the same weights and samples, the limit lifted)."""
    shape, oc, pool, rows = CONV_BAND_CASES[name]
    _, c, h, w = shape
    s = 1 if pool is None else 2
    ho, wo = h // s, w // s
    state = rng.bit_generator.state
    rms = {}
    for form in ("whole", "bands") if rows else ("bands",):
        rng.bit_generator.state = state
        with monkeypatch.context() as m:
            if form == "bands" and rows:
                m.setattr("kcc.passes.row_bands.MAX_MAP_PIXELS", rows * wo)
                m.setattr("kcc.passes.legalize_kpu.MAX_MAP_PIXELS", rows * wo)
            g = Graph()
            g.outputs = [_conv_then(g, g.input(0, shape), oc, pool)]
            calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
            want = [run(g, sample)[0] for sample in calib]
            res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        err = np.concatenate([(program.run(x)[0].reshape(v.shape) - v).ravel() for x, v in zip(calib, want)])
        rms[form] = float(np.sqrt(np.mean(err ** 2)))
    if rows:
        assert rms["bands"] <= 1.05 * rms["whole"], rms
    conv = next(p for p in res.placements if p.node == "conv")
    bands = int(conv.reason.split(" row bands")[0].rsplit(" ", 1)[1])
    assert conv.on_kpu and "row bands" in conv.reason and bands == (2 if rows else 2), conv
    hs = h // bands
    names = opcodes(res.emitted.model)
    edge = ["strided_slice", "kpu_upload"] + ["kpu_conv2d"] * (1 + oc)
    assert names == ["quantize", "kpu_upload", "kpu_conv2d"] + edge * (bands - 1) + ["kpu_conv2d", "dequantize"], names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 2 + (1 + oc) * (bands - 1)
    maps = layer_maps(res.kmodel, calib[0][0])
    bulk, near, copies, (head, y_map, _) = maps[0], maps[1], maps[2:2 + oc], maps[-1]
    expect = bulk[2].reshape(oc, ho, wo).copy()
    q = hs // s
    for o, (body, x_map, out) in enumerate(copies):
        np.testing.assert_array_equal(x_map[0, 0], near[2][0, o, 1:5])  # the copy reads the good rows
        np.testing.assert_array_equal(out, x_map)  # and moves them exactly
        expect[o, q - 2:q + 2] = out[0, 0]
    assert head.kpu_input().start == bulk[0].kpu_output().start  # the head reads the patched map
    np.testing.assert_array_equal(y_map.reshape(oc, ho, wo), expect)
    got, ref = kpu_sim.load(res.kmodel).run(calib[0])[0].ravel(), want[0].ravel()
    assert float(np.dot(got, ref) / (np.linalg.norm(got) * np.linalg.norm(ref))) > 0.999


def test_a_conv_in_row_bands_read_on_the_cpu_is_copied_out_after_its_edges(monkeypatch):
    """The bulk layer's own copy-out would run before the copies rewrite the band edges: a graph output
    on row bands is copied out by one identity layer over the whole patched map, after them. The
    output equals the patched map's codes, and errs from the float graph as one layer over the whole
    map does (the same weights and samples, the limit lifted)."""
    shape, oc = (1, 3, 16, 132), 4
    state = rng.bit_generator.state
    steps = {}
    for form in ("whole", "bands"):
        rng.bit_generator.state = state
        with monkeypatch.context() as m:
            if form == "bands":
                m.setattr("kcc.passes.row_bands.MAX_MAP_PIXELS", 8 * 132)
                m.setattr("kcc.passes.legalize_kpu.MAX_MAP_PIXELS", 8 * 132)
            g = Graph()
            x = g.input(0, shape)
            g.outputs = [g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)),
                               (x, _const(g, (oc, 3, 3, 3)), _const(g, (oc,))), "conv")]
            calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
            res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        steps[form] = [max_steps(program.run(c)[0].reshape(g.outputs[0].shape), run(g, c)[0]) for c in calib]
    names = opcodes(res.emitted.model)
    assert names[-2:] == ["kpu_conv2d", "dequantize"] and names.count("kpu_conv2d") == 3 + oc, names
    maps = layer_maps(res.kmodel, calib[0][0])
    (copy_body, patched, out) = maps[-1]
    assert shift_of(copy_body) == (0, 0) and copy_body.kpu_input().start == maps[0][0].kpu_output().start
    np.testing.assert_array_equal(out, patched)
    # measured: 1.60-2.02 steps in both forms, the same but for one sample (1.60 whole, 1.68 bands)
    assert max(b - w for b, w in zip(steps["bands"], steps["whole"])) <= 0.1, steps


def test_a_gap_pick_over_kpu_ram_runs_in_channel_groups(monkeypatch):
    """kcc.passes.channel_split's gap groups: a stride-2 depthwise layer on an odd size whose map one row
    and column larger does not fit KPU RAM beside its input and output (MobileNet v1 1.0 at 241x241:
    64 channels of 121x121; here KPU RAM is cut to what two groups need) runs in two channel groups,
    each its stride-1 layers and pick over its own gap map, the picks writing their channel ranges of
    one buffer; its producer is cut into the same groups. Every layer equals the scalar reference, each
    pick is exactly its gap map's picked rows and columns, and the result agrees with the float graph
    as the CPU slice path does (the same weights and samples)."""
    shape, c = (1, 3, 15, 129), 8

    def block(g, x):
        x = g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (c, 3, 1, 1)), _const(g, (c,))), "pw")
        y = g.add(O.Conv2D((2, 2), ((1, 1), (1, 1)), groups=c, act=(0.0, 6.0)),
                  (x, _const(g, (c, 1, 3, 3)), _const(g, (c,))), "dw")
        return g.add(O.Conv2D(), (y, _const(g, (5, c, 1, 1)), _const(g, (5,))), "head")

    for module in ("gap_pick", "channel_split"):
        monkeypatch.setattr(f"kcc.passes.{module}.KPU_RAM_SIZE", 45000)  # 55808 B whole, 40640 B a group
    rms, res, calib = _rms_without_and_with("kcc.passes.gap_pick.plan", shape, block, monkeypatch)
    assert rms["kpu"] <= 1.05 * rms["cpu"], rms
    placed = {p.node: p for p in res.placements}
    assert all(p.on_kpu and "CPU" not in p.reason for p in res.placements), res.placements
    assert "pick layer" in placed["dw/ch0_4"].reason and "dw/ch4_8" in placed, placed
    names = opcodes(res.emitted.model)
    # per group: its pw part, 4 one-channel stride-1 layers, the pick; then the head
    assert names == ["quantize", "kpu_upload"] + ["kpu_conv2d"] * (2 * 6 + 1) + ["dequantize"], names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 13
    maps = layer_maps(res.kmodel, calib[0][0])
    picks = [maps[5], maps[11]]
    for pick, x_map, out in picks:
        np.testing.assert_array_equal(out, x_map[:, :, ::2, ::2][:, :, :8, :65])
    assert picks[1][0].kpu_output().start == picks[0][0].kpu_output().start + picks[0][0].kpu_output().size


# bars: measured 1.31 and 1.86 steps of the random head's output + 5 % (the whole mean in float on the
# CPU: 0.96 and 1.09; each level rounds partial means, on grids as wide as their ranges)
@pytest.mark.parametrize("h,w,bar", [(8, 8, 1.38), (10, 8, 1.95)], ids=["8x8", "10x8"])
def test_a_global_mean_runs_as_block_sums_on_the_kpu(h, w, bar):
    """A classifier's global mean of its last KPU layer's map (kcc.passes.global_mean): 2x2 block sums
    at stride 2, KPU layers reading the map in KPU RAM, each bit-exact against the scalar reference;
    the CPU averages the last 2x2 (3x2) map only, as one window of a uint8 depthwise conv on its
    codes, and the full map never leaves KPU RAM (10x8: its 5x4 level, tiny, is picked on the CPU,
    which legalize_kpu prices below gap_pick's layers)."""
    c = 64
    g = Graph()
    x = g.input(0, (1, 16, h, w))
    y = g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (c, 16, 1, 1)), _const(g, (c,))), "last")
    m = g.add(O.Reduce("mean", (2, 3), True), (y,), "gap")
    g.outputs = [g.add(O.Conv2D(), (m, _const(g, (10, c, 1, 1)), _const(g, (10,))), "head")]
    calib = [[rng.uniform(-1, 1, (1, 16, h, w)).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    nodes = res.emitted.model.nodes
    names = [n.opcode.kmodel_name for n in nodes]
    kpu = [n for n in nodes if n.opcode.kmodel_name == "kpu_conv2d"]
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == len(kpu)
    # the CPU's mean of the last map: one window of a uint8 depthwise conv on its codes
    assert "reduce_window2d" not in names and "dequantize" not in names[:names.index("quantized_conv2d")], names
    mean = next(n.body for n in nodes if n.opcode.kmodel_name == "quantized_conv2d")
    assert (mean.filter_h, mean.filter_w) == mean.in_shape[2:] == ((2, 2) if h == 8 else (3, 2)), names
    assert mean.groups == mean.out_channels == c
    assert max(n.body.main_mem_output.size for n in kpu) <= c * (h // 2) * (w // 2)
    want = run(g, calib[0])[0]
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= bar, f"max error {max_steps(got, want):.2f} steps"


def test_a_global_mean_of_an_odd_map_runs_on_its_codes():
    """MobileNet's 7x7 before its classifier, too many channels for a level's gap layers
    (kcc.passes.global_mean.ODD_LEVEL_LAYERS): the mean is one 7x7 window of a uint8 depthwise conv
    on the KPU layer's codes (nncase's quantized_conv2d), its sum in int32 and one rounding to the
    classifier's input grid, where the float mean dequantized every code first."""
    c = 128
    g = Graph()
    x = g.input(0, (1, 16, 7, 7))
    y = g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (c, 16, 1, 1)), _const(g, (c,))), "last")
    m = g.add(O.Reduce("mean", (2, 3), False), (y,), "gap")
    w = g.constant(rng.uniform(-1, 1, (c, 10)).astype(np.float32))
    g.outputs = [g.add(O.MatMul(), (m, w, _const(g, (10,))), "fc")]
    calib = [[rng.uniform(-1, 1, (1, 16, 7, 7)).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float", output_quantize_threshold=0), samples=calib)
    nodes = res.emitted.model.nodes
    names = [n.opcode.kmodel_name for n in nodes]
    assert "reduce_window2d" not in names and names.count("dequantize") == 1, names  # the output's
    mean = next(n.body for n in nodes if n.opcode.kmodel_name == "quantized_conv2d")
    assert (mean.filter_h, mean.filter_w) == mean.in_shape[2:] == (7, 7) and mean.groups == c
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == names.count("kpu_conv2d")
    want = run(g, calib[0])[0]
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    print("STEPS", max_steps(got, want))
    # measured 0.928 steps, as with the float mean on the CPU (its weights 1/49 are code 255 exactly,
    # kcc.quant.cpu_conv._box_grid: the sum is exact, one rounding as the float mean's quantize)
    assert max_steps(got, want) <= 0.98, f"max error {max_steps(got, want):.2f} steps"
