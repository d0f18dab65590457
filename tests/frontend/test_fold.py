"""Integer shape arithmetic folds to constants while importing (kcc.frontend.tflite.fold), checked
against the TFLite interpreter, which computes the same integers at run time.

The folded values are made observable in float outputs: a RESHAPE / RESIZE consuming them, or a CAST
to float added to a graph input.
"""

from __future__ import annotations

import numpy as np
import pytest
from tflite_builder import TfliteBuilder, check_against_tflite

from kcc.errors import ModelFormatError, UnsupportedModelError
from kcc.frontend import import_tflite
from kcc.frontend.tflite.fold import foldable_ops
from kcc.frontend.tflite.reader import read_tflite
from kcc.ir import ops as O
from kcc.ir.types import DType

rng = np.random.default_rng(11)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def i32(*values):
    return np.array(values, np.int32)


def scalar(v):
    return np.array(v, np.int32)


def _all_float(graph) -> bool:
    return all(n.dtype == DType.float32 for n in graph)


def _keras_reshape_model() -> TfliteBuilder:
    """What TF2 makes of Keras `Reshape((-1, 2))` on a conv output (the Ultra-Light face detector's
    export): SHAPE -> STRIDED_SLICE (batch, shrink) -> PACK(batch, -1, 2) -> RESHAPE, batch dynamic."""
    b = TfliteBuilder()
    x = b.input([1, 6, 8, 3], name="image", signature=[-1, 6, 8, 3])
    y = b.op("CONV_2D", [x, b.const(randn(4, 3, 3, 3)), b.const(randn(4))], padding="SAME", stride_w=1,
             stride_h=1, name="conv")
    s = b.op("SHAPE", [y], out_type="INT32", name="shape")
    n = b.op("STRIDED_SLICE", [s, b.const(i32(0)), b.const(i32(1)), b.const(i32(1))], out_type="INT32",
             shrink_axis_mask=1, name="batch", out_shape=[])
    target = b.op("PACK", [n, b.const(scalar(-1)), b.const(scalar(2))], out_type="INT32", axis=0,
                  values_count=3, name="target")
    # As the converter writes them: the shapes it saw with batch 1 and unknown rows, -1 in the signature.
    r = b.op("RESHAPE", [y, target], name="reshape", out_shape=[1, 1, 2])
    out = b.op("SOFTMAX", [r], beta=1.0, name="scores", out_shape=[1, 1, 2])
    for t in (r, out):
        b.tensors[t].signature = [-1, -1, 2]
    b.output(out)
    return b


def test_keras_reshape_chain_folds_and_matches_tflite():
    b = _keras_reshape_model()
    data = b.build()
    model = read_tflite(data)
    assert {model.operators[i].opcode for i in foldable_ops(model)} == {"SHAPE", "STRIDED_SLICE", "PACK"}
    graph = check_against_tflite(data, [randn(1, 6, 8, 3)])
    assert _all_float(graph)  # no integer tensor reaches the IR
    reshapes = [n for n in graph if isinstance(n.op, O.Reshape)]
    assert [n.shape for n in reshapes] == [(1, 96, 2)]
    assert not any(n.name in ("shape", "batch", "target") for n in graph)


def test_flatten_and_upsampling_chains_match_tflite():
    """Keras Flatten (REDUCE_PROD of the trailing dims) and UpSampling2D (MUL of H, W) chains."""
    b = TfliteBuilder()
    x = b.input([1, 3, 4, 2], name="x")
    s = b.op("SHAPE", [x], out_type="INT32")
    hw = b.op("STRIDED_SLICE", [s, b.const(i32(1)), b.const(i32(3)), b.const(i32(1))], out_type="INT32")
    size = b.op("MUL", [hw, b.const(i32(2, 3))], out_type="INT32")
    up = b.op("RESIZE_NEAREST_NEIGHBOR", [x, size])
    s2 = b.op("SHAPE", [up], out_type="INT32")
    batch = b.op("STRIDED_SLICE", [s2, b.const(i32(0)), b.const(i32(1)), b.const(i32(1))], out_type="INT32",
                 shrink_axis_mask=1, out_shape=[])
    rest = b.op("STRIDED_SLICE", [s2, b.const(i32(1)), b.const(i32(0)), b.const(i32(1))], out_type="INT32",
                end_mask=1)
    prod = b.op("REDUCE_PROD", [rest, b.const(i32(0))], out_type="INT32", keep_dims=False, out_shape=[])
    target = b.op("PACK", [batch, prod], out_type="INT32", axis=0, values_count=2)
    b.output(b.op("RESHAPE", [up, target], out_shape=[1, 144]))
    graph = check_against_tflite(b, [randn(1, 3, 4, 2)])
    assert graph.outputs[0].shape == (1, 6 * 12 * 2) and _all_float(graph)


def _observed(int_expr) -> TfliteBuilder:
    """A model whose float output is z + float(int_expr(b, shape_of_x)), shape_of_x = [1, 5, 7, 3]."""
    b = TfliteBuilder()
    x = b.input([1, 5, 7, 3], name="x")
    z = b.input([4], name="z")
    v = int_expr(b, b.op("SHAPE", [x], out_type="INT32"))
    b.output(b.op("ADD", [z, b.op("CAST", [v], out_type="FLOAT32")]), b.op("RELU", [x]))
    return b


