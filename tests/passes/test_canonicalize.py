"""canonicalize and each of its passes: the structure they promise, and unchanged evaluator output."""

from __future__ import annotations

import numpy as np
import pytest
import refkit

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.passes.canonicalize import (
    canonicalize,
    fold_channel_shuffle,
    fold_constants,
    fold_nops,
    fold_pad_into_max_pool,
    fold_reshape,
    fold_transpose,
    fuse_clamp,
    fuse_silu,
    remove_dead,
    resize_after_pointwise,
)

rng = np.random.default_rng(5)
NHWC, NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def check(g: Graph, inputs, *passes) -> Graph:
    """Apply `passes` in order; after each, the graph verifies and computes the same outputs."""
    g.verify("build")
    want = run(g, inputs)
    names = [o.name for o in g.outputs]
    for p in passes:
        g = p(g)
        g.verify(p.__name__)
        got = run(g, inputs)
        for a, b in zip(got, want):
            assert a.shape == b.shape, p.__name__
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=p.__name__)
    assert len(g.outputs) == len(names)
    return g


def count(g: Graph, cls) -> int:
    return sum(isinstance(n.op, cls) for n in g.nodes)


def nchw_input(g: Graph, shape=(1, 3, 4, 5), index=0) -> tuple[Node, Node]:
    """An NCHW graph input and its NHWC view, as the importer makes them."""
    x = g.input(index, shape, name=f"x{index}")
    return x, g.add(O.Transpose(NHWC), [x], f"x{index}/nhwc")


# ------------------------------------------------------------------------------ constants
def test_fold_constants_keeps_the_name():
    g = Graph()
    x = g.input(0, (2, 3))
    c = g.add(O.Binary("add"), [g.constant(randn(3, 2)), g.constant(randn(3, 2))], "bias")
    ct = g.add(O.Transpose((1, 0)), [c], "bias_t")
    g.outputs = [g.add(O.Binary("mul"), [x, ct], "y")]
    g = check(g, [randn(2, 3)], fold_constants, remove_dead)
    assert [n.name for n in g.nodes if n.is_constant] == ["bias_t"]


# ------------------------------------------------------------------------------ transposes
@pytest.mark.parametrize("p1,p2", [((0, 2, 3, 1), (0, 3, 1, 2)), ((1, 0, 2, 3), (3, 2, 1, 0)),
                                   ((2, 0, 1), (1, 2, 0)), ((0, 2, 1), (2, 1, 0))])
def test_transposes_compose(p1, p2):
    g = Graph()
    x = g.input(0, (2, 3, 4, 5)[:len(p1)])
    g.outputs = [g.add(O.Transpose(p2), [g.add(O.Transpose(p1), [x])])]
    g = check(g, [randn(*x.shape)], fold_transpose, remove_dead)
    composed = tuple(p1[k] for k in p2)
    assert count(g, O.Transpose) == (composed != tuple(range(len(p1))))


def test_transpose_of_unit_axes_becomes_reshape():
    g = Graph()
    x = g.input(0, (1, 8, 1, 1))
    g.outputs = [g.add(O.Transpose(NHWC), [x])]
    g = check(g, [randn(1, 8, 1, 1)], fold_transpose)
    assert count(g, O.Transpose) == 0 and count(g, O.Reshape) == 1


def _sink_case(make):
    """x (NCHW) -> nhwc -> make(...) -> nchw -> output; make works in NHWC like an imported op."""
    g = Graph()
    x, xh = nchw_input(g)
    y = make(g, xh)
    g.outputs = [g.add(O.Transpose(NCHW), [y], "out") if len(y.shape) == 4 else y]
    return g, [randn(*x.shape)]


