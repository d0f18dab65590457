"""IR operations: one frozen dataclass per op kind; the class *is* the kind.

Each op states its attributes as typed fields and its type rule in `infer_type` (which doubles as the
verifier's per-op check). Semantics live apart, in `kcc.eval.kernels`, one float kernel per class.

Conventions (the IR is NCHW wherever an op has a layout, kmodel_v4.md §3.3):
* spatial ops (Conv2D, Conv2DTranspose, Pool2D, Resize) take 4-D NCHW inputs;
* paddings are `(before, after)` pairs; a Conv2D/Pool2D padding is `((top, bottom), (left, right))`;
* `act` is a fused clamp `(lo, hi)`; `NO_CLAMP` means none (kmodel stores ±FLT_MAX, §3.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from kcc.errors import VerifyError
from kcc.ir.types import DType, TensorType

INF = math.inf
NO_CLAMP: tuple[float, float] = (-INF, INF)
Pair = tuple[int, int]

BINARY_OPS = ("add", "sub", "mul", "div", "min", "max")
# abs..square map 1:1 onto kmodel `unary_op_t`; the rest are lowered (nnil or decomposition).
UNARY_OPS = ("abs", "ceil", "cos", "exp", "floor", "log", "neg", "rsqrt", "sin", "square",
             "sqrt", "tanh", "logistic", "hard_swish", "round", "silu")
REDUCE_OPS = ("mean", "min", "max", "sum")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise VerifyError(msg)


def _float_inputs(ins: tuple[TensorType, ...], n: int, kind: str) -> None:
    _check(len(ins) == n, f"{kind} takes {n} inputs, got {len(ins)}")


def conv_out(size: int, pad: Pair, k: int, stride: int, dilation: int) -> int:
    """Output extent of a convolution / pooling window along one axis."""
    eff = (k - 1) * dilation + 1
    return (size + pad[0] + pad[1] - eff) // stride + 1


@dataclass(frozen=True)
class Op:
    kind: ClassVar[str] = "op"

    def infer_type(self, ins: tuple[TensorType, ...]) -> TensorType:
        raise NotImplementedError

    def attrs(self) -> dict[str, object]:
        """Attributes for printing; override to hide bulky ones."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- graph edges
@dataclass(frozen=True)
class Input(Op):
    kind: ClassVar[str] = "input"
    index: int
    shape: tuple[int, ...]
    dtype: DType = DType.float32

    def infer_type(self, ins):
        _float_inputs(ins, 0, self.kind)
        return TensorType(self.shape, self.dtype)

    def attrs(self):
        return {"index": self.index}


@dataclass(frozen=True, eq=False)
class Constant(Op):
    kind: ClassVar[str] = "const"
    data: np.ndarray

    def infer_type(self, ins):
        _float_inputs(ins, 0, self.kind)
        dt = {np.dtype(np.float32): DType.float32, np.dtype(np.uint8): DType.uint8,
              np.dtype(np.int32): DType.int32}.get(self.data.dtype)
        _check(dt is not None, f"constant of unsupported dtype {self.data.dtype}")
        return TensorType(tuple(int(d) for d in self.data.shape), dt)

    def attrs(self):
        if self.data.size <= 4:
            return {"value": self.data.ravel().tolist()}
        return {}


