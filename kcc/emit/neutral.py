"""Body builders of the neutral (CPU) ops (emit step 3): one kmodel v4 body per IR node, the float
ops of nncase v0.2's neutral runtime (kmodel_v4.md §8), with nnil programs (§10) for the unary
functions the runtime has no opcode for.
"""

from __future__ import annotations

import struct
from typing import Callable

import numpy as np

from kcc import kmodel as K
from kcc.emit.storage import FLT_MAX, Storage, f32, shape4, value_range
from kcc.errors import UnsupportedModelError
from kcc.ir import ops as O
from kcc.ir.graph import Node
from kcc.ir.types import DType
from kcc.kmodel.spec import BinaryOp, NnilOpcode, ReduceOp, ResizeMode, UnaryOp

Emit = Callable[[Node, Storage], K.Body]


def _conv2d(n: Node, st: Storage) -> K.Body:
    op: O.Conv2D = n.op
    x, w, b = n.inputs
    return K.Conv2D(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape), groups=op.groups,
                    out_channels=n.shape[1], padding_h=K.Padding(*op.padding[0]),
                    padding_w=K.Padding(*op.padding[1]), filter_h=w.shape[2], filter_w=w.shape[3],
                    stride_h=op.stride[0], stride_w=op.stride[1], dilation_h=op.dilation[0],
                    dilation_w=op.dilation[1], fused_activation=value_range(op.act),
                    weights=f32(w.data), bias=f32(b.data))


def _conv2d_transpose(n: Node, st: Storage) -> K.Body:
    op: O.Conv2DTranspose = n.op
    x, w, b = n.inputs
    return K.Conv2DTranspose(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape),
                             out_shape=shape4(n.shape), groups=op.groups, padding_h=K.Padding(*op.padding[0]),
                             padding_w=K.Padding(*op.padding[1]), filter_h=w.shape[2], filter_w=w.shape[3],
                             stride_h=op.stride[0], stride_w=op.stride[1], dilation_h=op.dilation[0],
                             dilation_w=op.dilation[1], fused_activation=value_range(op.act),
                             weights=f32(w.data), bias=f32(b.data))


def _matmul(n: Node, st: Storage) -> K.Body:
    a, b, bias = n.inputs
    return K.MatMul(input_a=st.range(a), input_b=st.range(b), output=st.range(n), a_rows=a.shape[0],
                    a_cols=a.shape[1], b_cols=b.shape[1], fused_activation=value_range(n.op.act),
                    bias=f32(bias.data))


def _binary(n: Node, st: Storage) -> K.Body:
    a, b = n.inputs
    return K.Binary(input_a=st.range(a), input_b=st.range(b), output=st.range(n),
                    binary_op=BinaryOp[n.op.op.upper()], in_a_shape=shape4(a.shape),
                    in_b_shape=shape4(b.shape), out_shape=shape4(n.shape),
                    fused_activation=value_range(n.op.act))


# ------------------------------------------------------------------ nnil programs (§10)
def _nnil(*items: object) -> bytes:
    """Assemble nnil: NnilOpcode members, and floats (pushed with ldc_r4)."""
    out = bytearray()
    for it in items:
        if isinstance(it, NnilOpcode):
            out.append(int(it))
        else:
            out.append(int(NnilOpcode.LDC_R4))
            out.extend(struct.pack("<f", float(it)))
    return bytes(out)


N = NnilOpcode
_NNIL_UNARY: dict[str, bytes] = {
    # 1 / (1 + exp(-x))
    "logistic": _nnil(N.LDC_R4_1, N.LDC_R4_1, N.LDA_0, N.NEG, N.EXP, N.ADD, N.DIV, N.RET),
    # tanh(x) = 2 / (1 + exp(-2x)) - 1: saturates to ±1 instead of inf/inf = NaN
    "tanh": _nnil(2.0, N.LDC_R4_1, N.LDA_0, -2.0, N.MUL, N.EXP, N.ADD, N.DIV, N.LDC_R4_1, N.SUB, N.RET),
    # sqrt(x) = exp(0.5 * log(x)); exact 0 at x = 0 (exp(-inf)), NaN below like sqrtf
    "sqrt": _nnil(N.LDA_0, N.LOG, 0.5, N.MUL, N.EXP, N.RET),
    # round half to even: (x + 1.5*2^23) - 1.5*2^23 in float32 arithmetic (exact for |x| < 2^22;
    # nnil has no round instruction)
    "round": _nnil(N.LDA_0, 12582912.0, N.ADD, 12582912.0, N.SUB, N.RET),
    # x * clamp(x + 3, 0, 6) / 6
    "hard_swish": _nnil(N.LDA_0, N.LDA_0, 3.0, N.ADD, N.LDC_R4_0, 6.0, N.CLAMP, N.MUL, 6.0, N.DIV, N.RET),
    # silu(x) = x * logistic(x) = x / (1 + exp(-x)): one pass instead of logistic and mul
    "silu": _nnil(N.LDA_0, N.LDC_R4_1, N.LDA_0, N.NEG, N.EXP, N.ADD, N.DIV, N.RET),
}