SINKABLE = {
    "unary": lambda g, x: g.add(O.Unary("exp"), [x]),
    "clamp": lambda g, x: g.add(O.Clamp(-0.5, 0.5), [x]),
    "leaky_relu": lambda g, x: g.add(O.LeakyRelu(0.1), [x]),
    "softmax": lambda g, x: g.add(O.Softmax(3, 0.7), [x]),
    "l2_normalize": lambda g, x: g.add(O.L2Normalize(3), [x]),
    "add_scalar": lambda g, x: g.add(O.Binary("add"), [x, g.constant(np.array(2.0, np.float32))]),
    "sub_channel_const_first": lambda g, x: g.add(O.Binary("sub"), [g.constant(randn(3)), x]),
    "mul_row_const": lambda g, x: g.add(O.Binary("mul", (0, 1)), [x, g.constant(randn(1, 1, 5, 1))]),
    "div_full_const": lambda g, x: g.add(O.Binary("div"), [x, g.constant(randn(4, 5, 3) + 4)]),
    "add_two_transposed": lambda g, x: g.add(O.Binary("add"), [x, g.add(O.Unary("abs"), [x])]),
    "prelu": lambda g, x: g.add(O.PRelu(), [x, g.constant(randn(1, 1, 3))]),
    "concat_with_const": lambda g, x: g.add(O.Concat(3), [x, g.constant(randn(1, 4, 5, 2)), x]),
    "pad": lambda g, x: g.add(O.Pad(((0, 0), (1, 2), (0, 0), (3, 0)), 1.5), [x]),
    "strided_slice": lambda g, x: g.add(O.StridedSlice((0, 2, 3, 0), (1, 0, 0, 3), (1, -1, -2, 2)), [x]),
    "reduce_keepdims": lambda g, x: g.add(O.Reduce("max", (1, 3), True), [x]),
    "reduce_spatial": lambda g, x: g.add(O.Reduce("mean", (1, 2), False), [x]),
    "reduce_channels": lambda g, x: g.add(O.Reduce("sum", (3,), False), [x]),
    "reduce_height": lambda g, x: g.add(O.Reduce("min", (1,), False), [x]),
    "chain": lambda g, x: g.add(O.Clamp(0, 6), [g.add(O.Binary("add"), [g.add(O.LeakyRelu(0.2), [x]),
                                                                        g.constant(randn(3))])]),
}


@pytest.mark.parametrize("case", sorted(SINKABLE))
def test_transposes_sink_through_layout_free_ops_and_cancel(case):
    g, inputs = _sink_case(SINKABLE[case])
    g = check(g, inputs, fold_transpose, fold_reshape, remove_dead)
    # NHWC [1,4,5,3] min over H is [1,5,3]; from NCHW that takes one real transpose (of the result)
    assert count(g, O.Transpose) == (case == "reduce_height")


def test_transpose_stays_before_a_flattening_reshape():
    g = Graph()
    x, xh = nchw_input(g)
    g.outputs = [g.add(O.Reshape((1, 60)), [xh])]
    g = check(g, [randn(1, 3, 4, 5)], canonicalize)
    assert count(g, O.Transpose) == 1


def test_flatten_before_matmul_permutes_weight_rows():
    g = Graph()
    x, xh = nchw_input(g)
    flat = g.add(O.Reshape((1, 60)), [xh])
    g.outputs = [g.add(O.MatMul(), [flat, g.constant(randn(60, 7)), g.constant(randn(7))], "fc")]
    g = check(g, [randn(1, 3, 4, 5)], canonicalize)
    assert count(g, O.Transpose) == 0 and g.outputs[0].name == "fc"


def test_fan_out_transposes_merge_again():
    """T feeds two element-wise branches that are added: one transpose at the end, then none."""
    g = Graph()
    x, xh = nchw_input(g)
    a, b = g.add(O.Unary("exp"), [xh]), g.add(O.Clamp(0, 1), [xh])
    g.outputs = [g.add(O.Transpose(NCHW), [g.add(O.Binary("add"), [a, b], "sum")])]
    g = check(g, [randn(1, 3, 4, 5)], canonicalize)
    assert count(g, O.Transpose) == 0 and g.outputs[0].name == "sum"


def test_mismatched_perms_do_not_sink():
    g = Graph()
    x = g.input(0, (2, 2, 2, 2))
    a, b = g.add(O.Transpose(NHWC), [x]), g.add(O.Transpose(NCHW), [x])
    g.outputs = [g.add(O.Binary("add"), [a, b])]
    g = check(g, [randn(2, 2, 2, 2)], fold_transpose)
    assert count(g, O.Transpose) == 2