# --------------------------------------------------------------------------- compute
@dataclass(frozen=True)
class Conv2D(Op):
    """y = clamp(conv(x, w) + b). Inputs: x [N,C,H,W], w [OC, C/groups, KH, KW], b [OC]."""

    kind: ClassVar[str] = "conv2d"
    stride: Pair = (1, 1)
    padding: tuple[Pair, Pair] = ((0, 0), (0, 0))
    dilation: Pair = (1, 1)
    groups: int = 1
    act: tuple[float, float] = NO_CLAMP

    def infer_type(self, ins):
        _float_inputs(ins, 3, self.kind)
        x, w, b = ins
        _check(x.rank == 4 and w.rank == 4 and b.rank == 1, f"conv2d ranks {x.rank},{w.rank},{b.rank}")
        n, c, h, wd = x.shape
        oc, icg, kh, kw = w.shape
        _check(c % self.groups == 0 and icg == c // self.groups,
               f"conv2d weights {w.shape} do not match {c} input channels / {self.groups} groups")
        _check(oc % self.groups == 0 and b.shape == (oc,), f"conv2d bias {b.shape} vs {oc} output channels")
        oh = conv_out(h, self.padding[0], kh, self.stride[0], self.dilation[0])
        ow = conv_out(wd, self.padding[1], kw, self.stride[1], self.dilation[1])
        _check(oh > 0 and ow > 0, f"conv2d output {oh}x{ow} is empty")
        return TensorType((n, oc, oh, ow), x.dtype)


@dataclass(frozen=True)
class Conv2DTranspose(Op):
    """Transposed convolution (the gradient of Conv2D w.r.t. its input).

    Inputs: x [N,IC,H,W], w [OC, IC/groups, KH, KW], b [OC]. Output `out_shape` (NCHW), padding as
    in the equivalent forward conv: out[oy] gets x[iy]*w[ky] where oy = iy*stride - pad_before + ky*dilation.
    """

    kind: ClassVar[str] = "conv2d_transpose"
    out_shape: tuple[int, int, int, int]
    stride: Pair = (1, 1)
    padding: tuple[Pair, Pair] = ((0, 0), (0, 0))
    dilation: Pair = (1, 1)
    groups: int = 1
    act: tuple[float, float] = NO_CLAMP

    def infer_type(self, ins):
        _float_inputs(ins, 3, self.kind)
        x, w, b = ins
        _check(x.rank == 4 and w.rank == 4, "conv2d_transpose needs 4-D input and weights")
        _check(w.shape[0] == self.out_shape[1] and b.shape == (self.out_shape[1],), "conv2d_transpose channels")
        _check(w.shape[1] * self.groups == x.shape[1], "conv2d_transpose input channels")
        return TensorType(tuple(self.out_shape), x.dtype)


@dataclass(frozen=True)
class MatMul(Op):
    """y = clamp(a @ b + bias). Inputs: a [M,K], b [K,N], bias [N]."""

    kind: ClassVar[str] = "matmul"
    act: tuple[float, float] = NO_CLAMP

    def infer_type(self, ins):
        _float_inputs(ins, 3, self.kind)
        a, b, bias = ins
        _check(a.rank == 2 and b.rank == 2 and a.shape[1] == b.shape[0], f"matmul {a.shape} x {b.shape}")
        _check(bias.shape == (b.shape[1],), f"matmul bias {bias.shape}")
        return TensorType((a.shape[0], b.shape[1]), a.dtype)


@dataclass(frozen=True)
class Binary(Op):
    """Element-wise a∘b with numpy broadcasting, then the fused clamp."""

    kind: ClassVar[str] = "binary"
    op: str
    act: tuple[float, float] = NO_CLAMP

    def infer_type(self, ins):
        _float_inputs(ins, 2, self.kind)
        _check(self.op in BINARY_OPS, f"unknown binary op {self.op}")
        try:
            shape = np.broadcast_shapes(ins[0].shape, ins[1].shape)
        except ValueError:
            raise VerifyError(f"binary {self.op}: shapes {ins[0].shape} and {ins[1].shape} do not broadcast")
        return TensorType(tuple(shape), ins[0].dtype)


@dataclass(frozen=True)
class Unary(Op):
    kind: ClassVar[str] = "unary"
    op: str

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        _check(self.op in UNARY_OPS, f"unknown unary op {self.op}")
        return ins[0]


@dataclass(frozen=True)
class Clamp(Op):
    """min(max(x, lo), hi): RELU, RELU6, RELU_N1_TO_1."""

    kind: ClassVar[str] = "clamp"
    lo: float
    hi: float

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        return ins[0]


@dataclass(frozen=True)
class LeakyRelu(Op):
    kind: ClassVar[str] = "leaky_relu"
    alpha: float

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        return ins[0]