def _unary(n: Node, st: Storage) -> K.Body:
    x = n.inputs[0]
    name = n.op.op
    if name.upper() in UnaryOp.__members__:
        return K.Unary(input=st.range(x), output=st.range(n), unary_op=UnaryOp[name.upper()])
    if name not in _NNIL_UNARY:
        raise UnsupportedModelError(f"'{n.name}': unary op {name} has no kmodel v4 lowering")
    return K.NnilUnaryMethod(input=st.range(x), output=st.range(n), program=_NNIL_UNARY[name])


def _leaky_relu(n: Node, st: Storage) -> K.Body:
    # x >= 0 ? x : a*x  ==  max(x, a*x) for a <= 1, min(x, a*x) for a > 1
    pick = N.MAX if n.op.alpha <= 1 else N.MIN
    prog = _nnil(N.LDA_0, N.LDA_0, float(n.op.alpha), N.MUL, pick, N.RET)
    return K.NnilUnaryMethod(input=st.range(n.inputs[0]), output=st.range(n), program=prog)


def _reduce(n: Node, st: Storage) -> K.Body:
    x = n.inputs[0]
    op = n.op.op
    init = {"mean": 0.0, "sum": 0.0, "min": FLT_MAX, "max": -FLT_MAX}[op]
    return K.Reduce(input=st.range(x), output=st.range(n), reduce_op=ReduceOp[op.upper()],
                    in_shape=shape4(x.shape), out_shape=shape4(n.shape), init_value=init)


def _pool2d(n: Node, st: Storage) -> K.Body:
    op: O.Pool2D = n.op
    x = n.inputs[0]
    return K.ReduceWindow2D(input=st.range(x), output=st.range(n), reduce_op=ReduceOp[op.op.upper()],
                            in_shape=shape4(x.shape), padding_h=K.Padding(*op.padding[0]),
                            padding_w=K.Padding(*op.padding[1]), filter_h=op.filter[0], filter_w=op.filter[1],
                            stride_h=op.stride[0], stride_w=op.stride[1],
                            init_value=-FLT_MAX if op.op == "max" else 0.0,
                            fused_activation=value_range(op.act))


def _softmax(n: Node, st: Storage) -> K.Body:
    inner = n.shape[-1]
    return K.Softmax(input=st.range(n.inputs[0]), output=st.range(n), inner_size=inner,
                     outer_size=n.type.size // inner, beta=n.op.beta)


def _resize(n: Node, st: Storage) -> K.Body:
    op: O.Resize = n.op
    mode = ResizeMode.BILINEAR if op.mode == "bilinear" else ResizeMode.NEAREST_NEIGHBOR
    return K.ResizeImage(input=st.range(n.inputs[0]), output=st.range(n), in_shape=shape4(n.inputs[0].shape),
                         out_h=op.size[0], out_w=op.size[1], mode=mode, align_corners=op.align_corners)


def _axis4(rank: int, axis: int) -> int:
    return axis + 4 - rank


def _concat(n: Node, st: Storage) -> K.Body:
    axis = n.op.axis
    shape = n.shape
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64)) * n.dtype.itemsize
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    return K.Concat(output=st.range(n), inner_size=inner, outer_size=outer,
                    inputs=tuple(st.range(i) for i in n.inputs), dims=tuple(i.shape[axis] for i in n.inputs))


def _transpose(n: Node, st: Storage) -> K.Body:
    x = n.inputs[0]
    extra = 4 - x.type.rank
    perm = tuple(range(extra)) + tuple(p + extra for p in n.op.perm)
    return K.Transpose(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape), perm=K.Shape4(*perm))


def _pad(n: Node, st: Storage) -> K.Body:
    x = n.inputs[0]
    pads = [(0, 0)] * (4 - x.type.rank) + list(n.op.paddings)
    value = K.Scalar.of_float(n.op.value) if n.dtype == DType.float32 else K.Scalar.of_uint8(int(n.op.value))
    return K.Pad(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape),
                 paddings=K.Paddings4(*(K.Padding(*p) for p in pads)), pad_value=value)


def _strided_slice(n: Node, st: Storage) -> K.Body:
    x = n.inputs[0]
    op: O.StridedSlice = n.op
    return K.StridedSlice(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape),
                          begin=shape4(op.begin, 0), end=shape4(op.end, 1), strides=shape4(op.strides, 1))


NEUTRAL_EMITTERS: dict[type, Emit] = {
    O.Conv2D: _conv2d,
    O.Conv2DTranspose: _conv2d_transpose,
    O.MatMul: _matmul,
    O.Binary: _binary,
    O.Unary: _unary,
    O.LeakyRelu: _leaky_relu,
    O.Reduce: _reduce,
    O.Pool2D: _pool2d,
    O.Softmax: _softmax,
    O.Resize: _resize,
    O.Concat: _concat,
    O.Transpose: _transpose,
    O.Pad: _pad,
    O.StridedSlice: _strided_slice,
}