# ------------------------------------------------------------------------------ reshapes and no-ops
def test_fold_reshape():
    g = Graph()
    x = g.input(0, (2, 6))
    r = g.add(O.Reshape((3, 4)), [g.add(O.Reshape((12,)), [x])])
    g.outputs = [g.add(O.Reshape((2, 6)), [r], "back"), g.add(O.Reshape((4, 3)), [r], "other")]
    g = check(g, [randn(2, 6)], fold_reshape, remove_dead)
    assert g.outputs[0] is g.inputs[0] and g.outputs[1].inputs == (g.inputs[0],)


def test_fold_nops():
    g = Graph()
    x = g.input(0, (2, 3))
    y = g.add(O.Pad(((0, 0), (0, 0))), [x])
    y = g.add(O.StridedSlice((0, 0), (2, 3), (1, 1)), [y])
    y = g.add(O.Clamp(-np.inf, np.inf), [y])
    g.outputs = [g.add(O.Unary("neg"), [y])]
    g = check(g, [randn(2, 3)], fold_nops, remove_dead)
    assert len(g.nodes) == 2


@pytest.mark.parametrize("mode,align,half", [("bilinear", False, False), ("bilinear", True, False),
                                             ("bilinear", False, True), ("nearest", False, False),
                                             ("nearest", True, False), ("nearest", False, True)])
def test_fold_nops_resize_to_own_size(mode, align, half):
    g = Graph()
    x = g.input(0, (1, 2, 5, 7))
    same = g.add(O.Resize(mode, (5, 7), align, half), [x])
    bigger = g.add(O.Resize(mode, (6, 7), align, half), [x])
    g.outputs = [g.add(O.Unary("neg"), [same]), g.add(O.Unary("neg"), [bigger])]
    g = check(g, [randn(1, 2, 5, 7)], fold_nops, remove_dead)
    assert g.outputs[0].inputs == (g.inputs[0],)  # the same-size resize is gone (check: same values)
    assert isinstance(g.outputs[1].inputs[0].op, O.Resize)  # a real one stays


def _conv(g: Graph, x: Node, act=O.NO_CLAMP, name="conv") -> Node:
    return g.add(O.Conv2D(padding=((1, 1), (1, 1)), act=act), [x, g.constant(randn(4, 3, 3, 3)),
                                                                 g.constant(randn(4))], name)


@pytest.mark.parametrize("act,lo,hi,fused", [(O.NO_CLAMP, 0, 6, (0, 6)), ((0, np.inf), -1, 1, (0, 1)),
                                             ((0, 1), 2, 3, None)])
def test_fuse_clamp(act, lo, hi, fused):
    g = Graph()
    x = g.input(0, (1, 3, 5, 5))
    g.outputs = [g.add(O.Clamp(lo, hi), [_conv(g, x, act)], "relu")]
    g = check(g, [randn(1, 3, 5, 5) * 3], fuse_clamp, remove_dead)
    if fused:
        assert count(g, O.Clamp) == 0 and g.outputs[0].op.act == fused and g.outputs[0].name == "relu"
    else:
        assert count(g, O.Clamp) == 1


def test_clamp_not_fused_into_shared_producer():
    g = Graph()
    x = g.input(0, (1, 3, 5, 5))
    c = _conv(g, x)
    g.outputs = [g.add(O.Clamp(0, 6), [c]), c]
    g = check(g, [randn(1, 3, 5, 5)], fuse_clamp)
    assert count(g, O.Clamp) == 1


@pytest.mark.parametrize("swap", [False, True])
def test_fuse_silu_either_operand_order(swap):
    g = Graph()
    x = g.input(0, (1, 3, 5, 5))
    c = _conv(g, x)
    s = g.add(O.Unary("logistic"), [c], "sigmoid")
    g.outputs = [g.add(O.Binary("mul"), [s, c] if swap else [c, s], "swish")]
    g = check(g, [randn(1, 3, 5, 5) * 4], fuse_silu, remove_dead)
    (y,) = g.outputs
    assert y.op == O.Unary("silu") and y.inputs == (c,) and y.name == "swish"
    assert count(g, O.Binary) == 0 and not any(n.op == O.Unary("logistic") for n in g.nodes)


