"""concat, pad, memory_copy, transpose, strided_slice, resize_image, kpu_upload (§8.2-8.14, §9.1)."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import F32, U8, MainMemory, run_nodes, run_one

import kcc.kmodel as km

rng = np.random.default_rng(4)


def test_concat_copies_inner_blocks_per_outer_index() -> None:
    a = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    b = rng.standard_normal((1, 2, 1, 4)).astype(np.float32)
    got = run_one(
        lambda ins, out: km.Concat(output=out, inner_size=4 * 4, outer_size=2, inputs=ins, dims=(3, 1)),
        [a, b], F32, a.size + b.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, np.concatenate([a, b], axis=2).reshape(-1))


def test_pad_float_with_crop_and_pad() -> None:
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    pads = km.Paddings4.of([(0, 0), (1, 0), (-1, 2), (2, -3)])
    got = run_one(
        lambda ins, out: km.Pad(
            input=ins[0], output=out, in_shape=x.shape, paddings=pads, pad_value=km.Scalar.of_float(-7)
        ),
        [x], F32, 1 * 3 * 5 * 4,
    )  # fmt: skip
    ref = np.pad(x[:, :, 1:, :2], ((0, 0), (1, 0), (0, 2), (2, 0)), constant_values=-7)
    np.testing.assert_array_equal(got, ref.reshape(-1))


def test_pad_uint8_uses_the_first_storage_byte() -> None:
    x = np.arange(6, dtype=np.uint8).reshape(1, 1, 2, 3)
    pads = km.Paddings4.of([(0, 0), (0, 0), (1, 1), (0, 1)])
    got = run_one(
        lambda ins, out: km.Pad(
            input=ins[0], output=out, in_shape=x.shape, paddings=pads, pad_value=km.Scalar.of_uint8(9)
        ),
        [x], U8, 16,
    )  # fmt: skip
    np.testing.assert_array_equal(got, np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1)), constant_values=9).reshape(-1))


def test_memory_copy_copies_whole_words() -> None:
    x = rng.standard_normal(5).astype(np.float32)
    got = run_one(lambda ins, out: km.MemoryCopy(input=ins[0], output=out), [x], F32, 5)
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 3, 1, 2), (3, 2, 1, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_transpose(perm, dtype) -> None:
    x = (rng.standard_normal((2, 3, 4, 5)) * 50).astype(dtype)
    got = run_one(
        lambda ins, out: km.Transpose(input=ins[0], output=out, in_shape=x.shape, perm=perm),
        [x], F32 if dtype == np.float32 else U8, x.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, x.transpose(perm).reshape(-1))


def test_strided_slice_positive_and_negative_strides() -> None:
    x = rng.standard_normal((1, 3, 6, 7)).astype(np.float32)
    begin, end, strides = (0, 2, 1, 6), (1, -1, 6, 0), (1, -1, 2, -3)
    ref = x[0:1, 2::-1, 1:6:2, 6:0:-3]
    got = run_one(
        lambda ins, out: km.StridedSlice(
            input=ins[0], output=out, in_shape=x.shape, begin=begin, end=end, strides=strides
        ),
        [x], F32, ref.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref.reshape(-1))


def _bilinear_reference(x, out_h, out_w, align):
    n, c, h, w = x.shape
    f = np.float32
    hs, ws = f(h) / f(out_h), f(w) / f(out_w)
    if align and out_h > 1:
        hs = f(h - 1) / f(out_h - 1)
    if align and out_w > 1:
        ws = f(w - 1) / f(out_w - 1)
    out = np.empty((n, c, out_h, out_w), np.float32)
    for oy in range(out_h):
        iy = f(oy) * hs
        y0 = int(np.floor(iy))
        y1 = min(y0 + 1, h - 1)
        for ox in range(out_w):
            ix = f(ox) * ws
            x0 = int(np.floor(ix))
            x1 = min(x0 + 1, w - 1)
            dy, dx = f(iy - f(y0)), f(ix - f(x0))
            a0, a1, a2, a3 = (f(1) - dy) * (f(1) - dx), dy * (f(1) - dx), (f(1) - dy) * dx, dy * dx
            xf = x.astype(np.float32)
            v0, v1, v2, v3 = xf[:, :, y0, x0], xf[:, :, y1, x0], xf[:, :, y0, x1], xf[:, :, y1, x1]
            out[:, :, oy, ox] = v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3
    return out


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_resize_bilinear(align, dtype) -> None:
    x = (rng.random((1, 2, 3, 5)) * 255).astype(dtype)
    ref = _bilinear_reference(x, 7, 4, align)
    if dtype == np.uint8:
        ref = np.trunc(ref).astype(np.uint8)
    got = run_one(
        lambda ins, out: km.ResizeImage(input=ins[0], output=out, in_shape=x.shape, out_h=7, out_w=4,
                                        mode=km.ResizeMode.BILINEAR, align_corners=align),
        [x], F32 if dtype == np.float32 else U8, ref.size,
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref.reshape(-1))


def test_resize_nearest() -> None:
    x = rng.standard_normal((1, 1, 3, 4)).astype(np.float32)
    iy = np.minimum(np.floor(np.arange(5, dtype=np.float32) * np.float32(3 / 5)).astype(int), 2)
    ix = np.minimum(np.floor(np.arange(8, dtype=np.float32) * np.float32(4 / 8)).astype(int), 3)
    got = run_one(
        lambda ins, out: km.ResizeImage(input=ins[0], output=out, in_shape=x.shape, out_h=5, out_w=8,
                                        mode=km.ResizeMode.NEAREST_NEIGHBOR),
        [x], F32, 40,
    )  # fmt: skip
    np.testing.assert_array_equal(got, x[:, :, iy][:, :, :, ix].reshape(-1))


def test_kpu_upload_writes_the_kpu_layout_and_leaves_padding() -> None:
    """§7.3 example: C=2, H=2, W=5 -> element (c=1, y=1, x=3) at byte 64 + 16 + 3."""
    x = np.arange(1, 21, dtype=np.uint8).reshape(1, 2, 2, 5)
    mem = MainMemory()
    src = mem.alloc(U8, x.size)
    kpu = km.MemoryRange(km.MemoryType.K210_KPU, U8, 128, km.kpu_bytes(x.shape))
    assert kpu.size == 128
    # Copy the KPU bytes back out with a 1x1 "transpose" through a uint8 main range (kpu_sim reads any space).
    out = mem.alloc(U8, kpu.size)
    nodes = [
        km.KpuUpload(input=src, output=kpu, in_shape=x.shape),
        km.Transpose(input=kpu, output=out, in_shape=(1, 1, 1, kpu.size), perm=(0, 1, 2, 3)),
    ]
    raw = run_nodes(nodes, [(src, x.shape, x)], [out], main_mem=mem.top)[0]
    assert raw[64 + 16 + 3] == x[0, 1, 1, 3]
    expected = np.zeros(128, np.uint8)
    expected[km.kpu_offsets(x.shape).reshape(-1)] = x.reshape(-1)
    np.testing.assert_array_equal(raw, expected)
