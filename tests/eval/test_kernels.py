"""Hand-checked cases for the float kernels (the frontend tests compare them with TFLite at large)."""

import numpy as np

from kcc.eval import kernels as K
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph

rng = np.random.default_rng(1)


def _direct_conv(x, w, b, stride, pad, dil, groups):
    """Textbook loop convolution, for comparison."""
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), pad[0], pad[1])).astype(np.float64)
    oh = (h + sum(pad[0]) - (kh - 1) * dil[0] - 1) // stride[0] + 1
    ow = (wd + sum(pad[1]) - (kw - 1) * dil[1] - 1) // stride[1] + 1
    out = np.zeros((n, oc, oh, ow))
    ocg = oc // groups
    for o in range(oc):
        g = o // ocg
        for y in range(oh):
            for xx in range(ow):
                patch = xp[:, g * icg:(g + 1) * icg,
                           y * stride[0]:y * stride[0] + (kh - 1) * dil[0] + 1:dil[0],
                           xx * stride[1]:xx * stride[1] + (kw - 1) * dil[1] + 1:dil[1]]
                out[:, o, y, xx] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return out


def test_conv2d_matches_direct_loop_for_groups_stride_dilation():
    for groups, icg, ocg in [(1, 3, 4), (3, 1, 1), (3, 1, 2), (2, 2, 3)]:
        x = rng.standard_normal((2, groups * icg, 7, 6)).astype(np.float32)
        w = rng.standard_normal((groups * ocg, icg, 3, 2)).astype(np.float32)
        b = rng.standard_normal(groups * ocg).astype(np.float32)
        op = O.Conv2D((2, 1), ((1, 2), (0, 1)), (2, 1), groups)
        got = K.conv2d(op, x, w, b)
        np.testing.assert_allclose(got, _direct_conv(x, w, b, op.stride, op.padding, op.dilation, groups),
                                   rtol=1e-5, atol=1e-5)


def test_conv2d_transpose_is_adjoint_of_conv2d():
    # <conv(x), y> == <x, conv_transpose(y)> for the same weights, stride and padding.
    x = rng.standard_normal((1, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv = O.Conv2D((2, 2), ((1, 1), (1, 0)))
    y = K.conv2d(conv, x, w, np.zeros(4, np.float32))
    g = rng.standard_normal(y.shape).astype(np.float32)
    # conv2d_transpose weights are [OC_t, IC_t, kh, kw] = [3, 4, kh, kw]: swap the forward conv's axes
    tconv = O.Conv2DTranspose((1, 3, 9, 8), (2, 2), ((1, 1), (1, 0)))
    xt = K.conv2d_transpose(tconv, g, w.transpose(1, 0, 2, 3).copy(), np.zeros(3, np.float32))
    assert np.isclose((y * g).sum(dtype=np.float64), (x * xt).sum(dtype=np.float64), rtol=1e-4)


def test_mean_pool_counts_in_bounds_taps_only():
    x = np.ones((1, 1, 3, 3), np.float32)
    y = K.pool2d(O.Pool2D("mean", (3, 3), (1, 1), ((1, 1), (1, 1))), x)
    np.testing.assert_array_equal(y, np.ones((1, 1, 3, 3), np.float32))
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    y = K.pool2d(O.Pool2D("max", (2, 2), (1, 1), ((0, 1), (0, 1))), x)
    np.testing.assert_array_equal(y[0, 0], [[3, 3], [3, 3]])


def test_resize_bilinear_align_corners_and_half_pixel():
    x = np.array([0, 10], np.float32).reshape(1, 1, 1, 2)
    y = K.resize(O.Resize("bilinear", (1, 3), align_corners=True), x)
    np.testing.assert_allclose(y.ravel(), [0, 5, 10])
    y = K.resize(O.Resize("bilinear", (1, 4), half_pixel_centers=True), x)
    # centres at -0.25, 0.25, 0.75, 1.25 -> clamped edges: 0, 2.5, 7.5, 10
    np.testing.assert_allclose(y.ravel(), [0, 2.5, 7.5, 10])


def test_interpreter_frees_intermediates_but_keeps_outputs():
    g = Graph()
    x = g.input(0, (2, 3))
    a = g.add(O.Unary("exp"), (x,), "a")
    b = g.add(O.Unary("neg"), (a,), "b")
    c = g.add(O.Binary("add"), (a, b), "c")
    g.outputs = [c, a]
    seen = []
    out = run(g, [np.ones((2, 3), np.float32)], observer=lambda n, v: seen.append(n.name))
    assert seen == ["input", "a", "b", "c"]
    np.testing.assert_allclose(out[0], 0)
    np.testing.assert_allclose(out[1], np.e, rtol=1e-6)


def test_row_patch_writes_rows_counted_over_channels_and_a_row_view_reads_them():
    """kcc.ir.kpu_ops.KpuRowPatch: part k replaces rows starts[k].. of the map read as one column of
    rows, channel after channel (a part may run from one channel into the next); KpuChannelView with
    `rows` reads rows r0..r1-1 of one channel."""
    from kcc.ir import kpu_ops as KO

    x = np.arange(2 * 3 * 5, dtype=np.float32).reshape(1, 2, 3, 5)  # 2 channels of 3 rows
    a = np.full((1, 1, 2, 5), -1.0, np.float32)
    b = np.full((1, 1, 2, 5), -2.0, np.float32)
    got = K.KERNELS[KO.KpuRowPatch](KO.KpuRowPatch((0, 2)), x, a, b)  # rows 0-1 of c0, row 2 of c0 + row 0 of c1
    want = x.copy()
    want[0, 0, 0:2] = -1.0
    want[0, 0, 2] = -2.0
    want[0, 1, 0] = -2.0
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(x[0, 1, 0], np.arange(15, 20, dtype=np.float32))  # the input is left as it was
    view = K.KERNELS[KO.KpuChannelView](KO.KpuChannelView(1, 2, (1, 3)), want)
    np.testing.assert_array_equal(view, want[:, 1:2, 1:3])
