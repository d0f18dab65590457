"""Every supported Caffe layer type, imported from a model built in-process and run by kcc's float
interpreter, against OpenCV's Caffe importer (cv2.dnn, an independent reader and set of kernels).

Each net is written as a .caffemodel (definitions + blobs) and a .prototxt; kcc reads the
.caffemodel alone (as ncc does) and with the .prototxt, and both must match OpenCV. Bar: the real
models' (cosine >= 0.99999, max |err| <= 1e-4 * max |ref|), here met with margin.
"""

from __future__ import annotations

import numpy as np
import pytest
from caffe_nets import Net, rand

from kcc.eval.interpreter import run
from kcc.frontend.caffe import import_caffe
from kcc.ir import ops as O
from kcc.passes.canonicalize import canonicalize

pytest.importorskip("cv2")


def _conv(n: Net, name: str, bottom: str, c_in: int, c_out: int, k=(3, 3), group: int = 1, bias: bool = True,
          **geometry) -> Net:
    blobs = [rand(c_out, c_in // group, *k, scale=0.3)] + ([rand(c_out)] if bias else [])
    p = {"num_output": c_out, "group": group, "bias_term": bias, **geometry}
    if "kernel_h" not in geometry:
        p["kernel_size"] = [k[0]] if k[0] == k[1] else list(k)
    return n.add("Convolution", name, bottom, blobs=blobs, convolution_param=p)


def conv_basic():
    return _conv(Net().input("data", (1, 3, 12, 14)), "out", "data", 3, 6, pad=[1]), ["out"]


def conv_hw_forms():
    n = _conv(Net().input("data", (1, 4, 11, 9)), "out", "data", 4, 5, k=(3, 1), bias=False,
              kernel_h=3, kernel_w=1, pad_h=1, pad_w=0, stride_h=2, stride_w=1)
    return n, ["out"]


def conv_group_dilation():
    return _conv(Net().input("data", (1, 4, 13, 12)), "out", "data", 4, 6, group=2, dilation=[2], pad=[2]), ["out"]


def conv_depthwise_stride2():
    return _conv(Net().input("data", (1, 8, 12, 16)), "out", "data", 8, 8, group=8, pad=[1], stride=[2]), ["out"]


def deconvolution():
    n = Net().input("data", (1, 4, 5, 6))
    n.add("Deconvolution", "out", "data", blobs=[rand(4, 3, 4, 4, scale=0.3), rand(3)],
          convolution_param={"num_output": 3, "kernel_size": [4], "stride": [2], "pad": [1]})
    return n, ["out"]


def deconvolution_groups():
    n = Net().input("data", (1, 4, 5, 5))
    n.add("Deconvolution", "out", "data", blobs=[rand(4, 3, 3, 3, scale=0.3)],
          convolution_param={"num_output": 6, "kernel_size": [3], "stride": [2], "group": 2, "bias_term": False})
    return n, ["out"]


def inner_product_4d():
    n = Net().input("data", (1, 3, 4, 5))
    n.add("InnerProduct", "out", "data", blobs=[rand(7, 60, scale=0.2), rand(7)], inner_product_param={"num_output": 7})
    return n, ["out"]


def batchnorm_scale_in_place():
    """conv -> BatchNorm -> Scale -> ReLU, all in place on 'conv' (the usual ResNet/MobileNet pattern)."""
    n = _conv(Net().input("data", (1, 3, 10, 10)), "conv", "data", 3, 6, pad=[1])
    var = np.abs(rand(6)) + 0.1
    n.add("BatchNorm", "bn", "conv", "conv", blobs=[rand(6), var * 7.0, np.array([7.0])])
    n.add("Scale", "scale", "conv", "conv", blobs=[rand(6), rand(6)], scale_param={"bias_term": True})
    n.add("ReLU", "relu", "conv", "conv")
    return n, ["relu"]


def batchnorm_on_input():
    n = Net().input("data", (1, 4, 6, 6))
    n.add("BatchNorm", "out", "data", blobs=[rand(4), np.abs(rand(4)) + 0.5, np.array([1.0])],
          batch_norm_param={"eps": 1e-3})
    return n, ["out"]


def relu_negative_slope():
    return Net().input("data", (1, 3, 5, 5)).add("ReLU", "out", "data", relu_param={"negative_slope": 0.1}), ["out"]


def prelu_per_channel():
    return Net().input("data", (1, 4, 5, 5)).add("PReLU", "out", "data", blobs=[rand(4)]), ["out"]


def prelu_shared():
    n = Net().input("data", (1, 4, 5, 5)).add("PReLU", "out", "data", blobs=[np.array([0.3])],
                                             prelu_param={"channel_shared": True})
    return n, ["out"]


def sigmoid_tanh():
    n = Net().input("data", (1, 3, 4, 4)).add("Sigmoid", "a", "data").add("TanH", "b", "data")
    return n, ["a", "b"]


def pooling_max_ceil_pad():
    n = Net().input("data", (1, 3, 9, 10))
    n.add("Pooling", "out", "data", pooling_param={"pool": "MAX", "kernel_size": 3, "stride": 2, "pad": 1})
    return n, ["out"]


def pooling_ave_ceil_pad():
    """The ceil windows reach past the padded map; Caffe divides by the window clipped to it."""
    n = Net().input("data", (1, 3, 9, 10))
    n.add("Pooling", "out", "data", pooling_param={"pool": "AVE", "kernel_size": 3, "stride": 2, "pad": 1})
    return n, ["out"]


def pooling_ave_hw():
    n = Net().input("data", (1, 2, 11, 8))
    n.add("Pooling", "out", "data", pooling_param={"pool": "AVE", "kernel_h": 3, "kernel_w": 2, "stride_h": 2,
                                                   "stride_w": 3, "pad_h": 1, "pad_w": 0})
    return n, ["out"]


def pooling_global():
    n = Net().input("data", (1, 5, 7, 6))
    n.add("Pooling", "a", "data", pooling_param={"pool": "AVE", "global_pooling": True})
    n.add("Pooling", "b", "data", pooling_param={"pool": "MAX", "global_pooling": True})
    return n, ["a", "b"]


def eltwise_sum_coeff():
    n = Net().input("x", (1, 3, 4, 5)).input("y", (1, 3, 4, 5)).input("z", (1, 3, 4, 5))
    n.add("Eltwise", "out", ["x", "y", "z"], eltwise_param={"operation": "SUM", "coeff": [0.5, -1.0, 2.0]})
    return n, ["out"]


def eltwise_prod_max():
    n = Net().input("x", (1, 3, 4, 5)).input("y", (1, 3, 4, 5))
    n.add("Eltwise", "a", ["x", "y"], eltwise_param={"operation": "PROD"})
    n.add("Eltwise", "b", ["x", "y"], eltwise_param={"operation": "MAX"})
    n.add("Eltwise", "c", ["x", "y"])  # SUM by default
    return n, ["a", "b", "c"]


def concat_split_slice():
    n = Net().input("data", (1, 6, 4, 5))
    n.add("Split", "split", "data", ["s0", "s1"])
    n.add("Slice", "slice", "s0", ["p0", "p1", "p2"], slice_param={"axis": 1, "slice_point": [1, 4]})
    n.add("Slice", "halves", "s1", ["h0", "h1"], slice_param={"axis": 2})
    n.add("Concat", "cat", ["p2", "p0"], concat_param={"axis": 1})
    n.add("Concat", "cat_w", ["h1", "h0"], concat_param={"axis": 2})
    n.add("ReLU", "p1_relu", "p1")
    return n, ["cat", "cat_w", "p1_relu"]


def flatten_reshape_permute_softmax():
    n = Net().input("data", (1, 6, 4, 5))
    n.add("Permute", "perm", "data", permute_param={"order": [0, 2, 3, 1]})
    n.add("Reshape", "rs", "perm", reshape_param={"shape": {"dim": [0, -1, 2]}})
    n.add("Softmax", "prob", "rs", softmax_param={"axis": 2})
    n.add("Flatten", "flat", "data")
    n.add("Softmax", "flat_prob", "flat")
    n.add("Reshape", "part", "data", reshape_param={"shape": {"dim": [3, -1]}, "axis": 1, "num_axes": 1})
    return n, ["flat_prob", "part", "prob"]


def dropout_in_place():
    n = Net().input("data", (1, 12))
    n.add("InnerProduct", "fc", "data", blobs=[rand(8, 12), rand(8)], inner_product_param={"num_output": 8})
    n.add("Dropout", "drop", "fc", "fc", dropout_param={"dropout_ratio": 0.5})
    n.add("ReLU", "relu", "fc", "fc")
    return n, ["relu"]


CASES = [conv_basic, conv_hw_forms, conv_group_dilation, conv_depthwise_stride2, deconvolution, deconvolution_groups,
         inner_product_4d, batchnorm_scale_in_place, batchnorm_on_input,
         relu_negative_slope, prelu_per_channel, prelu_shared, sigmoid_tanh, pooling_max_ceil_pad,
         pooling_ave_ceil_pad, pooling_ave_hw, pooling_global, eltwise_sum_coeff, eltwise_prod_max,
         concat_split_slice, flatten_reshape_permute_softmax, dropout_in_place]


def _check(outs: list[np.ndarray], refs: list[np.ndarray]) -> None:
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        a, b = o.astype(np.float64).ravel(), r.astype(np.float64).ravel()
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cos >= 0.99999 and np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), (cos, np.abs(a - b).max())


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_layer_matches_opencv(case, tmp_path) -> None:
    net, opencv_names = case()
    feeds = [rand(*shape) for _, shape in net.inputs]
    refs = net.opencv(tmp_path, feeds, opencv_names)
    model, proto = net.write(tmp_path)
    alone = import_caffe(net.caffemodel(), "net.caffemodel")  # bytes: no .prototxt beside it
    paired = import_caffe(model, prototxt=proto)
    _check(run(alone, feeds), refs)
    _check(run(paired, feeds), refs)


def test_batchnorm_and_scale_fold_into_the_conv() -> None:
    """Imported as multiply-adds, folded into the conv by canonicalize (kcc.passes.affine), the ReLU too."""
    net, _ = batchnorm_scale_in_place()
    imported = import_caffe(net.caffemodel())
    x = rand(1, 3, 10, 10)
    want = run(imported, [x])[0]
    g = canonicalize(imported)
    kinds = [n.op.kind for n in g.nodes if not n.is_constant]
    assert kinds == ["input", "conv2d"], kinds
    assert [o.name for o in g.outputs] == ["relu"]  # in place: named after the layer
    np.testing.assert_allclose(run(g, [x])[0], want, rtol=1e-5, atol=1e-5)


def test_inner_product_transposed_weights() -> None:
    """`transpose: true` stores W as [K, N] (y = x W + b); OpenCV 4.14 ignores the flag, so numpy is the
    reference here."""
    w, b = rand(12, 5), rand(5)
    n = Net().input("data", (2, 12))
    n.add("InnerProduct", "out", "data", blobs=[w, b], inner_product_param={"num_output": 5, "transpose": True})
    x = rand(2, 12)
    (y,) = run(import_caffe(n.caffemodel()), [x])
    np.testing.assert_allclose(y, x.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-5)


def test_scale_by_a_second_bottom() -> None:
    """Scale with two bottoms: the second is the scale, aligned at `axis` (numpy reference: OpenCV
    4.14 computes something else for axis 0)."""
    bias = rand(1, 4)
    n = Net().input("data", (1, 4, 5, 6)).input("gain", (1, 4))
    n.add("Scale", "out", ["data", "gain"], blobs=[bias], scale_param={"axis": 0, "bias_term": True})
    x, g = rand(1, 4, 5, 6), rand(1, 4)
    (y,) = run(import_caffe(n.caffemodel()), [x, g])
    np.testing.assert_allclose(y, x * g[:, :, None, None] + bias[:, :, None, None], rtol=1e-6, atol=1e-6)


def test_concat_dim_is_the_old_axis() -> None:
    """`concat_dim` (ConcatParameter field 1) names the axis in files older than `axis`; OpenCV 4.14
    ignores it, so numpy is the reference."""
    n = Net().input("a", (1, 2, 3, 4)).input("b", (1, 2, 5, 4))
    n.add("Concat", "out", ["a", "b"], concat_param={"concat_dim": 2})
    a, b = rand(1, 2, 3, 4), rand(1, 2, 5, 4)
    (y,) = run(import_caffe(n.caffemodel()), [a, b])
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=2))


