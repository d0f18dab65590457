"""prelu_stream: a BlazeBlock's add and PReLU as one 1x1 KPU layer to [relu(a); relu(-a)], read by the
next layers through their weights; the float values are those of the graph it rewrites."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.blaze_blocks import streamed_prelus
from kcc.passes.prelu_kpu import prelu_to_kpu
from kcc.passes.prelu_stream import stream_to_kpu

rng = np.random.default_rng(29)


def _const(g, shape, lo=-0.5, hi=0.5):
    return g.constant(rng.uniform(lo, hi, shape).astype(np.float32))


def _alpha(g, c):
    return g.constant(rng.uniform(-0.3, 1.5, (1, c, 1, 1)).astype(np.float32))


def _stream(g, opts=CompileOptions()):
    """prelu_kpu first, as legalize_kpu runs them: the stem's PReLU becomes KPU layers."""
    return stream_to_kpu(prelu_to_kpu(g, opts)[0], opts)


def _blazeblocks(c=8, hw=16, stride2=True, head_reads="kpu"):
    """As legalize_kpu leaves iris / hand recrop: KPU layers around CPU adds and PReLUs. Block 1:
    y -> 1x1 -> depthwise 3x3 -> 1x1 projection, + y, PReLU; block 2: depthwise 3x3 (no activation)
    -> projection, + y, PReLU; with `stride2` a stride-2 block: 3x3 pick conv -> depthwise ->
    projection to 2c, + channel-pad(maxpool(y)), PReLU."""
    g = Graph()
    x = g.input(0, (1, 3, hw, hw))
    y = g.add(KO.FloatKpuConv(3), (x, _const(g, (c, 3, 3, 3)), _const(g, (c,))), "stem")
    y = g.add(O.PRelu(), (y, _alpha(g, c)), "stem_prelu")
    t = g.add(KO.FloatKpuConv(1), (y, _const(g, (c // 2, c, 1, 1)), _const(g, (c // 2,))), "b1_expand")
    t = g.add(KO.FloatKpuConv(3, True), (t, _const(g, (c // 2, 1, 3, 3)), _const(g, (c // 2,))), "b1_dw")
    t = g.add(KO.FloatKpuConv(1), (t, _const(g, (c, c // 2, 1, 1)), _const(g, (c,))), "b1_project")
    y = g.add(O.PRelu(), (g.add(O.Binary("add"), (y, t), "b1_add"), _alpha(g, c)), "b1_prelu")
    t = g.add(KO.FloatKpuConv(3, True), (y, _const(g, (c, 1, 3, 3)), _const(g, (c,))), "b2_dw")
    t = g.add(KO.FloatKpuConv(1), (t, _const(g, (c, c, 1, 1)), _const(g, (c,))), "b2_project")
    y = g.add(O.PRelu(), (g.add(O.Binary("add"), (t, y), "b2_add"), _alpha(g, c)), "b2_prelu")
    if stride2:
        t = g.add(KO.FloatKpuConv(3, pool="left_top_2_s2"), (y, _const(g, (c, c, 3, 3)), _const(g, (c,))), "b3_s2")
        t = g.add(KO.FloatKpuConv(3, True), (t, _const(g, (c, 1, 3, 3)), _const(g, (c,))), "b3_dw")
        t = g.add(KO.FloatKpuConv(1), (t, _const(g, (2 * c, c, 1, 1)), _const(g, (2 * c,))), "b3_project")
        s = g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,), "b3_pool")
        s = g.add(O.Pad(((0, 0), (0, c), (0, 0), (0, 0)), 0.0), (s,), "b3_channel_pad")
        y = g.add(O.PRelu(), (g.add(O.Binary("add"), (s, t), "b3_add"), _alpha(g, 2 * c)), "b3_prelu")
    oc = y.shape[1]
    if head_reads == "kpu":
        g.outputs = [g.add(KO.FloatKpuConv(1), (y, _const(g, (4, oc, 1, 1)), _const(g, (4,))), "head")]
    else:  # the CPU reads the last PReLU
        g.outputs = [g.add(O.Unary("abs"), (y,), "head")]
    return g


@pytest.mark.parametrize("stride2", [False, True])
def test_blazeblocks_become_relu_pairs_with_the_same_float_values(stride2):
    g = _blazeblocks(stride2=stride2)
    out, done, pools, kept = _stream(g)
    adds = ["b1_add", "b2_add"] + (["b3_add"] if stride2 else [])
    assert done == adds and kept == [] and pools == (["b3_pool"] if stride2 else [])
    assert not any(isinstance(n.op, (O.Binary, O.PRelu, O.Pad, O.Pool2D)) for n in out.nodes)
    stacks = [n for n in out.nodes if isinstance(n.op, KO.KpuStack)]
    assert len(stacks) == len(adds)
    pairs = [n for n in out.nodes if n.name.endswith("/relu_pair")]
    assert [p.op.act for p in pairs] == [(0.0, np.inf)] * len(adds)
    assert all(p.shape[1] == 2 * a.shape[1] for p, a in zip(pairs, (g.find(a) for a in adds)))
    # the projections are fused into the pair layers; b2's depthwise reads [relu(a); relu(-a)]
    names = {n.name for n in out.nodes}
    assert not {"b1_project", "b2_project", "b3_project"} & names and "b2_dw/stream" in names
    assert out.find("b2_dw/stream").shape[1] == 16
    if stride2:  # the skip: one 1x1 layer over b2's pair with the pool unit's max_2_s2
        pool = out.find("b3_pool")
        assert isinstance(pool.op, KO.FloatKpuConv) and pool.op.pool == "max_2_s2"
    for _ in range(3):
        x = rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(run(out, [x])[0], run(g, [x])[0], rtol=1e-4, atol=1e-4)


def test_a_cpu_reader_gets_the_prelu_from_one_merge_layer():
    """The chain ends at a CPU op: the PReLU made explicit by a 1x1 layer over the pair, weights
    [I, -diag(alpha)], which the CPU op reads."""
    g = _blazeblocks(stride2=False, head_reads="cpu")
    out, done, _, _ = _stream(g)
    assert done == ["b1_add", "b2_add"]
    merge = out.find("b2_prelu")
    assert isinstance(merge.op, KO.FloatKpuConv) and merge.inputs[0].name == "b2_add/relu_pair"
    assert out.outputs[0].inputs[0] is merge
    x = rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run(out, [x])[0], run(g, [x])[0], rtol=1e-4, atol=1e-4)


def test_blazeblocks_stay_for_the_cpu_target_and_without_a_kpu_skip():
    g = _blazeblocks()
    assert _stream(g, CompileOptions(target="cpu"))[1] == []
    g = Graph()  # the skip is the graph input: a CPU tensor
    x = g.input(0, (1, 8, 16, 16))
    t = g.add(KO.FloatKpuConv(3, True), (x, _const(g, (8, 1, 3, 3)), _const(g, (8,))), "dw")
    t = g.add(KO.FloatKpuConv(1), (t, _const(g, (8, 8, 1, 1)), _const(g, (8,))), "project")
    y = g.add(O.PRelu(), (g.add(O.Binary("add"), (x, t), "add"), _alpha(g, 8)), "prelu")
    g.outputs = [g.add(KO.FloatKpuConv(1), (y, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
    out, done, _, kept = _stream(g)
    assert done == [] and kept == [("add", "its operand 'input' is a CPU input")]


def test_a_prelu_a_decomposed_conv_reads_through_residual_channels_stays_on_the_cpu():
    """The decomposed conv reads the float PReLU with more bits than 8 (kcc.passes.decompose_kernels)."""
    g = _blazeblocks(stride2=False)
    y = g.find("b2_prelu")
    r = g.add(KO.QuantResidual(16.0), (y,), "residual")
    g.outputs = [*g.outputs, r]
    out, done, _, kept = _stream(g)
    assert done == ["b1_add"] and kept[0][0] == "b2_add" and "residual channels" in kept[0][1]


def _one_block(hw, sum_read_by_cpu):
    """A KPU skip, depthwise -> projection, + skip, PReLU (slopes in (0, 1)) read by the CPU."""
    g = Graph()
    x = g.input(0, (1, 8, hw, hw))
    s = g.add(KO.FloatKpuConv(3, act=(0.0, 6.0)), (x, _const(g, (8, 8, 3, 3)), _const(g, (8,))), "skip")
    t = g.add(KO.FloatKpuConv(3, True), (s, _const(g, (8, 1, 3, 3)), _const(g, (8,))), "dw")
    t = g.add(KO.FloatKpuConv(1), (t, _const(g, (8, 8, 1, 1)), _const(g, (8,))), "project")
    a = g.add(O.Binary("add"), (s, t), "add")
    y = g.add(O.PRelu(), (a, g.constant(rng.uniform(0.1, 0.5, (1, 8, 1, 1)).astype(np.float32))), "prelu")
    g.outputs = [g.add(O.Unary("abs"), (y,), "head")] + ([g.add(O.Unary("abs"), (a,), "sum_head")]
                                                        if sum_read_by_cpu else [])
    return g


def test_the_add_stays_on_the_cpu_when_the_pair_costs_more():
    """On a 4x4x8 map whose sum and PReLU the CPU reads, the pair layer and two merge layers copied out
    cost more than a float add and PReLU on 128 elements; on 16x16 the pair is cheaper."""
    out, done, _, kept = _stream(_one_block(4, True))
    assert done == [] and kept == [("add", "estimated slower than the CPU add and PReLU")]
    assert _stream(_one_block(16, True))[1] == ["add"]
    g = _one_block(16, False)
    out, done, _, _ = _stream(g)
    x = rng.uniform(-1, 1, (1, 8, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run(out, [x])[0], run(g, [x])[0], rtol=1e-4, atol=1e-4)


def test_a_skip_the_cpu_makes_is_uploaded_by_one_identity_layer_to_start_the_stream():
    """BlazePalm's first block reads its stem's PReLU, a CPU op: one 1x1 identity layer uploads it
    as a part of the add's stack; the values are the graph's."""
    g = Graph()
    x = g.input(0, (1, 8, 16, 16))
    y = g.add(O.PRelu(), (g.add(O.Unary("abs"), (x,), "cpu_op"), _alpha(g, 8)), "stem_prelu")
    t = g.add(KO.FloatKpuConv(3, True), (y, _const(g, (8, 1, 3, 3)), _const(g, (8,))), "dw")
    t = g.add(KO.FloatKpuConv(1), (t, _const(g, (8, 8, 1, 1)), _const(g, (8,))), "project")
    y = g.add(O.PRelu(), (g.add(O.Binary("add"), (y, t), "add"), _alpha(g, 8)), "prelu")
    g.outputs = [g.add(KO.FloatKpuConv(1), (y, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
    out, done, _, kept = _stream(g)
    assert done == ["add"] and kept == []
    up = out.find("stem_prelu/upload")
    assert isinstance(up.op, KO.FloatKpuConv) and up.inputs[0].name == "stem_prelu"
    (stack,) = [n for n in out.nodes if isinstance(n.op, KO.KpuStack)]
    assert up in stack.inputs
    xs = rng.uniform(-1, 1, (1, 8, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run(out, [xs])[0], run(g, [xs])[0], rtol=1e-4, atol=1e-4)


def test_streamed_prelus_are_those_of_blazeblock_adds_whose_pair_leaves_kpu_ram_for_their_readers():
    """decompose_kernels' question before legalize: which PReLUs stay in KPU RAM (8-bit readers): a
    pair within EXPLICIT_PAIR_RAM (half the KPU RAM; over STREAM_PAIR_RAM the PReLU is made explicit)."""
    # a pair of 2 x 32 channels: 192 KiB at 48, 768 KiB at 96, 1.9 MiB at 160
    for hw, streamed in ((48, True), (96, True), (160, False)):
        g = Graph()
        x = g.input(0, (1, 32, hw, hw))
        y = g.add(O.PRelu(), (x, _alpha(g, 32)), "stem_prelu")
        t = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=32), (y, _const(g, (32, 1, 5, 5)), _const(g, (32,))), "dw")
        a = g.add(O.Binary("add"), (y, g.add(O.Conv2D(), (t, _const(g, (32, 32, 1, 1)), _const(g, (32,))))), "add")
        p = g.add(O.PRelu(), (a, _alpha(g, 32)), "prelu")
        g.outputs = [g.add(O.Conv2D(), (p, _const(g, (4, 32, 1, 1)), _const(g, (4,))), "head")]
        assert streamed_prelus(g) == ({id(p): "add"} if streamed else {}), hw
        g.outputs = [p]  # a PReLU the model outputs stays on the CPU
        assert streamed_prelus(g) == {}


def test_each_channel_group_a_decomposed_conv_reads_gets_a_merge_layer_of_its_own():
    """A decomposed 5x5 reads a streamed PReLU in channel groups (kcc.passes.kernel_forms' slices, its
    shifted copies concatenated in KPU RAM). Each group is made explicit by a 1x1 layer of its own
    over the pair, so each has its own output grid, as each group the CPU quantizes does (sliced
    from one merge of all C channels, BlazePalm's 24x24 streams lost 0.002 of cosine: docs/measurements.md §31)."""
    g = _blazeblocks(stride2=False)
    y = g.find("b2_prelu")
    copies = []
    for i, (lo, hi) in enumerate(((0, 3), (3, 8))):
        part = g.add(O.StridedSlice((0, lo, 0, 0), (1, hi, 16, 16), (1, 1, 1, 1)), (y,), f"dw/channels_{i}")
        copies.append(g.add(KO.FloatKpuConv(3, True), (part, _const(g, (hi - lo, 1, 3, 3)), _const(g, (hi - lo,))),
                            f"dw/copy_{i}"))
    both = g.add(O.Concat(1), tuple(copies), "dw/copies")
    g.outputs = [g.add(KO.FloatKpuConv(1), (both, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
    out, done, _, kept = _stream(g)
    assert done == ["b1_add", "b2_add"] and kept == [], kept
    pair = out.find("b2_add/relu_pair")
    for i, c in enumerate((3, 5)):
        merge = out.find(f"dw/channels_{i}")
        assert isinstance(merge.op, KO.FloatKpuConv) and merge.op.kernel == 1, merge.op
        assert merge.inputs[0] is pair and merge.shape[1] == c
        assert out.find(f"dw/copy_{i}").inputs[0] is merge
    assert not any(isinstance(n.op, O.StridedSlice) for n in out.nodes)
    xs = rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run(out, [xs])[0], run(g, [xs])[0], rtol=1e-4, atol=1e-4)


def test_streamed_prelus_take_blocks_of_128_channels_before_a_5x5_not_256():
    """STREAM_BLOCK_BYTES: a block's pair layer (2C x (2C + C) weights) and the merge making its PReLU
    explicit for a 5x5 (2C x C): 128 KiB at BlazePalm's 24x24 blocks of 128 channels, streamed; 512 KiB
    at its 12x12 ones of 256, kept on the CPU."""
    for c, streamed in ((128, True), (256, False)):
        g = Graph()
        x = g.input(0, (1, c, 12, 12))
        y = g.add(O.PRelu(), (x, _alpha(g, c)), "stem_prelu")
        t = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=c), (y, _const(g, (c, 1, 5, 5)), _const(g, (c,))), "dw")
        a = g.add(O.Binary("add"), (y, g.add(O.Conv2D(), (t, _const(g, (c, c, 1, 1)), _const(g, (c,))))), "add")
        p = g.add(O.PRelu(), (a, _alpha(g, c)), "prelu")
        t = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=c), (p, _const(g, (c, 1, 5, 5)), _const(g, (c,))), "dw2")
        g.outputs = [g.add(O.Conv2D(), (t, _const(g, (4, c, 1, 1)), _const(g, (4,))), "head")]
        assert streamed_prelus(g) == ({id(p): "add"} if streamed else {}), c
