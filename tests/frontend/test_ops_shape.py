"""Data-movement ops against TFLite: reshape family, transpose, concat, pack/unpack, pad, and the
slicing ops (strided slice masks, slice, split)."""

from __future__ import annotations

import numpy as np
import pytest
from tflite_builder import TfliteBuilder, check_against_tflite

from kcc.ir import ops as O

rng = np.random.default_rng(3)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def i32(*values):
    return np.array(values, np.int32)


def _model(opcode, x_shape, *const_inputs, n_outputs=1, out_shape=None, **opts):
    b = TfliteBuilder()
    ins = [b.input(list(x_shape))] + [b.const(c) for c in const_inputs]
    out = b.op(opcode, ins, n_outputs=n_outputs, out_shape=out_shape, **opts)
    b.output(*(out if n_outputs > 1 else [out]))
    return b


@pytest.mark.parametrize("target", [(1, -1), (2, 60), (4, 5, 3, 2), (-1,)])
def test_reshape_with_shape_input(target):
    check_against_tflite(_model("RESHAPE", (2, 4, 5, 3), i32(*target)), [randn(2, 4, 5, 3)])


def test_reshape_with_new_shape_option_only():
    b = TfliteBuilder()
    b.output(b.op("RESHAPE", [b.input([1, 2, 2, 3])], new_shape=[1, -1]))
    check_against_tflite(b, [randn(1, 2, 2, 3)])


@pytest.mark.parametrize("dims", [[], [0, 2], [-2]])
def test_squeeze(dims):
    check_against_tflite(_model("SQUEEZE", (1, 4, 1, 3), squeeze_dims=dims), [randn(1, 4, 1, 3)])


@pytest.mark.parametrize("axis", [0, 1, -1, 3])
def test_expand_dims(axis):
    check_against_tflite(_model("EXPAND_DIMS", (2, 4, 3), i32(axis)), [randn(2, 4, 3)])


@pytest.mark.parametrize("perm", [(0, 3, 1, 2), (3, 2, 1, 0), (0, 1, 2, 3), (1, 0, 2, 3)])
def test_transpose(perm):
    check_against_tflite(_model("TRANSPOSE", (2, 3, 4, 5), i32(*perm)), [randn(2, 3, 4, 5)])


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_concatenation(axis):
    b = TfliteBuilder()
    shapes = [[2, 3, 4, 5], [2, 3, 4, 5]]
    shapes[1][axis] = 2
    x, y = b.input(shapes[0]), b.input(shapes[1])
    c = b.const(randn(*shapes[0]))
    b.output(b.op("CONCATENATION", [x, c, y], axis=axis))
    check_against_tflite(b, [randn(*shapes[0]) * 5, randn(*shapes[1]) * 5])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_pack_unpack(axis):
    b = TfliteBuilder()
    x, y = b.input([3, 4]), b.input([3, 4])
    packed = b.op("PACK", [x, y], values_count=2, axis=axis)
    parts = b.op("UNPACK", [packed], n_outputs=2, num=2, axis=axis)
    b.output(packed, *parts)
    check_against_tflite(b, [randn(3, 4), randn(3, 4)])


@pytest.mark.parametrize("pads", [[[0, 0], [1, 1], [2, 1], [0, 0]], [[0, 0], [0, 0], [0, 0], [3, 5]],
                                  [[1, 0], [0, 2], [0, 0], [1, 1]]])
def test_pad(pads):
    """Channel-axis pads (digits_mbnet32_rgb) as well as spatial and batch ones."""
    check_against_tflite(_model("PAD", (1, 4, 5, 3), np.array(pads, np.int32)), [randn(1, 4, 5, 3)])


def test_padv2_value():
    b = TfliteBuilder()
    x = b.input([1, 3, 3, 2])
    b.output(b.op("PADV2", [x, b.const(np.array([[0, 0], [1, 2], [2, 1], [0, 1]], np.int32)),
                            b.const(np.array([-7.5], np.float32))]))
    check_against_tflite(b, [randn(1, 3, 3, 2)])


def test_pad_int64_paddings():
    check_against_tflite(_model("PAD", (2, 3), np.array([[1, 0], [0, 2]], np.int64)), [randn(2, 3)])


