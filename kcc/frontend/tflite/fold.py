"""Constant folding of integer shape arithmetic, so SHAPE-driven reshapes import with static shapes.

TF2/Keras exports compute the target of many RESHAPEs at run time: `Reshape((-1, 2))` on a map
becomes SHAPE -> STRIDED_SLICE (the batch) -> PACK(batch, -1, 2) -> RESHAPE (the Ultra-Light face
detector's own TFLite export has eight such chains; Keras Flatten adds REDUCE_PROD, upsampling layers
MUL). kcc's graph inputs have static shapes (importer._check_inputs: only the batch may be dynamic
and then the file's own shape is used), so every IR tensor's shape is known while importing and those
chains are constants. ncc refuses them (ecosystem.md P1), as kcc did before this module.

Two halves:
* `foldable_ops(model)` looks at the file alone, before anything is built, and returns the operators
  that fold: an op of `FOLDERS` whose outputs are integer tensors (INT32/INT64 without quantization
  parameters: shapes, indices, sizes) and whose inputs are all constant-derivable (a buffer or the
  output of a folded op); SHAPE needs only its input's shape, which is always static. CAST folds too
  when its input is constant-derivable (an integer shape turned float, e.g. for a resize scale). The
  importer's scan does not report these ops, and reports the integer ops that do not fold (integers
  computed from the input data) as computing on run-time integer tensors.
* `fold_op(ctx, op)` computes a foldable op's outputs in numpy while importing (operators come in
  execution order) and keeps them in `ctx.folded`; `ImportContext.const` reads them like constant
  buffers, so the consuming RESHAPE (or PAD, STRIDED_SLICE, RESIZE...) sees a constant operand. No IR
  node is made for them.

Float ops are never folded here, even on constant inputs: the IR's own passes fold those, and models
kcc imported before keep their graphs node for node.
Semantics follow tensorflow/lite/kernels/*.cc on int32: C++ integer arithmetic wraps (numpy int32
does the same), DIV truncates toward zero, FLOOR_DIV / FLOOR_MOD round toward minus infinity.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kcc.errors import ModelFormatError
from kcc.frontend.tflite.context import ImportContext, axis_index
from kcc.frontend.tflite.ops.shape import resolve_shape
from kcc.frontend.tflite.ops.slice import slice_ranges, strided_ranges
from kcc.frontend.tflite.reader import TfliteModel, TfliteOperator, TfliteTensor

INTEGER_TYPES = ("INT32", "INT64")  # the types of TFLite shape arithmetic (SHAPE's out_type)

FoldFn = Callable[[ImportContext, TfliteOperator], list[np.ndarray]]


def is_integer(tensor: TfliteTensor) -> bool:
    """An integer tensor that is not a quantized real value (those are kcc.frontend.quantization's)."""
    return tensor.type_name in INTEGER_TYPES and tensor.quant is None


def foldable_ops(model: TfliteModel) -> frozenset[int]:
    """Indices of the operators `fold_op` computes while importing (see the module docstring)."""
    known = {t.index for t in model.tensors if t.data is not None}
    folded = set()
    for op in model.operators:
        if op.opcode not in FOLDERS or not op.outputs:
            continue
        integer_out = all(is_integer(model.tensors[t]) for t in op.outputs)
        if not (integer_out or op.opcode == "CAST"):
            continue
        operands = [t for t in op.inputs[1 if op.opcode == "SHAPE" else 0:] if t >= 0]
        if all(t in known for t in operands):
            folded.add(op.index)
            known.update(op.outputs)
    return frozenset(folded)


def integer_op(model: TfliteModel, op: TfliteOperator) -> bool:
    """Whether `op` is shape arithmetic (an op of FOLDERS writing integers); when it is not in
    `foldable_ops`, its integers come from the input data, which kcc cannot compute."""
    return op.opcode in FOLDERS and any(is_integer(model.tensors[t]) for t in op.outputs)


def fold_op(ctx: ImportContext, op: TfliteOperator) -> None:
    """Compute a foldable op's outputs into `ctx.folded`, checked against the shapes the file declares."""
    model = ctx.model
    where = f"{model.name}: {op.opcode} '{ctx.out_name(op)}'"
    try:
        values = FOLDERS[op.opcode](ctx, op)
    except (ValueError, IndexError, ZeroDivisionError, FloatingPointError) as e:  # numpy on inconsistent operands
        raise ModelFormatError(f"{where}: cannot fold the constant operands ({e})") from None
    if len(values) != len(op.outputs):
        raise ModelFormatError(f"{where}: the op has {len(op.outputs)} output tensors, expected {len(values)}")
    for t, value in zip(op.outputs, values):
        tensor = model.tensors[t]
        value = np.asarray(value)
        if not tensor.is_dynamic and tuple(value.shape) != tuple(tensor.shape):
            raise ModelFormatError(f"{where}: the model declares shape {list(tensor.shape)} for "
                                   f"'{tensor.name}' but the op computes {list(value.shape)}")
        if tensor.dtype is None:
            raise ctx.unsupported(op, f"output '{tensor.name}' is {tensor.type_name}")
        ctx.folded[t] = value.astype(tensor.dtype)


# ------------------------------------------------------------------------------ the folders
def _ints(ctx: ImportContext, op: TfliteOperator, i: int, what: str = "") -> np.ndarray:
    value = np.asarray(ctx.const(op, i, what))
    if value.dtype.kind not in "iu":
        raise ctx.unsupported(op, f"{what or f'input {i}'} must be an integer tensor, is {value.dtype}")
    return value


def _no_activation(ctx: ImportContext, op: TfliteOperator) -> None:
    act = op.opt("fused_activation_function", "NONE")
    if act != "NONE":
        raise ctx.unsupported(op, f"fused activation {act} on integer tensors")


def _axis(ctx: ImportContext, op: TfliteOperator, axis: int, rank: int) -> int:
    a = axis_index(axis, rank)
    if not 0 <= a < rank:
        raise ctx.unsupported(op, f"axis {axis} out of range for rank {rank}")
    return a


def _shape(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    return [np.array(ctx.shape(op, 0), np.int64)]


def _cast(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    # TFLite's cast is a C++ static_cast: float -> int truncates toward zero, as numpy's astype does.
    return [np.asarray(ctx.const(op, 0))]


def _reshape(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    x = np.asarray(ctx.const(op, 0))
    if ctx.has_input(op, 1):
        target = [int(v) for v in _ints(ctx, op, 1, "shape").ravel()]
    elif op.opt("new_shape"):
        target = list(op.opt("new_shape"))
    else:
        target = list(ctx.out_shape(op))
    return [x.reshape(resolve_shape(ctx, op, x.size, target))]


def _squeeze(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    x = np.asarray(ctx.const(op, 0))
    dims = tuple(sorted({_axis(ctx, op, d, x.ndim) for d in op.opt("squeeze_dims", ())}))
    return [np.squeeze(x, dims or None)]


def _expand_dims(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    x = np.asarray(ctx.const(op, 0))
    (axis,) = (int(v) for v in _ints(ctx, op, 1, "axis").ravel())
    axis = axis + x.ndim + 1 if axis < 0 else axis
    if not 0 <= axis <= x.ndim:
        raise ctx.unsupported(op, f"axis {axis} out of range for rank {x.ndim}")
    return [np.expand_dims(x, axis)]


def _transpose(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    x = np.asarray(ctx.const(op, 0))
    perm = [axis_index(int(p), x.ndim) for p in _ints(ctx, op, 1, "perm").ravel()]
    if sorted(perm) != list(range(x.ndim)):
        raise ctx.unsupported(op, f"perm {perm} for rank {x.ndim}")
    return [np.transpose(x, perm)]


def _take(x: np.ndarray, ranges: list[tuple[int, int, int]]) -> np.ndarray:
    """x at the per-axis index ranges (begin, end, stride) of kcc.frontend.tflite.ops.slice."""
    return x[np.ix_(*(np.arange(b, e, s) for b, e, s in ranges))] if ranges else x


def _strided_slice(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    x = np.asarray(ctx.const(op, 0))
    ranges, out_shape = strided_ranges(ctx, op, x.shape)
    return [_take(x, ranges).reshape(out_shape)]


def _slice(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    x = np.asarray(ctx.const(op, 0))
    return [_take(x, slice_ranges(ctx, op, x.shape))]


def _pack(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    xs = [np.asarray(ctx.const(op, i)) for i in range(len(op.inputs))]
    rank = xs[0].ndim
    axis = op.opt("axis", 0)
    axis = axis + rank + 1 if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise ctx.unsupported(op, f"axis {op.opt('axis')} out of range for rank {rank}")
    return [np.stack(xs, axis)]


def _unpack(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    x = np.asarray(ctx.const(op, 0))
    axis = _axis(ctx, op, op.opt("axis", 0), x.ndim)
    return [np.take(x, k, axis) for k in range(x.shape[axis])]


def _concatenation(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    _no_activation(ctx, op)
    xs = [np.asarray(ctx.const(op, i)) for i in range(len(op.inputs))]
    return [np.concatenate(xs, _axis(ctx, op, op.opt("axis", 0), xs[0].ndim))]


def _gather(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
    """params.take(indices, axis) (tensorflow/lite/kernels/gather.cc); batch_dims 0 only."""
    params, indices = np.asarray(ctx.const(op, 0)), _ints(ctx, op, 1, "indices")
    if op.opt("batch_dims", 0):
        raise ctx.unsupported(op, f"batch_dims {op.opt('batch_dims')} on constant integers")
    axis = _axis(ctx, op, op.opt("axis", 0), params.ndim)
    if indices.size and not (0 <= indices.min() and indices.max() < params.shape[axis]):
        raise ctx.unsupported(op, f"indices {indices.ravel().tolist()} out of range for an axis of size "
                                  f"{params.shape[axis]}")
    return [np.take(params, indices, axis)]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], divides: bool = False) -> FoldFn:
    def fold(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
        _no_activation(ctx, op)
        a, b = (np.asarray(ctx.const(op, i)) for i in (0, 1))
        if divides and a.dtype.kind in "iu" and not b.all():
            raise ctx.unsupported(op, "integer division by zero")
        dtype = np.result_type(a, b)
        with np.errstate(over="ignore"):  # C++ int32 arithmetic wraps, as numpy's does
            return [np.asarray(fn(a, b)).astype(dtype)]
    return fold


def _truncating_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C++ integer `/` (tensorflow/lite/kernels/div.cc on int32): the quotient rounded toward zero."""
    if a.dtype.kind not in "iu" or b.dtype.kind not in "iu":
        return a / b
    q = np.floor_divide(a, b)
    return q + ((q < 0) & (q * b != a))


def _reducer(fn: Callable[..., np.ndarray]) -> FoldFn:
    def fold(ctx: ImportContext, op: TfliteOperator) -> list[np.ndarray]:
        x = np.asarray(ctx.const(op, 0))
        axes = tuple(sorted({_axis(ctx, op, int(a), x.ndim) for a in _ints(ctx, op, 1, "axes").ravel()}))
        return [fn(x, axis=axes, keepdims=bool(op.opt("keep_dims", False))).astype(x.dtype)]
    return fold


# TFLite builtin op -> numpy implementation on constant operands. Only what shape arithmetic needs.
FOLDERS: dict[str, FoldFn] = {
    "SHAPE": _shape,
    "CAST": _cast,
    "RESHAPE": _reshape,
    "SQUEEZE": _squeeze,
    "EXPAND_DIMS": _expand_dims,
    "TRANSPOSE": _transpose,
    "STRIDED_SLICE": _strided_slice,
    "SLICE": _slice,
    "PACK": _pack,
    "UNPACK": _unpack,
    "CONCATENATION": _concatenation,
    "GATHER": _gather,
    "ADD": _binary(np.add),
    "SUB": _binary(np.subtract),
    "MUL": _binary(np.multiply),
    "DIV": _binary(_truncating_div, divides=True),
    "FLOOR_DIV": _binary(np.floor_divide, divides=True),
    "FLOOR_MOD": _binary(np.mod, divides=True),
    "MAXIMUM": _binary(np.maximum),
    "MINIMUM": _binary(np.minimum),
    "REDUCE_PROD": _reducer(np.prod),
    "SUM": _reducer(np.sum),
    "REDUCE_MAX": _reducer(np.max),
    "REDUCE_MIN": _reducer(np.min),
}

__all__ = ["FOLDERS", "INTEGER_TYPES", "fold_op", "foldable_ops", "integer_op", "is_integer"]
