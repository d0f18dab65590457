"""lower_to_neutral must not change what the graph computes, and must leave only kmodel-expressible ops."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.passes.lower_to_neutral import lower_to_neutral, native_resize_ok

rng = np.random.default_rng(0)


def _check(g: Graph, x: np.ndarray) -> Graph:
    g.verify()
    want = run(g, [x])
    low = lower_to_neutral(g)
    low.verify("lower_to_neutral")
    got = run(low, [x])
    for a, b in zip(want, got):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert [o.name for o in low.outputs] == [o.name for o in g.outputs]
    return low


@pytest.mark.parametrize("alpha", [np.full((3, 1, 1), 0.25, np.float32),
                                   np.array([0.25, -1.5, 1.0], np.float32).reshape(3, 1, 1),
                                   np.array([1.5, 2.0, 1.0], np.float32).reshape(1, 3, 1, 1),
                                   rng.uniform(-2, 2, (3, 1, 1)).astype(np.float32)])
def test_prelu_with_channel_slopes_is_depthwise_conv2d_and_one_add(alpha):
    """Per-channel slopes: x + clamp((a-1)*x) when every a-1 has one sign, else x + (a-1)*min(x, 0);
    no binary op with a broadcast operand is left."""
    g = Graph()
    x = g.input(0, (1, 3, 4, 5))
    g.outputs = [g.add(O.PRelu(), (x, g.constant(alpha, "alpha")), "y")]
    xs = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    low = _check(g, xs)
    assert not any(isinstance(n.op, O.PRelu) for n in low.nodes)
    d = alpha.ravel() - 1
    forms = 1 if np.all(d <= 0) or np.all(d >= 0) else 2  # mixed signs: a <= 1 channels, then a > 1
    binaries = [n for n in low.nodes if isinstance(n.op, O.Binary)]
    assert [n.op.op for n in binaries] == ["add"] * forms
    assert all(n.inputs[0].shape == n.inputs[1].shape for n in binaries)
    assert sum(isinstance(n.op, O.Conv2D) and n.op.groups == 3 for n in low.nodes) == forms
    np.testing.assert_array_equal(run(low, [np.abs(xs)])[0], np.abs(xs))  # x >= 0 passes unchanged


@pytest.mark.parametrize("alpha", [np.full((3, 4, 5), 0.25, np.float32) * rng.uniform(0, 1, (3, 4, 5)),
                                   rng.uniform(-2, 2, (3, 4, 5)).astype(np.float32)])
def test_prelu_with_slopes_per_position_stays_binary(alpha):
    g = Graph()
    x = g.input(0, (1, 3, 4, 5))
    g.outputs = [g.add(O.PRelu(), (x, g.constant(alpha.astype(np.float32), "alpha")), "y")]
    low = _check(g, rng.standard_normal((1, 3, 4, 5)).astype(np.float32))
    assert not any(isinstance(n.op, (O.PRelu, O.Conv2D)) for n in low.nodes)
    n_binary = sum(isinstance(n.op, O.Binary) for n in low.nodes)
    assert n_binary == (2 if np.all((alpha >= 0) & (alpha <= 1)) else 4)


def test_l2_normalize_and_softmax_axis():
    g = Graph()
    x = g.input(0, (1, 6, 3, 2))
    l2 = g.add(O.L2Normalize(1), (x,), "l2")
    g.outputs = [g.add(O.Softmax(1), (l2,), "sm")]
    low = _check(g, rng.standard_normal((1, 6, 3, 2)).astype(np.float32))
    assert not any(isinstance(n.op, O.L2Normalize) for n in low.nodes)
    assert all(n.op.axis == 3 for n in low.nodes if isinstance(n.op, O.Softmax))


@pytest.mark.parametrize("op, keepdims", [("mean", False), ("max", True)])
def test_a_global_mean_or_max_is_one_window_over_the_whole_map(op, keepdims):
    """A mean or max over H and W (a global pool) is reduce_window2d with the map as its window: a
    window tap costs the CPU less than reduce's per-element offsets (kcc.target.k210); no keepdims is
    a reshape after it. The values are unchanged."""
    g = Graph()
    x = g.input(0, (1, 4, 7, 5))
    g.outputs = [g.add(O.Reduce(op, (2, 3), keepdims), (x,), "gap")]
    low = _check(g, rng.standard_normal((1, 4, 7, 5)).astype(np.float32))
    (pool,) = [n for n in low.nodes if not isinstance(n.op, (O.Input, O.Reshape))]
    assert pool.op == O.Pool2D(op, (7, 5), (1, 1)) and pool.shape == (1, 4, 1, 1)
    assert low.outputs[0].shape == ((1, 4, 1, 1) if keepdims else (1, 4))


def test_other_reductions_keep_reduce_with_keepdims_and_reshape():
    g = Graph()
    x = g.input(0, (1, 4, 3, 3))
    g.outputs = [g.add(O.Reduce("mean", (1,), False), (x,), "over_channels"),
                 g.add(O.Reduce("sum", (2, 3), False), (x,), "sum")]
    low = _check(g, rng.standard_normal((1, 4, 3, 3)).astype(np.float32))
    reduces = [n for n in low.nodes if isinstance(n.op, O.Reduce)]
    assert len(reduces) == 2 and all(n.op.keepdims for n in reduces)
    assert [o.shape for o in low.outputs] == [(1, 3, 3), (1, 4)]


def test_conv2d_transpose_bias_moves_out():
    g = Graph()
    x = g.input(0, (1, 2, 3, 3))
    w = g.constant(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    b = g.constant(rng.standard_normal(4).astype(np.float32), "b")
    op = O.Conv2DTranspose((1, 4, 6, 6), (2, 2), ((1, 1), (1, 1)), act=(0.0, 6.0))
    g.outputs = [g.add(op, (x, w, b), "up")]
    low = _check(g, rng.standard_normal((1, 2, 3, 3)).astype(np.float32))
    tconv = next(n for n in low.nodes if isinstance(n.op, O.Conv2DTranspose))
    assert not np.any(tconv.inputs[2].data) and tconv.op.act == O.NO_CLAMP


@pytest.mark.parametrize("mode,align,half,size", [
    ("bilinear", False, False, (7, 9)), ("bilinear", True, False, (8, 8)), ("bilinear", False, True, (8, 10)),
    ("nearest", False, False, (8, 10)), ("nearest", True, False, (7, 9)), ("nearest", False, True, (8, 10)),
    ("nearest", False, True, (6, 7)),
])
def test_resize_variants(mode, align, half, size):
    g = Graph()
    x = g.input(0, (1, 2, 4, 5))
    op = O.Resize(mode, size, align, half)
    g.outputs = [g.add(op, (x,), "rs")]
    low = _check(g, rng.standard_normal((1, 2, 4, 5)).astype(np.float32))
    native = native_resize_ok(op, (4, 5))
    x2 = mode == "bilinear" and half and size == (8, 10)  # _half_pixel_x2: a plain resize_image and a pool
    repeat = mode == "nearest" and size == (8, 10)  # each pixel copied 2x2 times: concats
    assert any(isinstance(n.op, O.Resize) for n in low.nodes) == ((native or x2) and not repeat)
    assert any(isinstance(n.op, O.MatMul) for n in low.nodes) == (not native and not x2)
    if mode == "bilinear":
        assert native == (not half)


@pytest.mark.parametrize("mode,align,half,size", [("bilinear", True, False, (33, 33)), ("bilinear", False, True, (5, 8)),
                                                  ("nearest", False, False, (4, 1)), ("bilinear", False, False, (1, 6))])
def test_resize_of_one_pixel_is_a_broadcast_by_concats(mode, align, half, size):
    """A 1x1 map resized is its pixel repeated (deeplabv3's image pooling branch): a concat of copies
    per axis it grows along, no resize_image, no interpolation matmul."""
    g = Graph()
    x = g.input(0, (1, 3, 1, 1))
    g.outputs = [g.add(O.Resize(mode, size, align, half), (x,), "rs")]
    low = _check(g, rng.standard_normal((1, 3, 1, 1)).astype(np.float32))
    kinds = {type(n.op) for n in low.nodes if not n.is_constant}
    assert kinds <= {O.Input, O.Reshape, O.Concat}
    assert sum(isinstance(n.op, O.Concat) for n in low.nodes) == sum(d > 1 for d in size)


@pytest.mark.parametrize("shape", [(1, 3, 6, 6), (1, 2, 1, 5), (1, 4, 12, 7), (2, 1, 3, 2)])
def test_bilinear_half_pixel_x2_is_plain_resize_then_mean_pool(shape):
    """Keras UpSampling2D(bilinear) = TF half-pixel x2: nncase's plain x2 resize_image and a 2x2
    stride-1 mean pool padded top/left, equal to the interpreter's TF formula, clamped ends included."""
    n, c, h, w = shape
    g = Graph()
    x = g.input(0, shape)
    g.outputs = [g.add(O.Resize("bilinear", (2 * h, 2 * w), False, True), (x,), "up")]
    low = _check(g, rng.standard_normal(shape).astype(np.float32))
    ops = [type(m.op) for m in low.nodes if not m.is_constant and not isinstance(m.op, O.Input)]
    assert ops == [O.Resize, O.Pool2D]
    assert native_resize_ok(next(m.op for m in low.nodes if isinstance(m.op, O.Resize)), (h, w))


@pytest.mark.parametrize("shape,gate,repeated", [
    ((1, 8, 16, 16), (1, 8, 1, 1), True),  # a squeeze-excite gate: a concat along W, then H
    ((1, 8, 16, 16), (1, 1, 16, 16), True),  # a spatial attention map: one concat along C
    ((1, 32, 112, 112), (1, 32, 1, 1), False),  # the float copy would be 1.5 MiB of working memory
])
def test_a_broadcast_operand_is_repeated_for_the_flat_loop(shape, gate, repeated):
    """nncase's binary kernel loops flat over same-shape operands and computes 4-D offsets per element
    otherwise: the broadcast operand is repeated to the map's shape by concatenations first, unless the
    float copy would exceed lower_to_neutral.EXPAND_BYTES."""
    g = Graph()
    x = g.input(0, shape)
    s = g.add(O.Unary("logistic"), (g.add(O.Reduce("mean", tuple(a for a in (1, 2, 3) if gate[a] == 1), True), (x,)),))
    g.outputs = [g.add(O.Binary("mul"), (x, s), "gated")]
    low = _check(g, rng.standard_normal(shape).astype(np.float32))
    (mul,) = [n for n in low.nodes if isinstance(n.op, O.Binary)]
    assert (mul.inputs[0].shape == mul.inputs[1].shape) == repeated
    assert sum(isinstance(n.op, O.Concat) for n in low.nodes) == (sum(a != b for a, b in zip(shape, gate)) if repeated else 0)


@pytest.mark.parametrize("size,align,half,repeated", [
    ((12, 10), False, False, True),  # YOLO's / FPN's x2 upsampling
    ((12, 10), False, True, True),  # half-pixel centres: still row i // 2
    ((18, 5), False, False, True),  # x3 rows, one column
    ((12, 10), True, False, True),  # align_corners, but rounding 6 -> 12 reads row i // 2 all the same
    ((18, 5), True, False, False),  # align_corners 6 -> 18: row 2 reads row 1, not row 0
    ((9, 10), False, False, False),  # not an integer factor
])
def test_nearest_upsampling_by_an_integer_factor_is_concats_of_copies(size, align, half, repeated):
    """resize_image computes two source indices per output element; repeating each pixel by
    concatenations copies whole rows: a concat per axis that grows, the same values."""
    g = Graph()
    x = g.input(0, (1, 3, 6, 5))
    g.outputs = [g.add(O.Resize("nearest", size, align, half), (x,), "up")]
    low = _check(g, rng.standard_normal((1, 3, 6, 5)).astype(np.float32))
    assert not (repeated and any(isinstance(n.op, (O.Resize, O.MatMul)) for n in low.nodes))
    assert sum(isinstance(n.op, O.Concat) for n in low.nodes) == (sum(o > i for o, i in zip(size, (6, 5))) if repeated else 0)


@pytest.mark.parametrize("pads, swap", [((0, 5), False), ((2, 3), True), ((4, 0), False)])
def test_an_add_of_a_channel_pad_adds_over_the_padded_channels_only(pads, swap):
    """y + pad(x, zeros along channels) -> y's other channels as they are and x + y on x's: no pad and
    no add over zeros left, the same values."""
    g = Graph()
    x = g.input(0, (1, 3, 4, 5))
    y = g.input(1, (1, 3 + sum(pads), 4, 5))
    p = g.add(O.Pad(((0, 0), pads, (0, 0), (0, 0))), (x,), "skip")
    g.outputs = [g.add(O.Binary("add"), (y, p) if swap else (p, y), "a")]
    xs = [rng.standard_normal(t.shape).astype(np.float32) for t in (x, y)]
    want = run(g, xs)[0]
    low = lower_to_neutral(g)
    low.verify("lower_to_neutral")
    np.testing.assert_array_equal(run(low, xs)[0], want)
    assert not any(isinstance(n.op, O.Pad) for n in low.nodes)
    (add,) = [n for n in low.nodes if isinstance(n.op, O.Binary)]
    assert add.shape == (1, 3, 4, 5)
    assert isinstance(low.outputs[0].op, O.Concat) and low.outputs[0].name == "a"


def test_an_add_of_a_pad_along_other_axes_or_with_a_clamp_is_left_whole():
    g = Graph()
    x = g.input(0, (1, 3, 4, 5))
    y = g.input(1, (1, 3, 6, 5))
    p = g.add(O.Pad(((0, 0), (0, 0), (1, 1), (0, 0))), (x,), "rows")
    g.outputs = [g.add(O.Binary("add"), (p, y), "a"),
                 g.add(O.Binary("add", act=(0.0, 6.0)), (p, y), "b")]
    low = lower_to_neutral(g)
    assert all(n.shape == (1, 3, 6, 5) for n in low.nodes if isinstance(n.op, O.Binary))