@dataclass(frozen=True)
class PRelu(Op):
    """x if x >= 0 else alpha*x; alpha (second input) broadcasts against x."""

    kind: ClassVar[str] = "prelu"

    def infer_type(self, ins):
        _float_inputs(ins, 2, self.kind)
        _check(tuple(np.broadcast_shapes(ins[0].shape, ins[1].shape)) == ins[0].shape,
               f"prelu alpha {ins[1].shape} does not broadcast to {ins[0].shape}")
        return ins[0]


@dataclass(frozen=True)
class Reduce(Op):
    kind: ClassVar[str] = "reduce"
    op: str
    axes: tuple[int, ...]
    keepdims: bool = True

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        x = ins[0]
        _check(self.op in REDUCE_OPS, f"unknown reduce op {self.op}")
        _check(all(0 <= a < x.rank for a in self.axes) and len(set(self.axes)) == len(self.axes),
               f"reduce axes {self.axes} for rank {x.rank}")
        if self.keepdims:
            shape = tuple(1 if i in self.axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in self.axes)
        return TensorType(shape, x.dtype)


@dataclass(frozen=True)
class Pool2D(Op):
    """Max or mean over a window of an NCHW map; mean averages the in-bounds taps only (TFLite)."""

    kind: ClassVar[str] = "pool2d"
    op: str
    filter: Pair
    stride: Pair
    padding: tuple[Pair, Pair] = ((0, 0), (0, 0))
    act: tuple[float, float] = NO_CLAMP

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        x = ins[0]
        _check(self.op in ("max", "mean"), f"pool op {self.op}")
        _check(x.rank == 4, "pool2d needs a 4-D input")
        n, c, h, w = x.shape
        oh = conv_out(h, self.padding[0], self.filter[0], self.stride[0], 1)
        ow = conv_out(w, self.padding[1], self.filter[1], self.stride[1], 1)
        _check(oh > 0 and ow > 0, "pool2d output is empty")
        return TensorType((n, c, oh, ow), x.dtype)


@dataclass(frozen=True)
class Softmax(Op):
    """exp(beta*(x - max)) / sum over `axis`."""

    kind: ClassVar[str] = "softmax"
    axis: int
    beta: float = 1.0

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        _check(0 <= self.axis < ins[0].rank, f"softmax axis {self.axis}")
        return ins[0]


@dataclass(frozen=True)
class L2Normalize(Op):
    """x / max(sqrt(sum(x^2 over axis)), eps)  (TFLite L2_NORMALIZATION)."""

    kind: ClassVar[str] = "l2_normalize"
    axis: int
    eps: float = 1e-12

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        _check(0 <= self.axis < ins[0].rank, f"l2_normalize axis {self.axis}")
        return ins[0]


@dataclass(frozen=True)
class Resize(Op):
    """Resize the two spatial axes of an NCHW map (TFLite RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR)."""

    kind: ClassVar[str] = "resize"
    mode: str  # "bilinear" | "nearest"
    size: Pair
    align_corners: bool = False
    half_pixel_centers: bool = False

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        x = ins[0]
        _check(x.rank == 4 and self.mode in ("bilinear", "nearest"), "resize needs a 4-D input")
        return TensorType((x.shape[0], x.shape[1], *self.size), x.dtype)


# --------------------------------------------------------------------------- data movement
@dataclass(frozen=True)
class Concat(Op):
    kind: ClassVar[str] = "concat"
    axis: int

    def infer_type(self, ins):
        _check(len(ins) >= 1, "concat needs inputs")
        r = ins[0].rank
        _check(0 <= self.axis < r, f"concat axis {self.axis} for rank {r}")
        for t in ins:
            _check(t.rank == r and all(a == b for i, (a, b) in enumerate(zip(t.shape, ins[0].shape))
                                       if i != self.axis), f"concat shapes {[t.shape for t in ins]}")
        shape = list(ins[0].shape)
        shape[self.axis] = sum(t.shape[self.axis] for t in ins)
        return TensorType(tuple(shape), ins[0].dtype)


