"""Data-movement kernels: concat, pad, memory_copy, transpose, strided_slice, resize_image
(kmodel_v4.md §8.2, 8.6, 8.9, 8.11, 8.12, 8.14).

Byte-copying kernels work on raw element bits (uint8 / uint32 views), so float payloads,
including NaNs, move unchanged, exactly like the runtime's typed copies.
"""

from __future__ import annotations

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import (
    Concat,
    DataType,
    MemoryCopy,
    Pad,
    ResizeImage,
    ResizeMode,
    StridedSlice,
    Transpose,
)
from kpu_sim.kernels.elementwise import shape_count
from kpu_sim.kernels.fp32 import F32
from kpu_sim.memory import Memory

_RAW = {DataType.FLOAT32: np.dtype("<u4"), DataType.UINT8: np.dtype("u1")}  # `ELEM_SIZE_IMPL`


def concat(mem: Memory, body: Concat) -> None:
    """§8.2: for each outer index, append inner_size * dims[i] bytes of every input in turn."""
    pieces = []
    for i, (r, dim) in enumerate(zip(body.inputs, body.dims)):
        if dim < 0:
            raise SimulatorError(f"dims[{i}] is negative ({dim})")
        chunk = body.inner_size * dim
        pieces.append(mem.read(r, np.uint8, body.outer_size * chunk).reshape(body.outer_size, chunk))
    if pieces:
        mem.write(body.output, np.concatenate(pieces, axis=1))


def memory_copy(mem: Memory, body: MemoryCopy) -> None:
    """§8.9: copies floor(input.size / 4) 4-byte words."""
    mem.write(body.output, mem.read(body.input, np.uint8, body.input.size // 4 * 4))


def pad(mem: Memory, body: Pad) -> None:
    """§8.6: out[d] = in[d - before] inside, pad_value (its first element-size bytes) outside."""
    raw = _RAW[body.input.datatype]
    shape = body.in_shape
    x = mem.read(body.input, raw, shape_count(shape, "in_shape")).reshape(shape)
    out_shape = [d + p.before + p.after for d, p in zip(shape, body.paddings)]
    if min(out_shape) < 0:
        raise SimulatorError(f"paddings {tuple(body.paddings)} crop more than in_shape {tuple(shape)}")
    mem.require(body.output, int(np.prod(out_shape, dtype=object)) * raw.itemsize)
    index, inside = [], np.ones(out_shape, dtype=bool)
    for axis, (out_size, p) in enumerate(zip(out_shape, body.paddings)):
        pos = np.arange(out_size)
        ok = (pos >= p.before) & (pos < out_size - p.after)  # then 0 <= pos - before < size
        index.append(np.where(ok, pos - p.before, 0))
        inside &= ok.reshape([-1 if a == axis else 1 for a in range(4)])
    fill = np.frombuffer(body.pad_value.storage[: raw.itemsize], dtype=raw)[0]
    gathered = x[np.ix_(*index)] if x.size else np.zeros(out_shape, dtype=raw)
    mem.write(body.output, np.where(inside, gathered, fill).astype(raw))


def transpose(mem: Memory, body: Transpose) -> None:
    """§8.12: out_shape[i] = in_shape[perm[i]] (NumPy's transpose convention)."""
    if sorted(body.perm) != [0, 1, 2, 3]:
        raise SimulatorError(f"perm {tuple(body.perm)} is not a permutation of 0..3")
    raw = _RAW[body.input.datatype]
    x = mem.read(body.input, raw, shape_count(body.in_shape, "in_shape")).reshape(body.in_shape)
    mem.write(body.output, np.ascontiguousarray(x.transpose(tuple(body.perm))))


def strided_slice(mem: Memory, body: StridedSlice) -> None:
    """§8.14: per axis, i = begin; while (stride > 0 ? i < end : i > end): take i; i += stride."""
    raw = _RAW[body.input.datatype]
    x = mem.read(body.input, raw, shape_count(body.in_shape, "in_shape")).reshape(body.in_shape)
    index = []
    steps = list(zip(body.begin, body.end, body.strides, body.in_shape))
    if any(s == 0 for _, _, s, _ in steps):
        raise SimulatorError(f"strides {tuple(body.strides)} contain 0")
    lengths = [len(range(b, e, s)) for b, e, s, _ in steps]
    mem.require(body.output, int(np.prod(lengths, dtype=object)) * raw.itemsize)
    for axis, (b, e, s, size) in enumerate(steps):
        taken = np.arange(b, e, s)  # the same sequence as the C loop, also for negative strides
        if taken.size and (taken.min() < 0 or taken.max() >= size):
            raise SimulatorError(f"axis {axis}: indices {b}..{e} step {s} fall outside size {size}")
        index.append(taken)
    mem.write(body.output, x[np.ix_(*index)])


def resize_image(mem: Memory, body: ResizeImage) -> None:
    """§8.11: bilinear (with align_corners) or nearest neighbour, float32 or uint8."""
    n, c, h, w = body.in_shape
    out_h, out_w = body.out_h, body.out_w
    if min(out_h, out_w) <= 0:
        raise SimulatorError(f"output size {out_h}x{out_w} must be positive")
    dtype = body.input.datatype.numpy
    shape_count(body.in_shape, "in_shape")
    mem.require(body.output, n * c * out_h * out_w * dtype.itemsize)
    x = mem.read(body.input, dtype, shape_count(body.in_shape, "in_shape")).reshape(n, c, h, w)
    height_scale = F32(h) / F32(out_h)
    width_scale = F32(w) / F32(out_w)
    if body.mode is ResizeMode.NEAREST_NEIGHBOR:
        iy = np.minimum(np.floor(np.arange(out_h, dtype=F32) * height_scale).astype(np.int64), h - 1)
        ix = np.minimum(np.floor(np.arange(out_w, dtype=F32) * width_scale).astype(np.int64), w - 1)
        mem.write(body.output, x[:, :, iy][:, :, :, ix])
        return
    if body.align_corners and out_h > 1:
        height_scale = F32(h - 1) / F32(out_h - 1)
    if body.align_corners and out_w > 1:
        width_scale = F32(w - 1) / F32(out_w - 1)
    in_y = np.arange(out_h, dtype=F32) * height_scale
    in_x = np.arange(out_w, dtype=F32) * width_scale
    y0 = np.minimum(np.floor(in_y).astype(np.int64), h - 1)
    x0 = np.minimum(np.floor(in_x).astype(np.int64), w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy = (in_y - y0.astype(F32))[:, None]
    dx = (in_x - x0.astype(F32))[None, :]
    one = F32(1.0)
    a0, a1 = (one - dy) * (one - dx), dy * (one - dx)
    a2, a3 = (one - dy) * dx, dy * dx
    xf = x.astype(F32)
    v0, v1 = xf[:, :, y0][:, :, :, x0], xf[:, :, y1][:, :, :, x0]
    v2, v3 = xf[:, :, y0][:, :, :, x1], xf[:, :, y1][:, :, :, x1]
    value = v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3
    if dtype == np.uint8:  # T(value): float -> uint8 truncates toward zero
        value = np.clip(np.trunc(value), 0, 255).astype(np.uint8)
    mem.write(body.output, value)
