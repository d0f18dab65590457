"""Float32 numpy kernels for every IR op: the semantics of the IR.

`KERNELS` maps an op class to `fn(op, *input_arrays) -> array`. The reference for each kernel is
TFLite's float kernel (the frontend's source of truth), so calibration and pass tests agree with
`ai-edge-litert` to float rounding. Everything is vectorised; loops run over kernel taps only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O

F32 = np.float32


def _clamp(y: np.ndarray, act: tuple[float, float]) -> np.ndarray:
    lo, hi = act
    if lo > -np.inf or hi < np.inf:
        y = np.clip(y, F32(lo), F32(hi))
    return y.astype(F32, copy=False)


def _taps(xp: np.ndarray, k: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
          out_hw: tuple[int, int]):
    """Yield (ky, kx, view) with view[n, c, oy, ox] = xp[n, c, oy*sh + ky*dh, ox*sw + kx*dw]."""
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, out_hw
    for ky in range(k[0]):
        for kx in range(k[1]):
            y0, x0 = ky * dh, kx * dw
            yield ky, kx, xp[:, :, y0:y0 + (oh - 1) * sh + 1:sh, x0:x0 + (ow - 1) * sw + 1:sw]


def _contract(spec: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A float32 contraction (a conv's or a matmul's sums of products) computed in float64, where each
    product of two float32 values is exact, then rounded to float32 once: the BLAS kernel numpy picks
    for the machine (OpenBLAS: SkylakeX, Zen, Haswell...) sums in its own order, which in float32
    moves results by an ulp and so the calibrated ranges and the kmodel's bytes from one CPU to the
    next; in float64 an order changes a float32 result only within ~1e-16 of a rounding boundary."""
    return np.einsum(spec, a.astype(np.float64), b.astype(np.float64), optimize=True).astype(F32)


def conv2d(op: O.Conv2D, x, w, b):
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    g = op.groups
    (pt, pb), (pl, pr) = op.padding
    oh = O.conv_out(h, (pt, pb), kh, op.stride[0], op.dilation[0])
    ow = O.conv_out(wd, (pl, pr), kw, op.stride[1], op.dilation[1])
    xp = np.pad(x.astype(F32, copy=False), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ocg = oc // g
    out = np.zeros((n, oc, oh, ow), F32)
    if icg == 1:  # depthwise (possibly with a channel multiplier): output o reads input o // ocg
        src = np.arange(oc) // ocg
        for ky, kx, v in _taps(xp, (kh, kw), op.stride, op.dilation, (oh, ow)):
            out += v[:, src] * w[:, 0, ky, kx][None, :, None, None]
    else:
        for ky, kx, v in _taps(xp, (kh, kw), op.stride, op.dilation, (oh, ow)):
            for gi in range(g):
                vg = v[:, gi * icg:(gi + 1) * icg]
                wg = w[gi * ocg:(gi + 1) * ocg, :, ky, kx]
                out[:, gi * ocg:(gi + 1) * ocg] += _contract("nchw,oc->nohw", vg, wg)
    out += b.astype(F32)[None, :, None, None]
    return _clamp(out, op.act)


def conv2d_transpose(op: O.Conv2DTranspose, x, w, b):
    n, ic, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    g = op.groups
    ocg = oc // g
    (sh, sw), (dh, dw) = op.stride, op.dilation
    (pt, _), (pl, _) = op.padding
    _, _, oh, ow = op.out_shape
    # Scatter every tap into a buffer large enough for the un-cropped result, then crop `pad_before`.
    full_h = max((h - 1) * sh + (kh - 1) * dh + 1, pt + oh)
    full_w = max((wd - 1) * sw + (kw - 1) * dw + 1, pl + ow)
    full = np.zeros((n, oc, full_h, full_w), F32)
    for ky in range(kh):
        for kx in range(kw):
            for gi in range(g):
                xg = x[:, gi * icg:(gi + 1) * icg]
                wg = w[gi * ocg:(gi + 1) * ocg, :, ky, kx]
                contrib = _contract("nchw,oc->nohw", xg, wg)
                full[:, gi * ocg:(gi + 1) * ocg, ky * dh:ky * dh + (h - 1) * sh + 1:sh,
                     kx * dw:kx * dw + (wd - 1) * sw + 1:sw] += contrib
    out = full[:, :, pt:pt + oh, pl:pl + ow] + b.astype(F32)[None, :, None, None]
    return _clamp(out, op.act)


def matmul(op: O.MatMul, a, b, bias):
    return _clamp(_contract("ij,jk->ik", a, b) + bias.astype(F32), op.act)


_BINARY: dict[str, Callable] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "min": np.minimum, "max": np.maximum,
}


