"""split_channels: layers too big for one KPU layer cut into channel groups, with the same float values."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.channel_split import split_channels
from kcc.passes.kpu_live import KpuLive
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext
from kcc.target.k210 import KPU_RAM_SIZE

rng = np.random.default_rng(4)
RELU6 = (0.0, 6.0)


def _conv(g, x, oc, k, groups=1, act=O.NO_CLAMP, stride=1, name=""):
    c = x.shape[1]
    w = g.constant(rng.uniform(-1, 1, (oc, c // groups, k, k)).astype(np.float32), name + "/w")
    b = g.constant(rng.uniform(-1, 1, oc).astype(np.float32), name + "/b")
    p = k // 2
    return g.add(O.Conv2D((stride, stride), ((p, p), (p, p)), groups=groups, act=act), (x, w, b), name)


def _inverted_residual(cin, hw, c, cout) -> Graph:
    """x [1, cin, hw, hw] -> 1x1 'expand' to c (relu6) -> 3x3 depthwise 'dw' (relu6) -> 1x1 'project' to cout."""
    g = Graph()
    x = g.input(0, (1, cin, hw, hw))
    y = _conv(g, x, c, 1, act=RELU6, name="expand")
    y = _conv(g, y, c, 3, groups=c, act=RELU6, name="dw")
    g.outputs = [_conv(g, y, cout, 1, name="project")]
    return g


def _ops(g: Graph, kind) -> list:
    return [n for n in g.nodes if isinstance(n.op, kind)]


def _check(build, shape):
    g = build()
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    want = run(g, [x])[0]  # before the rewrite: split_channels edits the graph in place
    out = split_channels(g, CompileContext(CompileOptions()))
    np.testing.assert_allclose(run(out, [x])[0], want, rtol=1e-5, atol=1e-5)
    ctx = CompileContext(CompileOptions())
    legalize_kpu(out, ctx)
    return out, ctx.placements


def test_an_inverted_residual_block_over_kpu_ram_runs_on_the_kpu_in_channel_groups():
    """A 1x1 expansion to 72 channels of 128x128 and its 3x3 depthwise: 1 MiB + 1.1 MiB of KPU RAM for
    the depthwise's input and output, over the 2 MiB. Both are cut into the same channel groups, each
    depthwise group reads its expansion group (no CPU slice), and everything lands on the KPU."""
    def build():
        return _inverted_residual(8, 128, 72, 8)

    out, placements = _check(build, (1, 8, 128, 128))
    dws = [n for n in _ops(out, O.Conv2D) if n.op.groups > 1]
    assert [n.shape[1] for n in dws] == [36, 36]
    assert [n.inputs[0].name for n in dws] == ["expand/ch0_36", "expand/ch36_72"]
    assert not _ops(out, O.StridedSlice) and len(_ops(out, O.Concat)) == 1
    assert placements and all(p.on_kpu for p in placements), placements


def test_groups_are_sized_for_what_stays_in_kpu_ram_beside_them_and_made_one_after_the_other():
    """MobileNetV2 1.0 at 320x320, block 1: an expansion of 16 to 96 channels at 160x160 (2.8 MiB)
    and a stride-2 depthwise. Two groups of 48 fit one at a time, but the block's input (0.47 MiB,
    read by every expansion group) and the depthwise output (0.94 MiB, one buffer its groups write)
    stay beside each group: 5 groups of 20 channels fit, each expansion group made just before its
    depthwise group. The legalized graph's KPU RAM never exceeds the 2 MiB (kcc.passes.kpu_live)."""
    def build():
        g = Graph()
        x = g.input(0, (1, 16, 160, 160))
        y = _conv(g, x, 96, 1, act=RELU6, name="expand")
        y = _conv(g, y, 96, 3, groups=96, act=RELU6, stride=2, name="dw")
        g.outputs = [_conv(g, y, 24, 1, name="project")]
        return g

    out, placements = _check(build, (1, 16, 160, 160))
    convs = [n for n in out.nodes if isinstance(n.op, O.Conv2D)]
    assert [n.name for n in convs[:4]] == ["expand/ch0_20", "dw/ch0_20", "expand/ch20_40", "dw/ch20_40"]
    assert [n.shape[1] for n in convs if n.op.groups > 1] == [20, 20, 20, 20, 16]
    assert all(p.on_kpu for p in placements), placements
    ctx = CompileContext(CompileOptions())
    legalized = legalize_kpu(out, ctx)
    assert max(KpuLive(legalized).live) <= KPU_RAM_SIZE


