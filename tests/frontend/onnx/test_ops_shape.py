"""Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Pad, Slice, Split and the reductions against
onnxruntime, in the attribute (old opset) and input (new opset) forms; folding of static shape chains."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_builder import check_against_ort, model, node, randn

from kcc.ir import ops as O

I64 = np.int64


@pytest.mark.parametrize("shape", [[2, 0, -1], [0, 0, 4, 5], [-1], [6, 20, 1]])
def test_reshape(shape):
    m = model([node("Reshape", ["x", "s"], ["y"])], {"x": [2, 3, 4, 5]}, ["y"], {"s": np.array(shape, I64)}, opset=13)
    check_against_ort(m, [randn(2, 3, 4, 5)])


@pytest.mark.parametrize("axis", [0, 1, 2, 4, -1, -3])
def test_flatten(axis):
    m = model([node("Flatten", ["x"], ["y"], axis=axis)], {"x": [2, 3, 4, 5]}, ["y"], opset=13)
    check_against_ort(m, [randn(2, 3, 4, 5)])


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_forms(opset):
    if opset < 13:
        nodes = [node("Squeeze", ["x"], ["a"], axes=[0, 3]), node("Unsqueeze", ["a"], ["b"], axes=[-1, 1]),
                 node("Squeeze", ["x"], ["c"])]
        inits = {}
    else:
        nodes = [node("Squeeze", ["x", "sq"], ["a"]), node("Unsqueeze", ["a", "uq"], ["b"]), node("Squeeze", ["x"], ["c"])]
        inits = {"sq": np.array([0, 3], I64), "uq": np.array([-1, 1], I64)}
    m = model(nodes, {"x": [1, 3, 4, 1]}, ["b", "c"], inits, opset=opset)
    check_against_ort(m, [randn(1, 3, 4, 1)])


def test_transpose():
    m = model([node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]), node("Transpose", ["x"], ["b"])],
              {"x": [1, 3, 4, 5]}, ["a", "b"], opset=9)
    check_against_ort(m, [randn(1, 3, 4, 5)])


def test_concat_with_constants():
    m = model([node("Concat", ["x", "c", "x"], ["y"], axis=-1)], {"x": [1, 2, 3]}, ["y"], {"c": randn(1, 2, 4)}, opset=9)
    check_against_ort(m, [randn(1, 2, 3)])


@pytest.mark.parametrize("opset,pads,value", [(9, [0, 0, 1, 2, 0, 0, 3, 0], 0.0), (9, [0, 0, 1, 1, 0, 0, 1, 1], 1.5),
                                              (11, [0, 1, 0, 2, 0, 0, 1, 0], -2.0), (13, [0, 0, -1, 2, 0, 0, 1, -2], 0.0),
                                              (18, None, 0.5)])
def test_pad_forms(opset, pads, value):
    if opset < 11:
        m = model([node("Pad", ["x"], ["y"], pads=pads, value=value)], {"x": [1, 2, 4, 5]}, ["y"], opset=opset)
    elif opset < 18:
        m = model([node("Pad", ["x", "p", "v"], ["y"])], {"x": [1, 2, 4, 5]}, ["y"],
                  {"p": np.array(pads, I64), "v": np.array(value, np.float32)}, opset=opset)
    else:  # opset 18: only the given axes
        m = model([node("Pad", ["x", "p", "v", "a"], ["y"])], {"x": [1, 2, 4, 5]}, ["y"],
                  {"p": np.array([1, 2, 0, 1], I64), "v": np.array(value, np.float32), "a": np.array([3, -2], I64)},
                  opset=opset)
    check_against_ort(m, [randn(1, 2, 4, 5)])


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([0, 1], [1, 3], [0, 2], None), ([1], [1000], [1], None), ([-3], [-1], [3], None),
    ([4, 2], [0, -100], [2, 3], [-1, -2]), ([0], [5], [-1], [2]), ([2, 0], [4, 4], None, None)])
@pytest.mark.parametrize("opset", [9, 13])
def test_slice_forms(starts, ends, axes, steps, opset):
    if opset < 10:
        if steps is not None:
            pytest.skip("steps exist from opset 10 on")
        attrs = dict(starts=starts, ends=ends, **({"axes": axes} if axes is not None else {}))
        m = model([node("Slice", ["x"], ["y"], **attrs)], {"x": [3, 4, 5, 6]}, ["y"], opset=opset)
    else:
        inits = {"s": np.array(starts, I64), "e": np.array(ends, I64)}
        ins = ["x", "s", "e"]
        if axes is not None or steps is not None:
            inits["a"] = np.array(axes if axes is not None else list(range(len(starts))), I64)
            ins.append("a")
        if steps is not None:
            inits["t"] = np.array(steps, I64)
            ins.append("t")
        m = model([node("Slice", ins, ["y"])], {"x": [3, 4, 5, 6]}, ["y"], inits, opset=opset)
    check_against_ort(m, [randn(3, 4, 5, 6)])


@pytest.mark.parametrize("opset,form", [(11, "attr"), (11, "equal"), (13, "input"), (18, "num_outputs")])
def test_split_forms(opset, form):
    outs = ["a", "b", "c"]
    if form == "attr":
        n, inits = node("Split", ["x"], outs, axis=1, split=[1, 3, 2]), {}
    elif form == "equal":
        n, inits = node("Split", ["x"], outs, axis=-1), {}
    elif form == "input":
        n, inits = node("Split", ["x", "s"], outs, axis=1), {"s": np.array([2, 2, 2], I64)}
    else:
        n, inits = node("Split", ["x"], outs, axis=2, num_outputs=3), {}
    m = model([n], {"x": [1, 6, 7, 6]}, outs, inits, opset=opset)
    g = check_against_ort(m, [randn(1, 6, 7, 6)])
    assert [o.name for o in g.outputs] == outs


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions_attribute_form(op, keepdims):
    opset = 11 if op == "ReduceSum" else 13  # ReduceSum's axes became an input in 13, the others in 18
    m = model([node(op, ["x"], ["y"], axes=[2, -1], keepdims=keepdims), node(op, ["x"], ["z"], keepdims=keepdims)],
              {"x": [1, 3, 4, 5]}, ["y", "z"], opset=opset)
    check_against_ort(m, [randn(1, 3, 4, 5)])


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_reductions_input_form(op):
    m = model([node(op, ["x", "a"], ["y"], keepdims=1), node(op, ["x"], ["z"], keepdims=0)],
              {"x": [1, 3, 4, 5]}, ["y", "z"], {"a": np.array([1], I64)}, opset=18)
    check_against_ort(m, [randn(1, 3, 4, 5)])


def test_pytorch_view_chain_folds_to_a_reshape():
    """x.view(x.size(0), -1) as PyTorch exports it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape,
    plus Constant / Cast / ConstantOfShape / Div on the shape: all folded, one Reshape remains."""
    nodes = [
        node("Shape", ["x"], ["shape"]),
        node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.INT64, [], [0])),
        node("Gather", ["shape", "zero"], ["n"], axis=0),
        node("Unsqueeze", ["n"], ["n1"], axes=[0]),
        node("Constant", [], ["minus1"], value=helper.make_tensor("m", TensorProto.INT64, [1], [-1])),
        node("Concat", ["n1", "minus1"], ["target"], axis=0),
        node("Cast", ["target"], ["target64"], to=TensorProto.INT64),
        node("Reshape", ["x", "target64"], ["flat"]),
        node("ConstantOfShape", ["n1"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])),
        node("Div", ["flat", "ones"], ["y"]),
    ]
    m = model(nodes, {"x": [1, 3, 4, 5]}, ["y"], opset=11)
    g = check_against_ort(m, [randn(1, 3, 4, 5)])
    kinds = [n.op.kind for n in g.nodes if not n.is_constant]
    assert kinds == ["input", "reshape", "binary"]
    assert all(n.dtype.value == "f32" for n in g.nodes)


def test_initializers_listed_as_inputs_are_constants():
    """Old PyTorch exports (IR 3, opset 9) list every weight as a graph input (nncase #188)."""
    inits = {"w": randn(4, 3, 3, 3), "b": randn(4)}
    m = model([node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], {"x": [1, 3, 6, 6]}, ["y"], inits,
              opset=9, inits_as_inputs=True, ir_version=3)
    g = check_against_ort(m, [randn(1, 3, 6, 6)])
    assert [i.name for i in g.inputs] == ["x"]
    assert any(isinstance(n.op, O.Conv2D) for n in g.nodes)



def test_opset_6_model_is_converted_to_opset_7():
    """Models older than opset 7 go through onnx.version_converter first."""
    inits = {"w": randn(4, 3, 3, 3), "b": randn(4)}
    m = model([node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["y"]),
               node("MaxPool", ["y"], ["p"], kernel_shape=[2, 2], strides=[2, 2])],
              {"x": [1, 3, 6, 6]}, ["p"], inits, opset=6)
    check_against_ort(m, [randn(1, 3, 6, 6)])


def test_a_converter_mistake_is_caught_by_the_shape_check():
    """onnx 1.23's converter turns an opset-6 Add(broadcast=1, axis=1) of a [3] bias into Unsqueeze(axes
    [1, 2, 3]), a [3, 1, 1, 1] operand; the declared shapes catch it and the message says so."""
    m = model([node("Add", ["x", "b"], ["a"], broadcast=1, axis=1)], {"x": [1, 3, 2, 2]}, ["a"], {"b": randn(3)},
              opset=6)
    from kcc.errors import ModelFormatError
    from kcc.frontend.onnx import import_onnx

    with pytest.raises(ModelFormatError, match="after onnx.version_converter raised the model from opset 6"):
        import_onnx(m, "m.onnx")
