"""reduce, reduce_window2d, cpu_reduce_window2d, softmax (kmodel_v4.md §8.7, 8.8, 8.10, 8.21)."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import F32, run_one

import kcc.kmodel as km

rng = np.random.default_rng(3)
f32 = np.float32


def _reduce(x, op, out_shape, init):
    return run_one(
        lambda ins, out: km.Reduce(
            input=ins[0], output=out, reduce_op=op, in_shape=x.shape, out_shape=out_shape, init_value=init
        ),
        [x], F32, int(np.prod(out_shape)),
    )  # fmt: skip


def test_reduce_mean_sums_in_input_order_then_scales_by_count_ratio() -> None:
    x = rng.standard_normal((1, 3, 5, 7)).astype(np.float32)
    ref = np.empty(3, np.float32)
    for c in range(3):
        v = f32(0)
        for t in x[0, c].reshape(-1):
            v = f32(v + t)
        ref[c] = f32(v * (f32(3) / f32(105)))
    np.testing.assert_array_equal(_reduce(x, km.ReduceOp.MEAN, (1, 3, 1, 1), 0.0), ref)


def test_reduce_sum_over_inner_and_outer_axes() -> None:
    x = rng.standard_normal((2, 3, 4, 2)).astype(np.float32)
    ref = np.zeros((1, 3, 1, 2), np.float32)
    for n in range(2):
        for h in range(4):
            ref[0, :, 0, :] = ref[0, :, 0, :] + x[n, :, h, :]  # input order: n outer, h inner
    np.testing.assert_array_equal(_reduce(x, km.ReduceOp.SUM, (1, 3, 1, 2), 0.0), ref.reshape(-1))


@pytest.mark.parametrize("op, fn", [(km.ReduceOp.MIN, np.min), (km.ReduceOp.MAX, np.max)])
def test_reduce_min_max_include_init_value(op, fn) -> None:
    x = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    with_init = np.concatenate([x, np.zeros((1, 2, 3, 1), np.float32)], axis=3)
    np.testing.assert_array_equal(_reduce(x, op, (1, 2, 3, 1), 0.0), fn(with_init, axis=3).reshape(-1))


def _pool_reference(x, op, k, s, pads):
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = pads
    oh, ow = (h + pt + pb - k + s) // s, (w + pl + pr - k + s) // s
    out = np.empty((n, c, oh, ow), np.float32)
    for oy in range(oh):
        for ox in range(ow):
            taps = [(oy * s - pt + ky, ox * s - pl + kx) for ky in range(k) for kx in range(k)]
            taps = [(iy, ix) for iy, ix in taps if 0 <= iy < h and 0 <= ix < w]
            v = x[:, :, [t[0] for t in taps], [t[1] for t in taps]]
            if op == "max":
                out[:, :, oy, ox] = v.max(axis=2)
            else:
                acc = np.zeros((n, c), np.float32)
                for i in range(v.shape[2]):
                    acc = acc + v[:, :, i]
                out[:, :, oy, ox] = acc / f32(len(taps))
    return out


@pytest.mark.parametrize("op", ["max", "mean"])
def test_reduce_window2d_counts_only_in_bounds_taps(op) -> None:
    x = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
    pads = ((1, 1), (0, 1))
    ref = _pool_reference(x, op, 3, 2, pads)
    reduce_op = km.ReduceOp.MAX if op == "max" else km.ReduceOp.MEAN
    init = -km.FLT_MAX if op == "max" else 0.0
    body = lambda ins, out: km.ReduceWindow2D(  # noqa: E731
        input=ins[0], output=out, reduce_op=reduce_op, in_shape=x.shape, padding_h=km.Padding(*pads[0]),
        padding_w=km.Padding(*pads[1]), filter_h=3, filter_w=3, stride_h=2, stride_w=2, init_value=init,
    )  # fmt: skip
    np.testing.assert_array_equal(run_one(body, [x], F32, ref.size), ref.reshape(-1))


def test_cpu_reduce_window2d_is_nhwc() -> None:
    x = rng.standard_normal((1, 4, 4, 3)).astype(np.float32)  # N, H, W, C
    ref = x.reshape(1, 2, 2, 2, 2, 3).max(axis=(2, 4)).reshape(-1)
    body = lambda ins, out: km.CpuReduceWindow2D(  # noqa: E731
        input=ins[0], output=out, reduce_op=km.ReduceOp.MAX, in_shape=x.shape,
        filter_h=2, filter_w=2, stride_h=2, stride_w=2, init_value=-km.FLT_MAX,
    )  # fmt: skip
    np.testing.assert_array_equal(run_one(body, [x], F32, ref.size), ref)


def test_softmax_rows() -> None:
    x = rng.standard_normal((3, 5)).astype(np.float32)
    got = run_one(
        lambda ins, out: km.Softmax(input=ins[0], output=out, inner_size=5, outer_size=3, beta=1.0), [x], F32, 15
    )
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, (e / e.sum(axis=1, keepdims=True)).reshape(-1), rtol=1e-6)