def test_a_residual_blocks_depthwise_is_cut_so_that_its_skip_stays_in_kpu_ram():
    """MobileNetV2 0.5 at 320x320, block 2: its 96-channel depthwise layer at 80x80 fits KPU RAM
    alone (0.94 MiB in, 0.94 out), but the residual add on the KPU keeps the block's skip beside it
    ([skip; projection], 0.31 MiB): the layer and its expansion are cut into two groups, and the add
    is a KPU layer (it stayed on the CPU: ~40 ms of copy-outs, float add and upload)."""
    def build():
        g = Graph()
        x = _conv(g, g.input(0, (1, 8, 80, 80)), 16, 1, act=RELU6, name="skip")
        y = _conv(g, x, 96, 1, act=RELU6, name="expand")
        y = _conv(g, y, 96, 3, groups=96, act=RELU6, name="dw")
        y = _conv(g, y, 16, 1, name="project")
        g.outputs = [_conv(g, g.add(O.Binary("add"), (x, y), "add"), 4, 1, name="head")]
        return g

    out, placements = _check(build, (1, 8, 80, 80))
    assert [n.shape[1] for n in out.nodes if isinstance(n.op, O.Conv2D) and n.op.groups > 1] == [48, 48]
    add = next(p for p in placements if p.node == "add")
    assert add.on_kpu, add


def test_a_depthwise_read_by_another_reader_too_slices_its_input():
    """The expansion is also read by a residual add: it is not cut, each depthwise group reads a slice."""
    def build():
        g = Graph()
        x = g.input(0, (1, 72, 128, 128))
        y = _conv(g, x, 72, 3, groups=72, act=RELU6, name="dw")
        g.outputs = [g.add(O.Binary("add"), (x, y))]
        return g

    out, placements = _check(build, (1, 72, 128, 128))
    slices = _ops(out, O.StridedSlice)
    assert [(s.op.begin[1], s.op.end[1]) for s in slices] == [(0, 36), (36, 72)]
    assert all(p.on_kpu for p in placements), placements


@pytest.mark.parametrize("oc,groups", [(1100, 2), (2100, 3)])
def test_a_conv_over_1024_output_channels_is_cut_into_output_groups(oc, groups):
    def build():
        g = Graph()
        x = g.input(0, (1, 8, 4, 4))
        g.outputs = [_conv(g, x, oc, 1, act=RELU6, name="head")]
        return g

    out, placements = _check(build, (1, 8, 4, 4))
    convs = _ops(out, O.Conv2D)
    assert len(convs) == groups and all(n.shape[1] <= 1024 and n.inputs[0].name == "input" for n in convs)
    assert sum(n.shape[1] for n in convs) == oc
    assert all(p.on_kpu for p in placements), placements


def test_a_fully_connected_layer_over_1024_outputs_is_cut_into_column_groups():
    """fc1 (64 -> 1100) is cut in two; fc2 reads its 1100 outputs, more than a KPU layer's channels: it
    stays whole, one KPU layer reading them as a 123x3x3 map (kernel_forms.fc_as_conv), even as a
    small output head (a uint8 matmul on the CPU would round its outputs to 8 bits too)."""
    def build():
        g = Graph()
        x = g.input(0, (1, 64))
        w = g.constant(rng.uniform(-1, 1, (64, 1100)).astype(np.float32))
        y = g.add(O.MatMul(), (x, w, g.constant(np.zeros(1100, np.float32))), "fc1")
        w = g.constant(rng.uniform(-1, 1, (1100, 16)).astype(np.float32))
        g.outputs = [g.add(O.MatMul(), (y, w, g.constant(np.zeros(16, np.float32))), "fc2")]
        return g

    out, placements = _check(build, (1, 64))
    assert [n.shape for n in _ops(out, O.MatMul)] == [(1, 552), (1, 548), (1, 16)]
    assert [p.on_kpu for p in placements] == [True, True, True], placements
    assert placements[-1].reason == "as 3x3 conv over its 1100 inputs as a 123x3x3 map"


def test_layers_over_1024_inputs_and_layers_that_fit_are_left_alone():
    """More inputs than a KPU layer reads cannot be cut exactly (partial sums would round): a conv
    keeps its reason (a fully-connected layer reads them as a 3x3 map, kernel_forms.fc_as_conv)."""
    g = Graph()
    x = g.input(0, (1, 1100, 4, 4))
    y = _conv(g, x, 8, 1, name="wide_in")
    y = _conv(g, y, 8, 3, groups=8, name="fits")
    flat = g.add(O.Reshape((1, 128)), (y,))
    w = g.constant(rng.uniform(-1, 1, (128, 16)).astype(np.float32))
    g.outputs = [g.add(O.MatMul(), (flat, w, g.constant(np.zeros(16, np.float32))), "fc")]
    before = [(n.name, n.op) for n in g.nodes]
    out = split_channels(g, CompileContext(CompileOptions()))
    assert [(n.name, n.op) for n in out.nodes] == before