def test_leaky_slope_is_kept() -> None:
    """ncc's importer drops negative_slope; kcc must not (numpy reference)."""
    net, _ = relu_negative_slope()
    x = rand(1, 3, 5, 5)
    (y,) = run(import_caffe(net.caffemodel()), [x])
    np.testing.assert_array_equal(y, np.where(x > 0, x, x * np.float32(0.1)))
    assert isinstance(import_caffe(net.caffemodel()).outputs[0].op, O.LeakyRelu)


def _caffe_pool_reference(x, k, s, p, ceil, ave):
    """PoolingLayer::Reshape + Forward_cpu, written out loop by loop."""
    n, c, h, w = x.shape
    size = []
    for dim, kk, ss, pp in zip((h, w), k, s, p):
        span = dim + 2 * pp - kk
        o = (-(-span // ss) if ceil else span // ss) + 1
        if pp and (o - 1) * ss >= dim + pp:
            o -= 1
        size.append(o)
    y = np.zeros((n, c, *size), np.float64)
    for oy in range(size[0]):
        for ox in range(size[1]):
            y0, x0 = oy * s[0] - p[0], ox * s[1] - p[1]
            y1, x1 = min(y0 + k[0], h + p[0]), min(x0 + k[1], w + p[1])
            area = (y1 - y0) * (x1 - x0)
            win = x[:, :, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
            y[:, :, oy, ox] = win.sum(axis=(2, 3)) / area if ave else win.max(axis=(2, 3))
    return y


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("k, s, p", [((3, 3), (2, 2), (1, 1)), ((2, 3), (2, 2), (0, 1)), ((3, 3), (3, 2), (2, 0))])
@pytest.mark.parametrize("rounding", ["CEIL", "FLOOR"])
def test_pooling_against_caffe_loops(pool, k, s, p, rounding) -> None:
    """Both round modes (OpenCV reads no round_mode) against Caffe's loops in numpy."""
    x = rand(1, 2, 10, 11)
    n = Net().input("data", x.shape)
    n.add("Pooling", "out", "data", pooling_param={"pool": pool, "kernel_h": k[0], "kernel_w": k[1], "stride_h": s[0],
                                                   "stride_w": s[1], "pad_h": p[0], "pad_w": p[1],
                                                   "round_mode": rounding})
    (y,) = run(import_caffe(n.caffemodel()), [x])
    ref = _caffe_pool_reference(x.astype(np.float64), k, s, p, rounding == "CEIL", pool == "AVE")
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


def test_clip_layer() -> None:
    n = Net().input("data", (1, 3, 4, 4)).add("Clip", "out", "data", clip_param={"min": -0.5, "max": 0.25})
    x = rand(1, 3, 4, 4)
    (y,) = run(import_caffe(n.caffemodel()), [x])
    np.testing.assert_array_equal(y, np.clip(x, -0.5, 0.25))
