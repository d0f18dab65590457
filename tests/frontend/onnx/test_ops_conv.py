"""Conv, ConvTranspose, Gemm, MatMul and BatchNormalization against onnxruntime (float IR, as imported
and canonicalized)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_builder import check_against_ort, model, node, randn

from kcc.ir import ops as O


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 2, 1]])
@pytest.mark.parametrize("k", [1, 3])
def test_conv_stride_pads(stride, pads, k):
    m = model([node("Conv", ["x", "w", "b"], ["y"], strides=[stride, stride], pads=pads)], {"x": [1, 3, 9, 8]},
              ["y"], {"w": randn(5, 3, k, k), "b": randn(5)})
    check_against_ort(m, [randn(1, 3, 9, 8)])


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_auto_pad(auto_pad, stride):
    m = model([node("Conv", ["x", "w"], ["y"], strides=[stride, stride], auto_pad=auto_pad)], {"x": [1, 2, 8, 7]},
              ["y"], {"w": randn(3, 2, 4, 3)}, opset=11)
    check_against_ort(m, [randn(1, 2, 8, 7)])


@pytest.mark.parametrize("group,mult", [(2, 1), (4, 1), (4, 2)])
@pytest.mark.parametrize("dilation", [1, 2])
def test_conv_groups_and_dilation(group, mult, dilation):
    c = 4
    m = model([node("Conv", ["x", "w", "b"], ["y"], group=group, dilations=[dilation, dilation], pads=[2, 2, 2, 2])],
              {"x": [1, c, 10, 10]}, ["y"], {"w": randn(group * mult, c // group, 3, 3), "b": randn(group * mult)},
              opset=9)
    g = check_against_ort(m, [randn(1, c, 10, 10)])
    (conv,) = [n for n in g.nodes if isinstance(n.op, O.Conv2D)]
    assert conv.op.groups == group and conv.op.dilation == (dilation, dilation)


def test_conv_1d():
    m = model([node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1], strides=[2])], {"x": [1, 3, 17]}, ["y"],
              {"w": randn(4, 3, 3), "b": randn(4)})
    check_against_ort(m, [randn(1, 3, 17)])


@pytest.mark.parametrize("stride,pads,out_pad", [(1, [0, 0, 0, 0], [0, 0]), (2, [1, 1, 1, 1], [0, 0]),
                                                 (2, [0, 1, 1, 0], [1, 1]), (3, [1, 0, 1, 0], [2, 1])])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(stride, pads, out_pad, group):
    m = model([node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[stride, stride], pads=pads,
                    output_padding=out_pad, group=group)],
              {"x": [1, 4, 5, 6]}, ["y"], {"w": randn(4, 6 // group, 3, 3), "b": randn(6)}, opset=11)
    check_against_ort(m, [randn(1, 4, 5, 6)])


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_conv_transpose_output_shape_and_auto_pad(auto_pad):
    m = model([node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_shape=[9, 11], auto_pad=auto_pad)],
              {"x": [1, 2, 5, 6]}, ["y"], {"w": randn(2, 3, 3, 3)}, opset=11)
    check_against_ort(m, [randn(1, 2, 5, 6)])
    m = model([node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], auto_pad=auto_pad)],
              {"x": [1, 2, 5, 6]}, ["y"], {"w": randn(2, 3, 4, 4)}, opset=11)
    check_against_ort(m, [randn(1, 2, 5, 6)])


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, [6], [1, 6], [3, 6], [3, 1]])
def test_gemm(trans_a, trans_b, c_shape):
    a_shape = [5, 3] if trans_a else [3, 5]
    inits = {"b": randn(*([6, 5] if trans_b else [5, 6]))}
    ins = ["a", "b"]
    if c_shape is not None:
        inits["c"] = randn(*c_shape)
        ins.append("c")
    m = model([node("Gemm", ins, ["y"], transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0)], {"a": a_shape}, ["y"],
              inits, opset=11)
    check_against_ort(m, [randn(*a_shape)])


def test_gemm_with_run_time_c():
    m = model([node("Gemm", ["a", "b", "c"], ["y"], transB=1, beta=0.5)], {"a": [2, 4], "c": [2, 3]}, ["y"],
              {"b": randn(3, 4)}, opset=9)
    check_against_ort(m, [randn(2, 4), randn(2, 3)])


@pytest.mark.parametrize("a_shape,b_shape", [([2, 5], [5, 3]), ([1, 4, 5], [5, 3]), ([2, 3, 4, 5], [5, 2]),
                                             ([5], [5, 3]), ([2, 5], [5])])
def test_matmul(a_shape, b_shape):
    m = model([node("MatMul", ["a", "b"], ["y"])], {"a": a_shape}, ["y"], {"b": randn(*b_shape)})
    check_against_ort(m, [randn(*a_shape)])


def test_matmul_of_two_run_time_tensors_is_refused():
    from kcc.errors import UnsupportedModelError
    from kcc.frontend.onnx import import_onnx

    m = model([node("MatMul", ["a", "b"], ["y"])], {"a": [2, 5], "b": [5, 3]}, ["y"])
    with pytest.raises(UnsupportedModelError, match="MatMul 'matmul_y': both operands are computed at run time"):
        import_onnx(m, "m.onnx")


def _bn_inits(c):
    return {"s": randn(c), "bias": randn(c), "mean": randn(c), "var": np.abs(randn(c)) + 0.1}


@pytest.mark.parametrize("opset", [7, 9, 15])
def test_batchnorm_after_conv_folds_into_it(opset):
    inits = {"w": randn(4, 3, 3, 3), "b": randn(4), **_bn_inits(4)}
    m = model([node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
               node("BatchNormalization", ["c", "s", "bias", "mean", "var"], ["y"], epsilon=1e-3),
               node("Relu", ["y"], ["z"])], {"x": [1, 3, 6, 6]}, ["z"], inits, opset=opset)
    g = check_against_ort(m, [randn(1, 3, 6, 6)])
    assert [n.op.kind for n in g.nodes if not n.is_constant] == ["input", "conv2d"]  # BN and relu fused


def test_batchnorm_after_conv_transpose_and_gemm_folds():
    inits = {"w": randn(3, 2, 2, 2), "b": randn(2), **_bn_inits(2)}
    m = model([node("ConvTranspose", ["x", "w", "b"], ["c"], strides=[2, 2]),
               node("BatchNormalization", ["c", "s", "bias", "mean", "var"], ["y"])],
              {"x": [1, 3, 4, 4]}, ["y"], inits, opset=11)
    g = check_against_ort(m, [randn(1, 3, 4, 4)])
    assert not any(isinstance(n.op, O.Binary) for n in g.nodes)
    inits = {"w": randn(2, 5), **_bn_inits(2)}
    m = model([node("Gemm", ["x", "w"], ["c"], transB=1),
               node("BatchNormalization", ["c", "s", "bias", "mean", "var"], ["y"])],
              {"x": [3, 5]}, ["y"], inits, opset=11)
    g = check_against_ort(m, [randn(3, 5)])
    assert not any(isinstance(n.op, O.Binary) for n in g.nodes)


def test_batchnorm_alone_or_after_a_shared_conv_is_a_multiply_add():
    inits = {"w": randn(4, 3, 1, 1), "b": randn(4), **_bn_inits(4)}
    m = model([node("Conv", ["x", "w", "b"], ["c"]),
               node("BatchNormalization", ["c", "s", "bias", "mean", "var"], ["y"])],
              {"x": [1, 3, 5, 5]}, ["y", "c"], inits, opset=13)  # the conv's output is also a graph output
    g = check_against_ort(m, [randn(1, 3, 5, 5)])
    assert sum(isinstance(n.op, O.Binary) for n in g.nodes) == 2
    m = model([node("BatchNormalization", ["x", "s", "bias", "mean", "var"], ["y"])], {"x": [2, 3]}, ["y"],
              _bn_inits(3), opset=13)
    check_against_ort(m, [randn(2, 3)])