@pytest.mark.parametrize("pool,cut", [(O.Pool2D("max", (2, 2), (2, 2)), False), (O.Pool2D("max", (3, 3), (2, 2)), True)])
def test_a_conv_whose_pooled_output_fits_is_not_cut(pool, cut):
    """Tiny YOLO at 416x416, its second layer: a 3x3 conv 16 -> 32 over 208x208 (0.8 + 1.7 MiB of KPU
    RAM) and a 2x2 max pool, which legalize_kpu fuses: the pooled output (104x104) fits beside the
    input, one layer (it was cut in two, and the pool left in float on the CPU). A 3x3 stride-2 max
    pool is no code of the pool unit: that conv is cut into two output groups."""
    def build():
        g = Graph()
        x = g.input(0, (1, 16, 208, 208))
        g.outputs = [g.add(pool, (_conv(g, x, 32, 3, act=RELU6, name="conv"),), "pool")]
        return g

    out, placements = _check(build, (1, 16, 208, 208))
    convs = [p for p in placements if p.op == "conv2d"]
    assert all(p.on_kpu for p in convs) and len(convs) == (2 if cut else 1), convs
    assert cut or "pool max_2_s2" in convs[0].reason


def test_the_cpu_target_cuts_nothing():
    g = Graph()
    x = g.input(0, (1, 8, 4, 4))
    g.outputs = [_conv(g, x, 1100, 1, name="head")]
    out = split_channels(g, CompileContext(CompileOptions(target="cpu")))
    assert len(_ops(out, O.Conv2D)) == 1 and not _ops(out, O.Concat)


def _wide(g, dw_name, wide):
    """Give depthwise `dw_name`'s channels `wide` a weight range of 100 (over the threshold, 64)."""
    dw = g.find(dw_name)
    w = dw.inputs[1].data.copy()
    w[wide, 0, 0, 0], w[wide, 0, 2, 2] = -50.0, 50.0
    dw.inputs = (dw.inputs[0], g.insert_before(dw, O.Constant(w), (), dw_name + "/w_wide"), dw.inputs[2])


def test_a_depthwise_over_the_weights_threshold_keeps_only_its_wide_channels_on_the_cpu():
    """Channels 1 and 6 of a 12-channel depthwise exceed --weights-quantize-threshold: the others are one
    KPU layer and only the two wide ones run in float on the CPU. Its producer and reader take the
    channels in the order [the ten within, the two wide] (weights permuted, values unchanged), so the
    KPU part reads one expansion group from KPU RAM and writes one range of the reader's input."""
    def build():
        g = _inverted_residual(4, 40, 12, 6)
        _wide(g, "dw", [1, 6])
        return g

    out, placements = _check(build, (1, 4, 40, 40))
    dws = [n for n in _ops(out, O.Conv2D) if n.op.groups > 1]
    assert [(n.name, n.shape[1]) for n in dws] == [("dw/ch0_10", 10), ("dw/ch10_12", 2)]
    assert [n.inputs[0].name for n in dws] == ["expand/ch0_10", "expand/ch10_12"]
    assert not _ops(out, O.StridedSlice)
    (concat,) = _ops(out, O.Concat)
    assert concat.inputs == tuple(dws) and concat.name == "dw"
    on_cpu = [p.node for p in placements if not p.on_kpu]
    assert on_cpu == ["dw/ch10_12"], placements
    lines = []
    split_channels(build(), CompileContext(CompileOptions(), log=lines.append))
    assert lines == ["   'dw': channel(s) 1, 6 of 12 over --weights-quantize-threshold stay in float on the CPU, "
                     "the other 10 go to the KPU"]


def test_a_depthwise_whose_neighbours_cannot_follow_is_cut_into_runs():
    """The depthwise's input is the graph input (no producer to permute): the channels are cut into
    runs in their own order, [0, 1) [1, 2) [2, 6) [6, 7) [7, 12), the wide ones on the CPU, when that
    still costs less than the whole layer in float."""
    def build():
        g = Graph()
        x = g.input(0, (1, 12, 40, 40))
        y = _conv(g, x, 12, 3, groups=12, act=RELU6, name="dw")
        g.outputs = [_conv(g, y, 6, 1, name="project")]
        _wide(g, "dw", [1, 6])
        return g

    out, placements = _check(build, (1, 12, 40, 40))
    dws = [n for n in _ops(out, O.Conv2D) if n.name.startswith("dw/")]  # one channel: groups 1
    assert [n.name for n in dws] == ["dw/ch0_1", "dw/ch1_2", "dw/ch2_6", "dw/ch6_7", "dw/ch7_12"]
    on_cpu = [p.node for p in placements if not p.on_kpu]
    assert on_cpu == ["dw/ch1_2", "dw/ch6_7"], placements


def test_a_depthwise_with_every_channel_or_none_over_the_threshold_is_left_alone():
    for wide in ([], list(range(12))):
        g = _inverted_residual(4, 40, 12, 6)
        _wide(g, "dw", wide)
        n = len(g.nodes)
        out = split_channels(g, CompileContext(CompileOptions()))
        assert len(out.nodes) == n and not _ops(out, O.Concat)
