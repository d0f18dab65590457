"""rotate180: the graph computed on 180°-rotated maps gives the same outputs, and is taken only when it
puts SAME stride-2 layers on the KPU's picks for one input flip."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import row_pick
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext
from kcc.passes.rotate180 import _Rotation, rotate180

rng = np.random.default_rng(11)


def legalize(g):
    ctx = CompileContext(CompileOptions())
    return legalize_kpu(g, ctx), ctx.placements


def _c(*shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


def _conv(g, x, oc, k, stride, pad, groups=1, act=(0.0, 6.0)):
    ic = x.shape[1] // groups
    return g.add(O.Conv2D((stride, stride), pad, (1, 1), groups, act), (x, g.constant(_c(oc, ic, k, k)),
                                                                       g.constant(_c(oc))))


SAME_EVEN = ((0, 1), (0, 1))  # TFLite SAME, 3x3 stride 2 on an even size


def _mobilenet_like(h=16, w=16, head=True):
    g = Graph()
    x = g.input(0, (1, 3, h, w))
    y = _conv(g, x, 8, 3, 2, SAME_EVEN)
    y = _conv(g, y, 8, 3, 1, ((1, 1), (1, 1)), groups=8)
    y = _conv(g, y, 8, 3, 2, SAME_EVEN, groups=8)
    y = _conv(g, y, 12, 1, 1, ((0, 0), (0, 0)))
    if head:
        y = g.add(O.Pool2D("mean", y.shape[2:], (2, 2)), (y,))
        y = g.add(O.Reshape((1, 12)), (y,))
    g.outputs = [y]
    return g


def _every_op():
    """Each op the rotation passes through, with odd and even sizes, and a map output."""
    g = Graph()
    x = g.input(0, (1, 4, 13, 10))
    a = _conv(g, x, 6, 3, 2, ((1, 1), (0, 1)))  # 13 rows: aligned with (1, 1); 10 columns with (0, 1)
    a = g.add(O.Pad(((0, 0), (0, 0), (2, 0), (0, 1))), (a,))
    a = g.add(O.StridedSlice((0, 0, 1, 0), (1, 6, 8, 6), (1, 1, 3, 1)), (a,))
    a = g.add(O.Binary("add"), (a, g.constant(_c(6, 3, 6))))  # a constant map is turned too
    a = g.add(O.PRelu(), (a, g.constant(_c(6, 1, 1))))
    b = g.add(O.Unary("tanh"), (a,))
    a = g.add(O.Concat(2), (a, b))
    a = g.add(O.Concat(1), (a, a))
    a = g.add(O.Pool2D("max", (2, 2), (2, 2), ((0, 0), (0, 0))), (a,))
    a = g.add(O.Softmax(3), (a,))
    r = g.add(O.Reduce("mean", (2, 3), False), (a,))
    g.outputs = [a, r, g.add(O.Reduce("max", (1,), True), (a,))]
    g.verify()
    return g


@pytest.mark.parametrize("make", [_mobilenet_like, _every_op, lambda: _mobilenet_like(14, 18, head=False)])
def test_rotated_graph_computes_the_same_outputs(make):
    g = make()
    r = _Rotation(g)
    rotated = r.run()
    rotated.verify("rotate180")
    x = rng.uniform(-1, 1, g.inputs[0].shape).astype(np.float32)
    for want, got in zip(run(g, [x]), run(rotated, [x])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def no_pick_layers(monkeypatch):
    """legalize_kpu (and so rotate180's gate) without kcc.passes.row_pick's pick layers: every SAME
    stride-2 layer on an even size then needs a CPU pre-pad or slice unless the maps are turned."""
    monkeypatch.setattr(row_pick, "serves", lambda *a: False)


def test_a_classifier_whose_pick_layers_serve_it_is_not_rotated():
    """Every SAME stride-2 layer gets a pick layer (kcc.passes.row_pick): the rotation would save their
    KPU time only, far less than the input flip costs the CPU."""
    g = _mobilenet_like()
    assert rotate180(g) is g
    r = _Rotation(g)
    r.run()
    assert r.worse == r.left == 0 and 0 < r.freed < 3 * 16 * 16  # two pick layers, in flip elements


def test_a_stem_whose_full_resolution_output_overflows_kpu_ram_is_rotated():
    """A 3 -> 512 channel SAME stride-2 stem on 64x64: at stride 1 its 512x64x64 output alone fills the
    2 MiB of KPU RAM, so no pick layer serves it; turned, it is one left_top pick layer for one input
    flip."""
    g = Graph()
    x = g.input(0, (1, 3, 64, 64))
    y = _conv(g, x, 512, 3, 2, SAME_EVEN)
    g.outputs = [g.add(O.Reduce("mean", (2, 3), False), (y,))]
    assert not row_pick.fits(x.shape, 512)
    rotated = rotate180(g)
    assert rotated is not g
    lg, placements = legalize(rotated)
    assert placements[0].on_kpu and "CPU" not in placements[0].reason
    assert [n.op.pool for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)] == ["left_top_2_s2"]


def test_a_classifier_is_rotated_once_at_its_input(no_pick_layers):
    g = _mobilenet_like()
    rotated = rotate180(g)
    assert rotated is not g
    flips = [n for n in rotated.nodes if isinstance(n.op, O.StridedSlice)]
    assert [n.inputs[0].op.kind for n in flips] == ["input"]
    assert flips[0].op.strides == (1, 1, -1, -1)
    # every stride-2 layer now reads the KPU's own symmetric padding
    pads = [n.op.padding for n in rotated.nodes if isinstance(n.op, O.Conv2D) and n.op.stride == (2, 2)]
    assert pads == [((1, 0), (1, 0))] * 2


def test_not_taken_when_a_map_output_would_need_a_flip_back():
    g = _mobilenet_like(head=False)
    assert rotate180(g) is g


def test_not_taken_when_no_stride2_layer_gains():
    g = Graph()
    x = g.input(0, (1, 3, 16, 16))
    y = _conv(g, x, 8, 3, 2, ((1, 1), (1, 1)))  # already the KPU's padding (and 15 rows: not aligned)
    g.outputs = [g.add(O.Reduce("mean", (2, 3), False), (y,))]
    assert rotate180(g) is g


def test_a_stem_is_rotated_when_its_output_crop_outweighs_the_flip(no_pick_layers):
    """iris_landmark's stem: one 3x3 stride-2 SAME conv, 3 -> 64 channels on 64x64, then 1x1 layers. The
    flip writes as many elements as the stem reads, but unrotated the stem also needs its 64-channel
    output cropped on the CPU (13 ms of iris_landmark's 398 ms): rotation pays."""
    g = Graph()
    x = g.input(0, (1, 3, 64, 64))
    y = _conv(g, x, 64, 3, 2, SAME_EVEN)
    y = _conv(g, y, 16, 1, 1, ((0, 0), (0, 0)))
    g.outputs = [g.add(O.Reduce("mean", (2, 3), False), (y,))]
    rotated = rotate180(g)
    assert rotated is not g
    lg, _ = legalize(rotated)
    slices = [n for n in lg.nodes if isinstance(n.op, O.StridedSlice)]
    assert len(slices) == 1 and slices[0].op.strides == (1, 1, -1, -1)  # the input flip alone
    assert not any(isinstance(n.op, O.Pad) for n in lg.nodes)


def test_legalized_classifier_has_no_pad_or_slice_but_the_input_flip(no_pick_layers):
    g = _mobilenet_like()
    x = rng.uniform(-1, 1, g.inputs[0].shape).astype(np.float32)
    lg, placements = legalize(g)
    np.testing.assert_allclose(run(lg, [x])[0], run(g, [x])[0], rtol=1e-5, atol=1e-5)
    assert all(p.on_kpu and "CPU" not in p.reason and "pre-pad" not in p.reason for p in placements[:4])
    pools = [n.op.pool for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert pools[:3] == ["left_top_2_s2", "bypass", "left_top_2_s2"]
    movers = [n for n in lg.nodes if isinstance(n.op, (O.Pad, O.StridedSlice))
              and n.inputs[0].shape[2:] != (1, 1)]
    assert [n.inputs[0].op.kind for n in movers] == ["input"]


def test_legalized_classifier_has_no_pad_or_slice_at_all():
    """Unrotated, each SAME stride-2 layer is a stride-1 layer and a pick layer: no CPU data movement
    on any map, not even an input flip, and the same outputs."""
    g = _mobilenet_like()
    x = rng.uniform(-1, 1, g.inputs[0].shape).astype(np.float32)
    lg, placements = legalize(g)
    np.testing.assert_allclose(run(lg, [x])[0], run(g, [x])[0], rtol=1e-5, atol=1e-5)
    assert all(p.on_kpu and "CPU" not in p.reason for p in placements[:4])
    pools = [n.op.pool for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert pools[:5] == ["bypass", "right_top_2_s2", "bypass", "bypass", "right_top_2_s2"]
    assert not [n for n in lg.nodes if isinstance(n.op, (O.Pad, O.StridedSlice)) and n.inputs[0].shape[2:] != (1, 1)]