@pytest.mark.parametrize("case", ["logistic_read_twice", "logistic_is_output", "other_operand", "mul_clamped"])
def test_fuse_silu_leaves_other_products(case):
    g = Graph()
    x = g.input(0, (1, 3, 5, 5))
    c = _conv(g, x)
    s = g.add(O.Unary("logistic"), [c])
    other = _conv(g, x) if case == "other_operand" else c
    y = g.add(O.Binary("mul", act=(0.0, 6.0) if case == "mul_clamped" else O.NO_CLAMP), [other, s])
    g.outputs = [y] + ([s] if case == "logistic_is_output" else [])
    if case == "logistic_read_twice":
        g.outputs.append(g.add(O.Unary("neg"), [s]))
    g = check(g, [randn(1, 3, 5, 5)], fuse_silu, remove_dead)
    assert not any(n.op == O.Unary("silu") for n in g.nodes) and count(g, O.Binary) == 1


def test_remove_dead_keeps_inputs():
    g = Graph()
    x, unused = g.input(0, (2,)), g.input(1, (3,))
    g.add(O.Unary("exp"), [x])
    g.outputs = [g.add(O.Unary("neg"), [x])]
    g = remove_dead(g)
    assert len(g.nodes) == 3 and unused in g.nodes


# ------------------------------------------------------------------------------ whole pipeline on real graphs
SHIPPED = ["digits_mbnet32_rgb/digits_mbnet32_rgb.tflite", "digits_cnn16_gray/digits_cnn16_gray.tflite"]
KIT = ["hand_recrop_256/hand_recrop.tflite", "ulffd_landmark_320x240/ulffd_landmark.tflite"]


@pytest.mark.parametrize("rel", SHIPPED)
def test_every_pass_preserves_real_model_outputs(rel):
    _every_pass_preserves_outputs(refkit.SHIPPED_MODELS / rel)


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("rel", KIT)
def test_every_pass_preserves_kit_model_outputs(rel):
    _every_pass_preserves_outputs(refkit.MODELS / rel)


def _every_pass_preserves_outputs(path):
    from kcc.frontend import import_tflite

    g = import_tflite(path)
    inputs = [randn(*n.shape) for n in g.inputs]
    g = check(g, inputs, fold_constants, fold_transpose, fold_reshape, fold_nops, fuse_clamp, remove_dead,
              canonicalize)
    n = len(g.nodes)
    assert len(canonicalize(g).nodes) == n  # a fixpoint


