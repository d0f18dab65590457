"""float32 arithmetic as the nncase runtime's C++ does it on x86 (the `ncc infer` reference).

* Every intermediate is rounded to float32 (SSE, no FMA contraction): numpy float32 arrays
  with float32 scalars give the same bits.
* `std::min/max/clamp` are comparisons, not IEEE minNum: they keep the first operand on NaN.
* `expf/logf/sinf/cosf` are evaluated in float64 and rounded once, which is what glibc's
  correctly-rounded-in-practice float functions return.
* `roundf` rounds half away from zero; a float -> int32 conversion of NaN or of a value outside
  int32 yields INT32_MIN (x86 `cvttss2si`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from kcc.kmodel import ValueRange

F32 = np.float32
INT32_MIN = -(2**31)


def c_min(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """std::min(a, b) = (b < a) ? b : a."""
    return np.where(b < a, b, a).astype(F32, copy=False)


def c_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """std::max(a, b) = (a < b) ? b : a."""
    return np.where(a < b, b, a).astype(F32, copy=False)


def c_clamp(v: np.ndarray, low: np.ndarray | np.float32, high: np.ndarray | np.float32) -> np.ndarray:
    """std::clamp(v, lo, hi) = v < lo ? lo : (hi < v ? hi : v)."""
    return np.where(v < low, low, np.where(high < v, high, v)).astype(F32, copy=False)


def apply_activation(v: np.ndarray, act: ValueRange) -> np.ndarray:
    """The fused activation clamp of every float op (kernel_utils `apply_activation`)."""
    return c_clamp(v, F32(act.min), F32(act.max))


def round_half_away(x: np.ndarray) -> np.ndarray:
    """roundf(): half away from zero, exactly (no x + 0.5 double rounding)."""
    x = np.asarray(x, dtype=np.float64)
    t = np.trunc(x)
    return t + np.where(np.abs(x - t) >= 0.5, np.sign(x), 0.0)


def to_int32(x: np.ndarray) -> np.ndarray:
    """(int32_t)x for an already integral float array, with x86's out-of-range result."""
    x = np.asarray(x, dtype=np.float64)
    ok = (x >= -(2.0**31)) & (x < 2.0**31)  # False for NaN
    return np.where(ok, x, float(INT32_MIN)).astype(np.int64)


def expf(x: np.ndarray) -> np.ndarray:
    return np.exp(np.asarray(x, dtype=np.float64)).astype(F32)


def logf(x: np.ndarray) -> np.ndarray:
    return np.log(np.asarray(x, dtype=np.float64)).astype(F32)


def sinf(x: np.ndarray) -> np.ndarray:
    return np.sin(np.asarray(x, dtype=np.float64)).astype(F32)


def cosf(x: np.ndarray) -> np.ndarray:
    return np.cos(np.asarray(x, dtype=np.float64)).astype(F32)


def rsqrtf(x: np.ndarray) -> np.ndarray:
    """1.f / sqrtf(x): both steps correctly rounded in float32."""
    return (F32(1.0) / np.sqrt(np.asarray(x, dtype=F32))).astype(F32)


UNARY_FUNCTIONS = {
    "abs": lambda x: np.abs(x),
    "ceil": lambda x: np.ceil(x),
    "cos": cosf,
    "exp": expf,
    "floor": lambda x: np.floor(x),
    "log": logf,
    "neg": lambda x: -x,
    "rsqrt": rsqrtf,
    "sin": sinf,
    "square": lambda x: x * x,
}
"""unary_op_t / nnil unary names -> float32 functions (neutral_ops.cpp `unary`)."""


def sequential_sum(init: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """init + t0 + t1 + ... along the last axis, one float32 rounding per addition, in order.

    `np.add.accumulate` is a strict left-to-right loop (unlike `np.sum`, which is pairwise),
    so this reproduces a C `for` loop accumulating into a float.
    """
    stacked = np.concatenate([np.asarray(init, dtype=F32)[..., None], terms.astype(F32, copy=False)], axis=-1)
    return np.add.accumulate(stacked, axis=-1, dtype=F32)[..., -1]


def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def windowed_output_size(size: int, filter_: int, stride: int, dilation: int, before: int, after: int) -> int:
    """`get_windowed_output_size`: (size + pads - ((f - 1) * d + 1) + stride) / stride, C division."""
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    effective = (filter_ - 1) * dilation + 1
    return c_div(size + before + after - effective + stride, stride)


def window_params(body: Any) -> tuple[int, int, int, int, int, int]:
    """(filter_h, filter_w, stride_h, stride_w, dilation_h, dilation_w) of a windowed body."""
    return body.filter_h, body.filter_w, body.stride_h, body.stride_w, body.dilation_h, body.dilation_w


def tap_range(out_size: int, stride: int, pad_before: int, offset: int, in_size: int) -> tuple[int, int]:
    """Output positions o in [lo, hi) whose tap `o*stride - pad_before + offset` lies in [0, in_size).

    The runtime clips the filter window per output pixel (`filter_y_start/end`); for one filter
    tap the pixels that use it form this contiguous range, which lets a kernel loop over taps
    and update whole slices while skipping out-of-bounds taps exactly as the C loops do.
    """
    base = offset - pad_before
    lo = max(0, -(base // stride))  # ceil(-base / stride)
    hi = min(out_size, (in_size - 1 - base) // stride + 1)
    return lo, max(lo, hi)


Taps = Iterator[tuple[int, int, tuple[slice, slice], tuple[slice, slice]]]


def window_taps(out_hw: tuple[int, int], in_hw: tuple[int, int], filter_hw: tuple[int, int],
                stride: tuple[int, int], pad_before: tuple[int, int], dilation: tuple[int, int],
                reverse: bool = False) -> Taps:
    """Every filter tap (ky, kx) that reaches the input, in the C loops' order (`reverse`: last tap
    first), with the output pixels that use it and the input pixels they read, as (rows, cols)
    slices: `out[..., rows, cols] (op)= x[..., in_rows, in_cols]` does that tap for all pixels."""
    (oh, ow), (h, w), (fh, fw), (sh, sw), (ph, pw), (dh, dw) = out_hw, in_hw, filter_hw, stride, pad_before, dilation
    order = reversed if reverse else iter
    for ky in order(range(fh)):
        y0, y1 = tap_range(oh, sh, ph, ky * dh, h)
        if y0 == y1:
            continue
        iy = y0 * sh - ph + ky * dh
        for kx in order(range(fw)):
            x0, x1 = tap_range(ow, sw, pw, kx * dw, w)
            if x0 == x1:
                continue
            ix = x0 * sw - pw + kx * dw
            yield ky, kx, (slice(y0, y1), slice(x0, x1)), (slice(iy, iy + (y1 - y0 - 1) * sh + 1, sh),
                                                           slice(ix, ix + (x1 - x0 - 1) * sw + 1, sw))