@dataclass(frozen=True)
class Reshape(Op):
    kind: ClassVar[str] = "reshape"
    shape: tuple[int, ...]

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        _check(int(np.prod(self.shape)) == ins[0].size, f"reshape {ins[0].shape} -> {self.shape}")
        return TensorType(tuple(self.shape), ins[0].dtype)


@dataclass(frozen=True)
class Transpose(Op):
    kind: ClassVar[str] = "transpose"
    perm: tuple[int, ...]

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        x = ins[0]
        _check(sorted(self.perm) == list(range(x.rank)), f"transpose perm {self.perm} for rank {x.rank}")
        return TensorType(tuple(x.shape[p] for p in self.perm), x.dtype)


@dataclass(frozen=True)
class Pad(Op):
    """Constant padding; `paddings` has one non-negative (before, after) pair per axis."""

    kind: ClassVar[str] = "pad"
    paddings: tuple[Pair, ...]
    value: float = 0.0

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        x = ins[0]
        _check(len(self.paddings) == x.rank and all(b >= 0 and a >= 0 for b, a in self.paddings),
               f"pad paddings {self.paddings} for rank {x.rank}")
        return TensorType(tuple(d + b + a for d, (b, a) in zip(x.shape, self.paddings)), x.dtype)


@dataclass(frozen=True)
class StridedSlice(Op):
    """x[begin:end:stride] on every axis, indices already normalised.

    With a positive stride 0 <= begin <= end <= dim; with a negative stride dim > begin >= end >= -1,
    where end = -1 means "up to and including index 0".
    """

    kind: ClassVar[str] = "strided_slice"
    begin: tuple[int, ...]
    end: tuple[int, ...]
    strides: tuple[int, ...]

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(b, None if e < 0 else e, s) for b, e, s in zip(self.begin, self.end, self.strides))

    def contiguous_offset(self, shape: tuple[int, ...]) -> int | None:
        """The element offset in a C-order tensor of `shape` at which this slice's output is one
        contiguous range of its elements (a range of channels of a batch-1 NCHW map, of rows of a
        one-channel map...), else None: every axis after the first of more than one output element is
        whole, and that axis has step 1."""
        out = [len(range(b, e, s)) for b, e, s in zip(self.begin, self.end, self.strides)]
        k = next((a for a, d in enumerate(out) if d > 1), len(out))
        if k < len(out) and (self.strides[k] != 1 or any(
                out[a] != shape[a] or self.strides[a] != 1 for a in range(k + 1, len(out)))):
            return None
        return sum(b * int(np.prod(shape[a + 1:], dtype=np.int64)) for a, b in enumerate(self.begin))

    def infer_type(self, ins):
        _float_inputs(ins, 1, self.kind)
        x = ins[0]
        _check(len(self.begin) == len(self.end) == len(self.strides) == x.rank, "strided_slice rank")
        shape = []
        for d, b, e, s in zip(x.shape, self.begin, self.end, self.strides):
            _check(s != 0, "strided_slice stride 0")
            if s > 0:
                _check(0 <= b <= e <= d, f"strided_slice range {b}:{e} of {d}")
            else:
                _check(d > b >= e >= -1, f"strided_slice range {b}:{e}:{s} of {d}")
            shape.append(len(range(b, e, s)))
        _check(all(v > 0 for v in shape), f"strided_slice output {shape} is empty")
        return TensorType(tuple(shape), x.dtype)


#: data movement: the ops that move a tensor's values as they are, on uint8 codes as on floats
LAYOUT_OPS = (Pad, StridedSlice, Reshape, Transpose)

ALL_OPS: tuple[type[Op], ...] = (
    Input, Constant, Conv2D, Conv2DTranspose, MatMul, Binary, Unary, Clamp, LeakyRelu, PRelu, Reduce,
    Pool2D, Softmax, L2Normalize, Resize, Concat, Reshape, Transpose, Pad, StridedSlice,
)