def _shuffled(g: Graph, x: Node, groups: int, swap=(0, 1, 2, 4, 3)) -> Node:
    """TFLite's channel shuffle on NCHW x: to NHWC, reshape to [1, H, W, groups, C/groups], transpose,
    reshape back, to NCHW."""
    _, c, h, w = x.shape
    t = g.add(O.Transpose(NHWC), [x], "shuffle/nhwc")
    r = g.add(O.Reshape((1, h, w, groups, c // groups)), [t], "shuffle/split")
    u = g.add(O.Transpose(swap), [r], "shuffle/swap")
    v = g.add(O.Reshape((1, h, w, c)), [u], "shuffle/merge")
    return g.add(O.Transpose(NCHW), [v], "shuffle")


@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_becomes_a_one_hot_1x1_conv(groups):
    """ShuffleNet's shuffle goes through 5-D tensors, which kmodel v4 cannot hold: the chain becomes one
    1x1 conv of x with one-hot weights (channel g*i + j of the result is channel j*(C/g) + i of x),
    under the chain's last name, and computes the same."""
    g = Graph()
    x = g.input(0, (1, 8, 3, 4), name="x")
    g.outputs = [g.add(O.Unary("abs"), [_shuffled(g, x, groups)], "y")]
    g = check(g, [randn(1, 8, 3, 4)], fold_channel_shuffle, remove_dead)
    assert count(g, O.Reshape) == count(g, O.Transpose) == 0
    (conv,) = [n for n in g.nodes if isinstance(n.op, O.Conv2D)]
    assert conv.name == "shuffle" and conv.inputs[0] is g.inputs[0]
    w = conv.inputs[1].data[:, :, 0, 0]
    assert np.array_equal(w.sum(axis=0), np.ones(8)) and np.array_equal(w.sum(axis=1), np.ones(8))
    assert w[1, 8 // groups] == 1.0  # the second output channel is the second group's first


def test_a_5d_chain_that_moves_pixels_stays():
    """A chain through 5-D tensors that moves values across pixels is no channel permutation."""
    g = Graph()
    x = g.input(0, (1, 8, 4, 4), name="x")
    t = g.add(O.Transpose(NHWC), [x])
    r = g.add(O.Reshape((1, 4, 4, 2, 4)), [t])
    u = g.add(O.Transpose((0, 2, 1, 3, 4)), [r])  # swaps H and W
    v = g.add(O.Reshape((1, 4, 4, 8)), [u])
    g.outputs = [g.add(O.Transpose(NCHW), [v], "y")]
    g = check(g, [randn(1, 8, 4, 4)], fold_channel_shuffle)
    assert count(g, O.Conv2D) == 0 and count(g, O.Reshape) == 2


@pytest.mark.parametrize("act,value,pad,folds", [
    ((0.0, np.inf), 0.0, (1, 1), True),  # Keras' ZeroPadding2D(1) before MaxPool2D(3, 2) on a ReLU map
    (O.NO_CLAMP, 0.0, (1, 1), False),  # a negative map: a zero could win
    ((0.0, 6.0), 0.5, (1, 1), False),  # a pad value other than 0
    ((0.0, 6.0), 0.0, (3, 3), False),  # a window of padding only
])
def test_a_zero_pad_of_a_relu_map_becomes_the_max_pools_padding(act, value, pad, folds):
    g = Graph()
    x = g.input(0, (1, 4, 8, 8), name="x")
    r = g.add(O.Conv2D(act=act), [x, g.constant(randn(4, 4, 1, 1)), g.constant(randn(4))], "relu")
    p = g.add(O.Pad(((0, 0), (0, 0), pad, pad), value), [r], "pad")
    g.outputs = [g.add(O.Pool2D("max", (3, 3), (2, 2)), [p], "pool")]
    g = check(g, [randn(1, 4, 8, 8)], fold_pad_into_max_pool, remove_dead)
    (pool,) = [n for n in g.nodes if isinstance(n.op, O.Pool2D)]
    assert (count(g, O.Pad) == 0 and pool.op.padding == (pad, pad) and pool.inputs[0].name == "relu") == folds


@pytest.mark.parametrize("mode,align,half,oc,act,moves", [
    ("bilinear", False, True, 4, O.NO_CLAMP, True),  # BlazePalm's upsampling into a narrowing 1x1 conv
    ("bilinear", True, False, 4, O.NO_CLAMP, True),
    ("nearest", False, False, 4, O.NO_CLAMP, True),
    ("bilinear", False, True, 8, O.NO_CLAMP, False),  # as many channels: the resize would not shrink
    ("bilinear", False, True, 4, (0.0, 6.0), False),  # a clamp after a bilinear resize is not before it
])
def test_a_resize_into_a_narrowing_1x1_conv_runs_after_it(mode, align, half, oc, act, moves):
    g = Graph()
    x = g.input(0, (1, 8, 5, 6), name="x")
    r = g.add(O.Resize(mode, (10, 12), align, half), [x], "up")
    conv = g.add(O.Conv2D(act=act), [r, g.constant(randn(oc, 8, 1, 1)), g.constant(randn(oc))], "conv")
    g.outputs = [g.add(O.Unary("neg"), [conv], "out")]
    # every resized pixel is a weighted mean of the input's (bilinear, bias included): same values
    g = check(g, [randn(1, 8, 5, 6) * 4], resize_after_pointwise, remove_dead)
    (resize,) = [n for n in g.nodes if isinstance(n.op, O.Resize)]
    assert (resize.inputs[0].op.__class__ is O.Conv2D) == moves
    if moves:  # the conv's name stays on the value it computed; the resize reads 5x6 maps of oc channels
        assert resize.name == "conv" and resize.inputs[0].shape == (1, oc, 5, 6) and resize.op.size == (10, 12)


def test_a_resize_read_twice_stays_before_its_conv():
    g = Graph()
    x = g.input(0, (1, 8, 5, 6), name="x")
    r = g.add(O.Resize("bilinear", (10, 12)), [x], "up")
    conv = g.add(O.Conv2D(), [r, g.constant(randn(4, 8, 1, 1)), g.constant(randn(4))], "conv")
    g.outputs = [conv, g.add(O.Unary("neg"), [r], "other")]
    g = check(g, [randn(1, 8, 5, 6)], resize_after_pointwise, remove_dead)
    assert g.outputs[0].inputs[0] is r