def binary(op: O.Binary, a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return _clamp(_BINARY[op.op](a.astype(F32), b.astype(F32)), op.act)


def _relu6(x):
    return np.clip(x, F32(0), F32(6))


_UNARY: dict[str, Callable] = {
    "abs": np.abs, "ceil": np.ceil, "cos": np.cos, "exp": np.exp, "floor": np.floor, "log": np.log,
    "neg": np.negative, "rsqrt": lambda x: F32(1) / np.sqrt(x), "sin": np.sin, "square": np.square,
    "sqrt": np.sqrt, "tanh": np.tanh, "logistic": lambda x: F32(1) / (F32(1) + np.exp(-x)),
    "hard_swish": lambda x: x * _relu6(x + F32(3)) / F32(6), "round": np.round,  # round half to even
    # x * logistic(x) written x / (1 + exp(-x)): -0 rather than inf * 0 = NaN for x << 0
    "silu": lambda x: x / (F32(1) + np.exp(-x)),
}


def unary(op: O.Unary, x):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _UNARY[op.op](x.astype(F32)).astype(F32, copy=False)


def clamp(op: O.Clamp, x):
    return np.clip(x, F32(op.lo), F32(op.hi)).astype(F32, copy=False)


def leaky_relu(op: O.LeakyRelu, x):
    return np.where(x >= 0, x, x * F32(op.alpha)).astype(F32, copy=False)


def prelu(op: O.PRelu, x, alpha):
    return np.where(x >= 0, x, x * alpha.astype(F32)).astype(F32, copy=False)


def reduce(op: O.Reduce, x):
    fn = {"mean": np.mean, "sum": np.sum, "min": np.min, "max": np.max}[op.op]
    # Sums accumulate in float64: closer to the exact value than any float32 order, and cheap.
    dtype = np.float64 if op.op in ("mean", "sum") else None
    y = fn(x, axis=op.axes, keepdims=op.keepdims, dtype=dtype) if dtype else fn(x, axis=op.axes, keepdims=op.keepdims)
    return np.asarray(y, F32)


def pool2d(op: O.Pool2D, x):
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = op.padding
    kh, kw = op.filter
    oh = O.conv_out(h, (pt, pb), kh, op.stride[0], 1)
    ow = O.conv_out(w, (pl, pr), kw, op.stride[1], 1)
    pads = ((0, 0), (0, 0), (pt, pb), (pl, pr))
    if op.op == "max":
        xp = np.pad(x, pads, constant_values=-np.inf)
        out = np.full((n, c, oh, ow), -np.inf, F32)
        for _, _, v in _taps(xp, (kh, kw), op.stride, (1, 1), (oh, ow)):
            np.maximum(out, v, out=out)
    else:  # mean over the in-bounds taps only (TFLite AVERAGE_POOL_2D)
        xp = np.pad(x.astype(np.float64), pads)
        ones = np.pad(np.ones((1, 1, h, w)), pads)
        acc = np.zeros((n, c, oh, ow))
        cnt = np.zeros((1, 1, oh, ow))
        for (_, _, v), (_, _, m) in zip(_taps(xp, (kh, kw), op.stride, (1, 1), (oh, ow)),
                                         _taps(ones, (kh, kw), op.stride, (1, 1), (oh, ow))):
            acc += v
            cnt += m
        out = acc / cnt
    return _clamp(out.astype(F32), op.act)


def softmax(op: O.Softmax, x):
    z = (x - x.max(axis=op.axis, keepdims=True)) * F32(op.beta)
    e = np.exp(z)
    return (e / e.sum(axis=op.axis, keepdims=True)).astype(F32)


def l2_normalize(op: O.L2Normalize, x):
    ss = np.sum(np.square(x.astype(np.float64)), axis=op.axis, keepdims=True)
    return (x / np.maximum(np.sqrt(ss), op.eps)).astype(F32)


def _resize_bilinear_axis(size_in: int, size_out: int, align: bool, half: bool):
    """Source indices and weights along one axis, TFLite's ComputeInterpolationValues in float32."""
    scale = F32((size_in - 1) / (size_out - 1)) if align and size_out > 1 else F32(size_in / size_out)
    o = np.arange(size_out, dtype=F32)
    pos = (o + F32(0.5)) * scale - F32(0.5) if half else o * scale
    lo = np.maximum(np.floor(pos), 0).astype(np.int64)
    hi = np.minimum(np.ceil(pos), size_in - 1).astype(np.int64)
    frac = pos - lo.astype(F32)
    return lo, hi, frac


def _resize_nearest_axis(size_in: int, size_out: int, align: bool, half: bool):
    scale = F32((size_in - 1) / (size_out - 1)) if align and size_out > 1 else F32(size_in / size_out)
    pos = (np.arange(size_out, dtype=F32) + F32(0.5 if half else 0.0)) * scale
    # TfLiteRound rounds half away from zero, which is floor(p + 0.5) for the non-negative p here.
    idx = np.floor(pos + F32(0.5)) if align else np.floor(pos)
    return np.clip(idx.astype(np.int64), 0, size_in - 1)


def resize(op: O.Resize, x):
    _, _, h, w = x.shape
    oh, ow = op.size
    if op.mode == "nearest":
        iy = _resize_nearest_axis(h, oh, op.align_corners, op.half_pixel_centers)
        ix = _resize_nearest_axis(w, ow, op.align_corners, op.half_pixel_centers)
        return x[:, :, iy][:, :, :, ix]
    y0, y1, fy = _resize_bilinear_axis(h, oh, op.align_corners, op.half_pixel_centers)
    x0, x1, fx = _resize_bilinear_axis(w, ow, op.align_corners, op.half_pixel_centers)
    fy = fy[:, None]
    top = x[:, :, y0][:, :, :, x0] * (1 - fy) * (1 - fx) + x[:, :, y1][:, :, :, x0] * fy * (1 - fx)
    bottom = x[:, :, y0][:, :, :, x1] * (1 - fy) * fx + x[:, :, y1][:, :, :, x1] * fy * fx
    return (top + bottom).astype(F32)


def kpu_pool(pool: str, y: np.ndarray) -> np.ndarray:
    """The KPU pool unit in real numbers (kpu_semantics.md §3 step 5; floor of the means aside)."""
    n, c, h, w = y.shape
    if pool == "bypass":
        return y
    if pool in ("left_top_2_s2", "right_top_2_s2", "left_top_4_s4"):
        s = 4 if pool.endswith("4_s4") else 2
        x0 = 1 if pool == "right_top_2_s2" else 0
        return np.ascontiguousarray(y[:, :, 0:(h // s) * s:s, x0:x0 + (w // s - 1) * s + 1:s])
    if pool in ("mean_2_s1", "max_2_s1"):
        # windows reach one past the bottom/right edge: mean replicates the edge, max reads 0
        mode = "edge" if pool == "mean_2_s1" else "constant"
        p = np.pad(y, ((0, 0), (0, 0), (0, 1), (0, 1)), mode=mode)
        taps = [p[:, :, dy:dy + h, dx:dx + w] for dy in (0, 1) for dx in (0, 1)]
        return (sum(taps) / F32(4) if pool == "mean_2_s1" else np.maximum.reduce(taps)).astype(F32)
    s = 2 if pool.endswith("2_s2") else 4
    v = y[:, :, :(h // s) * s, :(w // s) * s].reshape(n, c, h // s, s, w // s, s)
    return (v.mean(axis=(3, 5)) if pool.startswith("mean") else v.max(axis=(3, 5))).astype(F32)


def kpu_activation(fn: tuple[str, float] | None, y: np.ndarray) -> np.ndarray:
    """The element-wise function a KPU layer's activation table approximates."""
    if fn is None:
        return y
    name, param = fn
    if name == "leaky_relu":
        return np.where(y >= 0, y, y * F32(param)).astype(F32)
    return _UNARY[name](y).astype(F32)


def kpu_conv2d(op, x, w, b):
    k = op.kernel
    p = k // 2
    conv = O.Conv2D((1, 1), ((p, p), (p, p)), (1, 1), x.shape[1] if op.depthwise else 1, op.act)
    y = conv2d(conv, x, w, b)
    return kpu_pool(op.pool, kpu_activation(op.fn, y))


def quantize(op, x):
    v = (x.astype(F32) * F32(op.scale) + F32(op.zero_point)).astype(np.float64)  # float32, like roundf(x*s + z)
    return np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), 0, 255).astype(np.uint8)


def dequantize(op, q):
    return ((q.astype(F32) - F32(op.zero_point)) * (F32(1) / F32(op.scale))).astype(F32)


def _kpu_row_patch(op, x, *parts):
    """x with rows written over by the parts, its rows counted over all channels in memory order
    (kcc.ir.kpu_ops.KpuRowPatch)."""
    out = np.array(x, copy=True)
    flat = out.reshape(-1, x.shape[3])
    for r, p in zip(op.starts, parts):
        flat[r:r + p.shape[2]] = p[0, 0]
    return out


def _kpu_channel_patch(op, x, *parts):
    """x with channels c0.. written over by the parts: one tensor, or one per batch
    (kcc.ir.kpu_ops.KpuChannelPatch)."""
    out = np.array(x, copy=True)
    out[:, op.c0:] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return out


KERNELS: dict[type, Callable] = {
    KO.FloatKpuConv: kpu_conv2d,
    KO.Quantize: quantize,
    KO.Dequantize: dequantize,
    KO.QuantResidual: lambda op, x: np.zeros_like(x),  # exact in float (QuantResidual's docstring)
    KO.KpuUpload: lambda op, x: x,
    KO.KpuDownload: lambda op, x: x,
    KO.KpuConcat: lambda op, *xs: np.pad(np.concatenate(xs, axis=1), ((0, 0), (0, 0), (0, op.gap[0]), (0, op.gap[1]))),
    KO.KpuChannelView: lambda op, x: x[:, op.c0:op.c1] if op.rows is None else x[:, op.c0:op.c1, op.rows[0]:op.rows[1]],
    KO.KpuRowPatch: _kpu_row_patch,
    KO.KpuChannelPatch: _kpu_channel_patch,
    KO.KpuStack: lambda op, *xs: np.concatenate(xs, axis=1),
    KO.KpuBatchStack: lambda op, *xs: np.concatenate(xs, axis=0),
    O.Conv2D: conv2d,
    O.Conv2DTranspose: conv2d_transpose,
    O.MatMul: matmul,
    O.Binary: binary,
    O.Unary: unary,
    O.Clamp: clamp,
    O.LeakyRelu: leaky_relu,
    O.PRelu: prelu,
    O.Reduce: reduce,
    O.Pool2D: pool2d,
    O.Softmax: softmax,
    O.L2Normalize: l2_normalize,
    O.Resize: resize,
    O.Concat: lambda op, *xs: np.concatenate(xs, axis=op.axis),
    O.Reshape: lambda op, x: x.reshape(op.shape),
    O.Transpose: lambda op, x: np.ascontiguousarray(x.transpose(op.perm)),
    O.Pad: lambda op, x: np.pad(x, op.paddings, constant_values=x.dtype.type(op.value)),
    O.StridedSlice: lambda op, x: np.ascontiguousarray(x[op.slices()]),
}