def _signed(b, s):
    """[1, 5, 7, 3] - [9, 2, 11, 4] = [-8, 3, -4, -1]: negative operands tell the roundings apart."""
    return b.op("SUB", [s, b.const(i32(9, 2, 11, 4))], out_type="INT32")


@pytest.mark.parametrize("opcode", ["ADD", "SUB", "MUL", "DIV", "FLOOR_DIV", "FLOOR_MOD", "MAXIMUM", "MINIMUM"])
def test_integer_arithmetic_matches_tflite(opcode):
    """C++ int32 semantics: DIV truncates toward zero, FLOOR_DIV/FLOOR_MOD round toward minus infinity."""
    b = _observed(lambda b, s: b.op(opcode, [_signed(b, s), b.const(i32(3, -2, 3, 2))], out_type="INT32"))
    graph = check_against_tflite(b, [randn(1, 5, 7, 3), randn(4)])
    assert _all_float(graph)


@pytest.mark.parametrize("name,expr", [
    ("gather", lambda b, s: b.op("GATHER", [s, b.const(i32(3, 0, 2, 1))], out_type="INT32", axis=0)),
    ("reverse", lambda b, s: b.op("STRIDED_SLICE", [s, b.const(i32(-1)), b.const(i32(0)), b.const(i32(-1))],
                                  out_type="INT32", end_mask=1)),
    ("concat", lambda b, s: b.op("CONCATENATION", [
        b.op("SLICE", [s, b.const(i32(1)), b.const(i32(2))], out_type="INT32", out_shape=[2]), b.const(i32(4, 9))],
        out_type="INT32", axis=0)),
    ("unpack_pack", lambda b, s: b.op("PACK", list(reversed(
        b.op("UNPACK", [s], n_outputs=4, out_type="INT32", num=4, axis=0))), out_type="INT32", axis=0,
        values_count=4)),
    ("reshape_transpose", lambda b, s: b.op("RESHAPE", [b.op("TRANSPOSE", [
        b.op("RESHAPE", [s, b.const(i32(2, 2))], out_type="INT32"), b.const(i32(1, 0))], out_type="INT32"),
        b.const(i32(4))], out_type="INT32")),
    ("reduce_keep_dims", lambda b, s: b.op("MUL", [s, b.op("SUM", [
        b.op("EXPAND_DIMS", [s, b.const(scalar(0))], out_type="INT32"), b.const(i32(1))], out_type="INT32",
        keep_dims=True)], out_type="INT32")),
])
def test_shape_ops_on_integers_match_tflite(name, expr):
    graph = check_against_tflite(_observed(expr), [randn(1, 5, 7, 3), randn(4)])
    assert _all_float(graph)


def test_run_time_integers_are_listed_with_a_hint():
    """Integers computed from the data (a cast of an activation) do not fold: one error lists them."""
    b = TfliteBuilder()
    x = b.input([1, 4], name="x")
    k = b.op("CAST", [x], out_type="INT32", name="as_int", out_shape=[1, 4])
    n = b.op("STRIDED_SLICE", [k, b.const(i32(0, 0)), b.const(i32(1, 2)), b.const(i32(1, 1))],
             out_type="INT32", name="first_two", out_shape=[1, 2])
    target = b.op("PACK", [n, n], out_type="INT32", name="target", axis=0, values_count=2, out_shape=[2, 1, 2])
    b.output(b.op("RESHAPE", [x, target], name="r", out_shape=[2, 2]))
    with pytest.raises(UnsupportedModelError) as e:
        import_tflite(b.build(), name="m.tflite")
    assert str(e.value) == (
        "m.tflite: 3 unsupported op types: CAST on run-time INT32 tensors x1 (first: 'as_int'), "
        "PACK on run-time INT32 tensors x1 (first: 'target'), "
        "STRIDED_SLICE on run-time INT32 tensors x1 (first: 'first_two')")
    assert "folds integer shape arithmetic" in e.value.hint


def test_a_folded_shape_disagreeing_with_the_file_is_a_format_error():
    b = TfliteBuilder()
    x = b.input([1, 2, 3, 4], name="x")
    s = b.op("SHAPE", [x], out_type="INT32", name="s", out_shape=[3])
    b.output(b.op("RESHAPE", [x, s], out_shape=[1, 2, 12]))
    with pytest.raises(ModelFormatError, match=r"^m.tflite: SHAPE 's': the model declares shape \[3\] for 's' "
                                               r"but the op computes \[4\]$"):
        import_tflite(b.build(), name="m.tflite")


def test_integer_division_by_zero_is_reported():
    b = TfliteBuilder()
    x = b.input([1, 2, 3, 4], name="x")
    s = b.op("SHAPE", [x], out_type="INT32", out_shape=[4])
    q = b.op("FLOOR_DIV", [s, b.const(i32(1, 0, 1, 1))], out_type="INT32", name="q", out_shape=[4])
    b.output(b.op("RESHAPE", [x, q], out_shape=[1, 2, 3, 4]))
    with pytest.raises(UnsupportedModelError, match=r"^m.tflite: FLOOR_DIV 'q': integer division by zero$"):
        import_tflite(b.build(), name="m.tflite")


def test_a_folded_integer_graph_output_is_refused():
    b = TfliteBuilder()
    x = b.input([1, 2, 3, 4], name="x")
    b.output(b.op("RELU", [x]), b.op("SHAPE", [x], out_type="INT32", name="dims"))
    with pytest.raises(UnsupportedModelError, match=r"^m.tflite: graph output 'dims' is folded integer"):
        import_tflite(b.build(), name="m.tflite")