SLICES = [  # (begin, end, strides, masks)
    ([0, 1, 1, 0], [1, 3, 4, 3], [1, 1, 1, 1], {}),
    ([0, 0, 0, 1], [1, 4, 5, 3], [1, 2, 2, 1], {}),
    ([0, -1, -1, 0], [1, -5, -6, 3], [1, -1, -2, 1], {}),
    ([0, 3, 0, 0], [0, 0, 0, 0], [1, -1, 1, 1], {"begin_mask": 0b0001, "end_mask": 0b1111}),
    ([0, 1, 2, 0], [0, 3, 0, 0], [1, 1, 1, 1], {"begin_mask": 0b1001, "end_mask": 0b1101}),
    ([0, 2, 0, 1], [1, 3, 5, 2], [1, 1, 1, 1], {"shrink_axis_mask": 0b1010}),
    ([0, -1], [1, 0], [1, 1], {"shrink_axis_mask": 0b10}),
    ([0, 1], [0, 3], [1, 1], {"ellipsis_mask": 0b01}),
    ([0, 0, 1], [0, 0, 3], [1, 1, 1], {"new_axis_mask": 0b001, "ellipsis_mask": 0b010}),
    ([0, 0, 1], [1, 0, 3], [1, 1, 1], {"new_axis_mask": 0b010}),
    ([0, -3], [1, -1], [1, 1], {}),
    ([0, 0, 10, 0], [1, 4, -20, 3], [1, 1, -1, 1], {}),
    ([0, 1, 0, 0], [1, 2, 5, 3], [1, 1, 1, 1], {"offset": True}),
]


@pytest.mark.parametrize("begin,end,strides,masks", SLICES)
def test_strided_slice(begin, end, strides, masks):
    model = _model("STRIDED_SLICE", (1, 4, 5, 3), i32(*begin), i32(*end), i32(*strides), **masks)
    check_against_tflite(model, [randn(1, 4, 5, 3)])


def test_strided_slice_keeps_tensor_names():
    """hand_recrop's STRIDED_SLICE: the slice node carries the tflite tensor name."""
    b = TfliteBuilder()
    x = b.input([1, 4, 4, 8])
    y = b.op("STRIDED_SLICE", [x, b.const(i32(0, 0, 0, 0)), b.const(i32(1, 4, 4, 4)), b.const(i32(1, 1, 1, 1))],
             name="crop")
    b.output(y)
    g = check_against_tflite(b, [randn(1, 4, 4, 8)])
    assert [n.name for n in g.nodes if isinstance(n.op, O.StridedSlice)] == ["crop"]


@pytest.mark.parametrize("begin,size", [([0, 1, 2, 0], [1, 2, 3, 3]), ([0, 0, 0, 1], [-1, -1, -1, 2])])
def test_slice(begin, size):
    out_shape = [d - b if n == -1 else n for b, n, d in zip(begin, size, (1, 4, 5, 3))]
    model = _model("SLICE", (1, 4, 5, 3), i32(*begin), i32(*size), out_shape=out_shape)
    check_against_tflite(model, [randn(1, 4, 5, 3)])


@pytest.mark.parametrize("axis,n", [(3, 3), (1, 2), (-2, 5)])
def test_split(axis, n):
    b = TfliteBuilder()
    x = b.input([1, 4, 5, 3])
    outs = b.op("SPLIT", [b.const(i32(axis)), x], n_outputs=n, num_splits=n)
    b.output(*outs)
    check_against_tflite(b, [randn(1, 4, 5, 3)])


@pytest.mark.parametrize("sizes,axis", [([1, 2, 2], 2), ([2, -1], 1), ([3], -1)])
def test_split_v(sizes, axis):
    b = TfliteBuilder()
    x = b.input([1, 4, 5, 3])
    outs = b.op("SPLIT_V", [x, b.const(i32(*sizes)), b.const(i32(axis))], n_outputs=len(sizes),
                num_splits=len(sizes))
    b.output(*(outs if len(sizes) > 1 else [outs]))
    check_against_tflite(b, [randn(1, 4, 5, 3)])


def test_graph_with_several_inputs_and_outputs_keeps_order_and_names():
    b = TfliteBuilder()
    x, y = b.input([1, 4, 4, 2], name="img"), b.input([3], name="vec")
    s = b.op("ADD", [x, b.const(randn(2))], name="shifted")
    m = b.op("MUL", [y, y], name="sq")
    b.output(m, s, x)
    g = check_against_tflite(b, [randn(1, 4, 4, 2), randn(3)])
    assert [n.name for n in g.inputs] == ["img", "vec"]
    assert g.inputs[0].shape == (1, 2, 4, 4)
    assert g.outputs[0].name == "sq" and g.outputs[1].name.startswith("shifted")


def test_concatenation_fused_activation_becomes_clamp():
    """TFLite's float kernel rejects a fused activation on CONCATENATION, but the schema allows it
    (and quantized converters emit it): kcc applies it as a Clamp; checked against numpy."""
    from kcc.eval.interpreter import run
    from kcc.frontend import import_tflite

    b = TfliteBuilder()
    x, y = b.input([1, 2, 2, 3]), b.input([1, 2, 2, 1])
    b.output(b.op("CONCATENATION", [x, y], axis=3, fused_activation_function="RELU6", out_shape=[1, 2, 2, 4]))
    g = import_tflite(b.build())
    xs = [randn(1, 2, 2, 3) * 8, randn(1, 2, 2, 1) * 8]
    got = run(g, [v.transpose(0, 3, 1, 2) for v in xs])[0].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, np.clip(np.concatenate(xs, axis=3), 0, 6))
