"""Reductions: reduce, reduce_window2d, cpu_reduce_window2d, softmax (kmodel_v4.md §8.7, 8.8, 8.10, 8.21).

Sums are accumulated strictly in the runtime's order (one float32 rounding per addition, in
input order), using `sequential_sum` or slice-wise updates over the window taps. min/max use
`np.fmin/np.fmax` reductions: order-independent, they differ from the runtime's sequential
`std::min/max` only for a NaN initial value and for which zero (+0 or -0) wins a tie.
"""

from __future__ import annotations

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import CpuReduceWindow2D, Reduce, ReduceOp, ReduceWindow2D, Softmax
from kpu_sim.kernels.elementwise import shape_count
from kpu_sim.kernels.fp32 import (
    F32,
    apply_activation,
    c_max,
    c_min,
    expf,
    sequential_sum,
    window_taps,
    windowed_output_size,
)
from kpu_sim.kernels.fp32 import (
    window_params as _window_params,
)
from kpu_sim.memory import Memory


def reduce(mem: Memory, body: Reduce) -> None:
    """§8.7: out = init; out[reduced index] op= x in input order; mean multiplies by out/in counts."""
    in_shape, out_shape = body.in_shape, body.out_shape
    x = mem.read(body.input, F32, shape_count(in_shape, "in_shape")).reshape(in_shape)
    kept = [d for d in range(4) if out_shape[d] == in_shape[d]]
    reduced = [d for d in range(4) if out_shape[d] != in_shape[d]]
    if any(out_shape[d] != 1 for d in reduced):
        raise SimulatorError(f"out_shape {tuple(out_shape)} is not in_shape {tuple(in_shape)} with axes reduced to 1")
    # Row-major input order restricted to one output element is row-major order of the reduced axes.
    mem.require(body.output, shape_count(out_shape, "out_shape") * 4)
    terms = x.transpose(kept + reduced).reshape(out_shape.count, -1)
    init = np.full(out_shape.count, body.init_value, dtype=F32)
    op = body.reduce_op
    if op in (ReduceOp.SUM, ReduceOp.MEAN):
        out = sequential_sum(init, terms)
    elif op is ReduceOp.MIN:
        out = np.fmin(init, np.fmin.reduce(terms, axis=1, initial=np.inf)).astype(F32)
    else:
        out = np.fmax(init, np.fmax.reduce(terms, axis=1, initial=-np.inf)).astype(F32)
    mem.write(body.output, out)
    if op is ReduceOp.MEAN:
        # The runtime scales the *whole output range* by (float)out.size() / in.size() (counts of floats).
        scale = F32(body.output.size // 4) / F32(body.input.size // 4)
        mem.write(body.output, mem.read(body.output, F32) * scale)


def _window(x: np.ndarray, body: ReduceWindow2D, sum_allowed: bool, mem: Memory) -> np.ndarray:
    """Pool an NCHW array; returns the NCHW result after the window op and the clamp."""
    n, c, h, w = x.shape
    fh, fw, sh, sw, dh, dw = _window_params(body)
    if min(sh, sw, dh, dw) <= 0:
        raise SimulatorError(f"stride ({sh}, {sw}) and dilation ({dh}, {dw}) must be > 0")
    op = body.reduce_op
    if op is ReduceOp.SUM and not sum_allowed:
        raise SimulatorError("cpu_reduce_window2d has no sum (the runtime returns an error)")
    oh = max(0, windowed_output_size(h, fh, sh, dh, *body.padding_h))
    ow = max(0, windowed_output_size(w, fw, sw, dw, *body.padding_w))
    mem.require(body.output, n * c * oh * ow * 4)
    value = np.full((n, c, oh, ow), body.init_value, dtype=F32)
    count = np.zeros((oh, ow), dtype=np.int64)
    combine = {ReduceOp.MIN: c_min, ReduceOp.MAX: c_max}.get(op, lambda a, b: a + b)
    for _, _, (ys, xs), (iys, ixs) in window_taps((oh, ow), (h, w), (fh, fw), (sh, sw),
                                                   (body.padding_h.before, body.padding_w.before), (dh, dw)):
        value[:, :, ys, xs] = combine(value[:, :, ys, xs], x[:, :, iys, ixs])
        count[ys, xs] += 1
    if op is ReduceOp.MEAN:
        value = value / count.astype(F32)  # v / k: the tap count converted to float
    return apply_activation(value, body.fused_activation)


def reduce_window2d(mem: Memory, body: ReduceWindow2D) -> None:
    """§8.8: NCHW; mean divides by the number of in-bounds taps."""
    x = mem.read(body.input, F32, shape_count(body.in_shape, "in_shape")).reshape(body.in_shape)
    mem.write(body.output, _window(x, body, sum_allowed=True, mem=mem))


def cpu_reduce_window2d(mem: Memory, body: CpuReduceWindow2D) -> None:
    """§8.8 layout, §8.21 semantics: in_shape is N, H, W, C and the output is NHWC."""
    x = mem.read(body.input, F32, shape_count(body.in_shape, "in_shape")).reshape(body.in_shape)
    out = _window(x.transpose(0, 3, 1, 2), body, sum_allowed=False, mem=mem)
    mem.write(body.output, np.ascontiguousarray(out.transpose(0, 2, 3, 1)))


def softmax(mem: Memory, body: Softmax) -> None:
    """§8.10: per row, e = expf((x - max) * beta); sum in order; out = e / sum."""
    outer, inner = body.outer_size, body.inner_size
    if outer < 0 or inner < 0:
        raise SimulatorError(f"negative softmax size (outer {outer}, inner {inner})")
    x = mem.read(body.input, F32, outer * inner).reshape(outer, inner)
    if x.size == 0:
        return
    e = expf((x - x.max(axis=1, keepdims=True)) * F32(body.beta))
    total = sequential_sum(np.zeros(outer, dtype=F32), e)
    mem.write(body.output, e / total[:, None])
