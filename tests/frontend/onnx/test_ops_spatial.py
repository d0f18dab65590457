"""Pools, global pools, Resize and Upsample against onnxruntime; refused resize forms say why."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_builder import check_against_ort, model, node, randn

from kcc.errors import UnsupportedModelError
from kcc.frontend.onnx import import_onnx
from kcc.ir import ops as O


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("k,s,pads", [(2, 2, [0, 0, 0, 0]), (3, 2, [1, 1, 1, 1]), (3, 1, [0, 1, 1, 0]),
                                      (3, 3, [1, 1, 0, 0])])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_pool(op, k, s, pads, ceil_mode):
    m = model([node(op, ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=pads, ceil_mode=ceil_mode)],
              {"x": [1, 2, 9, 10]}, ["y"], opset=11)
    check_against_ort(m, [randn(1, 2, 9, 10)])


@pytest.mark.parametrize("ceil_mode", [0, 1])
@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 2, 1, 0]])
def test_average_pool_count_include_pad(ceil_mode, pads):
    m = model([node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=pads,
                    count_include_pad=1, ceil_mode=ceil_mode)], {"x": [1, 2, 8, 9]}, ["y"], opset=11)
    check_against_ort(m, [randn(1, 2, 8, 9)])


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_pool_auto_pad(op, auto_pad):
    m = model([node(op, ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2], auto_pad=auto_pad)],
              {"x": [1, 2, 7, 8]}, ["y"], opset=9)
    check_against_ort(m, [randn(1, 2, 7, 8)])


def test_global_pools():
    m = model([node("GlobalAveragePool", ["x"], ["a"]), node("GlobalMaxPool", ["x"], ["b"])],
              {"x": [1, 3, 5, 6]}, ["a", "b"], opset=9)
    check_against_ort(m, [randn(1, 3, 5, 6)])


MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]


@pytest.mark.parametrize("coord", MODES)
@pytest.mark.parametrize("size", [(8, 12), (12, 7), (2, 3)])
def test_resize_linear_sizes(coord, size):
    m = model([node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode=coord)],
              {"x": [1, 2, 4, 6]}, ["y"], {"sizes": np.array([1, 2, *size], np.int64)}, opset=13)
    check_against_ort(m, [randn(1, 2, 4, 6)])


@pytest.mark.parametrize("coord", ["asymmetric", "half_pixel", "tf_half_pixel_for_nn", "align_corners"])
@pytest.mark.parametrize("nearest_mode", ["floor", "round_prefer_ceil", "round_prefer_floor"])
def test_resize_nearest_scale_2(coord, nearest_mode):
    """Integer upscaling: every mode either imports exactly or is refused with the reason."""
    m = model([node("Resize", ["x", "roi", "scales"], ["y"], mode="nearest", coordinate_transformation_mode=coord,
                    nearest_mode=nearest_mode)], {"x": [1, 2, 4, 5]}, ["y"],
              {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}, opset=11)
    try:
        g = check_against_ort(m, [randn(1, 2, 4, 5)])
    except UnsupportedModelError as e:
        assert "no IR Resize rule" in str(e) and coord in str(e)
        return
    assert any(isinstance(n.op, O.Resize) for n in g.nodes)


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_the_pytorch_forms(opset):
    """nn.Upsample(scale_factor=2) (nearest, asymmetric, floor) and bilinear align_corners=False /
    True (half_pixel / align_corners): the forms PyTorch exports, all imported."""
    roi = {"roi": np.zeros(0, np.float32)}
    for attrs in [dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                  dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
                  dict(mode="linear", coordinate_transformation_mode="half_pixel"),
                  dict(mode="linear", coordinate_transformation_mode="align_corners")]:
        m = model([node("Resize", ["x", "roi", "scales"], ["y"], **attrs)], {"x": [1, 3, 5, 4]}, ["y"],
                  {**roi, "scales": np.array([1, 1, 2, 2], np.float32)}, opset=opset)
        g = check_against_ort(m, [randn(1, 3, 5, 4)])
        assert any(isinstance(n.op, O.Resize) for n in g.nodes)


def test_resize_opset_10_and_upsample():
    scales = np.array([1, 1, 2, 3], np.float32)
    for mode in ("nearest", "linear"):
        m = model([node("Resize", ["x", "scales"], ["y"], mode=mode)], {"x": [1, 2, 3, 4]}, ["y"],
                  {"scales": scales}, opset=10)
        check_against_ort(m, [randn(1, 2, 3, 4)])
        m = model([node("Upsample", ["x", "scales"], ["y"], mode=mode)], {"x": [1, 2, 3, 4]}, ["y"],
                  {"scales": scales}, opset=9)
        check_against_ort(m, [randn(1, 2, 3, 4)])
    m = model([node("Upsample", ["x"], ["y"], mode="nearest", scales=[1.0, 1.0, 2.0, 2.0])], {"x": [1, 2, 3, 4]},
              ["y"], opset=7)
    check_against_ort(m, [randn(1, 2, 3, 4)])


@pytest.mark.parametrize("attrs,scales,reason", [
    (dict(mode="cubic"), [1, 1, 2, 2], "mode 'cubic'"),
    (dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"), [1, 1, 2, 2], "tf_crop_and_resize"),
    (dict(mode="linear"), [1, 2, 2, 2], "resize the batch or channel axis"),
    (dict(mode="linear", coordinate_transformation_mode="asymmetric"), [1, 1, 1.7, 1.7], "no IR Resize rule"),
])
def test_resize_refusals_say_why(attrs, scales, reason):
    m = model([node("Resize", ["x", "roi", "scales"], ["y"], **attrs)], {"x": [1, 2, 3, 4]}, ["y"],
              {"roi": np.zeros(0, np.float32), "scales": np.array(scales, np.float32)}, opset=13)
    with pytest.raises(UnsupportedModelError, match=reason) as e:
        import_onnx(m, "m.onnx")
    assert e.value.one_line().startswith("m.onnx: Resize 'resize_y': ")
