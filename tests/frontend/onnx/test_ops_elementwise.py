"""Arithmetic, activations, Softmax and the identities against onnxruntime, in each opset form."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_builder import check_against_ort, model, node, randn

from kcc.ir import ops as O


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("b_shape,const", [([1, 3, 4, 5], False), ([3, 1, 1], True), ([5], False), ([], True)])
def test_binary_broadcast(op, b_shape, const):
    b = np.abs(randn(*b_shape)) + 0.5
    if const:
        m = model([node(op, ["a", "b"], ["y"])], {"a": [1, 3, 4, 5]}, ["y"], {"b": b}, opset=7)
        check_against_ort(m, [randn(1, 3, 4, 5)])
    else:
        m = model([node(op, ["a", "b"], ["y"])], {"a": [1, 3, 4, 5], "b": b_shape}, ["y"], opset=14)
        check_against_ort(m, [randn(1, 3, 4, 5), b])


@pytest.mark.parametrize("op", ["Max", "Min", "Sum", "Mean"])
def test_variadic(op):
    m = model([node(op, ["a", "b", "c"], ["y"])], {"a": [2, 3], "b": [2, 3], "c": [3]}, ["y"], opset=13)
    check_against_ort(m, [randn(2, 3), randn(2, 3), randn(3)])


@pytest.mark.parametrize("op", ["Abs", "Ceil", "Cos", "Exp", "Floor", "Neg", "Sin", "Tanh", "Sigmoid", "Round"])
def test_unary(op):
    m = model([node(op, ["x"], ["y"])], {"x": [2, 3, 4]}, ["y"], opset=13)
    check_against_ort(m, [randn(2, 3, 4, scale=2.0)])


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_unary_positive(op):
    m = model([node(op, ["x"], ["y"])], {"x": [2, 3, 4]}, ["y"], opset=13)
    check_against_ort(m, [np.abs(randn(2, 3, 4)) + 0.1])


@pytest.mark.parametrize("e", [2.0, 0.5, 1.0, -1.0])
def test_pow_by_a_constant(e):
    m = model([node("Pow", ["x", "e"], ["y"])], {"x": [2, 5]}, ["y"], {"e": np.array(e, np.float32)}, opset=13)
    check_against_ort(m, [np.abs(randn(2, 5)) + 0.1])


def test_relu_leaky_relu_prelu():
    m = model([node("Relu", ["x"], ["a"]), node("LeakyRelu", ["x"], ["b"]), node("LeakyRelu", ["x"], ["c"], alpha=0.3),
               node("PRelu", ["x", "s"], ["d"]), node("PRelu", ["x", "t"], ["e"])],
              {"x": [1, 3, 4, 4]}, ["a", "b", "c", "d", "e"], {"s": randn(3, 1, 1), "t": randn(1)}, opset=9)
    check_against_ort(m, [randn(1, 3, 4, 4)])


@pytest.mark.parametrize("opset,attrs,inits", [
    (7, {"min": -0.5, "max": 0.7}, {}),
    (7, {"max": 6.0}, {}),
    (11, {}, {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}),
    (13, {}, {"lo": np.array(-1.0, np.float32)}),
    (13, {}, {"hi": np.array(0.25, np.float32)}),
])
def test_clip_forms(opset, attrs, inits):
    ins = ["x", "lo" if "lo" in inits else "", "hi" if "hi" in inits else ""] if opset >= 11 else ["x"]
    while ins[-1] == "":
        ins.pop()
    m = model([node("Clip", ins, ["y"], **attrs)], {"x": [2, 8]}, ["y"], inits, opset=opset)
    g = check_against_ort(m, [randn(2, 8, scale=3.0)])
    assert any(isinstance(n.op, O.Clamp) for n in g.nodes)


def test_hard_sigmoid_hard_swish_silu():
    m = model([node("HardSigmoid", ["x"], ["a"]), node("HardSigmoid", ["x"], ["b"], alpha=0.3, beta=0.4),
               node("HardSwish", ["x"], ["c"]), node("Sigmoid", ["x"], ["s"]), node("Mul", ["x", "s"], ["d"])],
              {"x": [1, 2, 5, 5]}, ["a", "b", "c", "d"], opset=14)
    g = check_against_ort(m, [randn(1, 2, 5, 5, scale=4.0)])
    assert g.outputs[3].op == O.Unary("silu") and g.outputs[3].inputs[0] is g.inputs[0]  # fuse_silu


@pytest.mark.parametrize("opset,axis,shape", [(11, 1, [2, 3, 4]), (11, 2, [2, 3, 4]), (11, 0, [2, 3]),
                                              (11, -1, [2, 3, 4]), (9, 1, [1, 5, 1, 1]), (13, 1, [2, 3, 4]),
                                              (13, -1, [2, 3, 4]), (13, 0, [2, 3])])
def test_softmax_axis_semantics(opset, axis, shape):
    m = model([node("Softmax", ["x"], ["y"], axis=axis)], {"x": shape}, ["y"], opset=opset)
    check_against_ort(m, [randn(*shape, scale=2.0)])


def test_softmax_default_axis_per_opset():
    for opset in (9, 13):
        m = model([node("Softmax", ["x"], ["y"])], {"x": [2, 3, 4]}, ["y"], opset=opset)
        check_against_ort(m, [randn(2, 3, 4)])


@pytest.mark.parametrize("opset", [7, 12, 13])
def test_identity_dropout_cast(opset):
    nodes = [node("Identity", ["x"], ["a"]), node("Dropout", ["a"], ["b"]), node("Relu", ["b"], ["c"]),
             node("Cast", ["c"], ["d"], to=1), node("Identity", ["d"], ["out"])]
    m = model(nodes, {"x": [2, 3]}, ["out"], opset=opset)
    g = check_against_ort(m, [randn(2, 3)])
    assert [o.name for o in g.outputs] == ["out"]  # the output keeps its ONNX name through the identities
