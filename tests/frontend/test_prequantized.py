"""Import of pre-quantized (uint8 / int8) .tflite models: the float graph the model represents.

Why: kcc compiles such a model without a dataset by reusing its own grids (kcc.quant.prequantized).
So the import must (1) compute exactly what the model's float twin computes (constants dequantized
as TFLite defines it, QUANTIZE/DEQUANTIZE edges gone), and (2) keep the grid of every activation
tensor under the name of the IR node that carries it. Whatever has no uint8 equivalent must fail
with one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import refkit
from quantized_models import QBuilder, int8_per_channel, mobilenet_block
from tflite_builder import TfliteBuilder, run_tflite, to_ir_layout

from kcc.errors import UnsupportedModelError
from kcc.eval.interpreter import run
from kcc.frontend import import_model, import_tflite
from kcc.frontend.quantization import TensorQuant
from kcc.frontend.tflite.importer import is_prequantized
from kcc.frontend.tflite.reader import read_tflite
from kcc.ir import ops as O
from kcc.passes.canonicalize import canonicalize
from kcc.quant.weight_grid import weight_grid

rng = np.random.default_rng(1)


def _u8_input(shape=(1, 16, 16, 3)) -> tuple[np.ndarray, np.ndarray]:
    u8 = rng.integers(0, 256, shape).astype(np.uint8)
    return u8, ((u8.astype(np.float32) - 128) / 128).astype(np.float32)


def test_uint8_model_computes_its_float_twin():
    graph = import_tflite(mobilenet_block(True), name="q.tflite")
    for _ in range(3):
        u8, real = _u8_input()
        got = run(graph, [to_ir_layout(real)])[0]
        twin = run_tflite(mobilenet_block(False), [real])[0]
        np.testing.assert_allclose(got, twin, rtol=1e-5, atol=1e-6)
        # and TFLite's own uint8 kernels agree with it up to their rounding (softmax grid 1/256)
        assert np.abs(run_tflite(mobilenet_block(True), [u8])[0] / 256 - got).max() <= 3 / 256


def test_every_activation_grid_is_kept_under_its_ir_node_name():
    data = mobilenet_block(True)
    imported = import_model(data)
    grids = imported.quantization.activations
    model = read_tflite(data)
    expect = {t.name: TensorQuant(float(t.quant.scale[0]), int(t.quant.zero_point[0]), "UINT8")
              for t in model.tensors if t.type_name == "UINT8" and t.data is None}
    assert grids == expect and len(grids) == 8  # input, 4 convs, pool, reshape, softmax
    names = {n.name for n in canonicalize(imported.graph).nodes}
    assert set(grids) <= names
    assert imported.quantization.producers["prob"] == ("other", "flat")
    assert imported.quantization.notes() == []  # per-tensor uint8: nothing to warn about


def test_weights_are_dequantized_exactly_onto_a_lossless_uint8_grid():
    data = mobilenet_block(True)
    graph = import_tflite(data)
    t = next(t for t in read_tflite(data).tensors if t.name == "conv0_w")
    want = ((t.data.astype(np.float64) - int(t.quant.zero_point[0])) * float(t.quant.scale[0])).astype(np.float32)
    w = next(n for n in graph.nodes if n.name == "conv0_w/oihw").data
    np.testing.assert_array_equal(w, want.transpose(0, 3, 1, 2))
    grid = weight_grid(w)  # what kcc's KPU quantizer then uses: the very codes, on the same step
    assert grid is not None
    shift = int(t.quant.zero_point[0]) - grid.zero_point  # the grid starts at the smallest code used
    np.testing.assert_array_equal(grid.quantize(w).astype(int), t.data.transpose(0, 3, 1, 2).astype(int) - shift)
    assert abs(grid.scale * float(t.quant.scale[0]) - 1) < 2e-7


def test_int8_grids_shift_onto_uint8_and_the_quantize_edges_vanish():
    imported = import_model(int8_per_channel(True))
    g = imported.graph
    assert not any(n.note in ("QUANTIZE", "DEQUANTIZE") for n in g.nodes)
    assert [n.dtype.name for n in g.inputs] == ["float32"]
    grids = imported.quantization.activations
    # the float input takes the grid of the QUANTIZE behind it; int8 zero points move by +128
    assert grids["input"] == TensorQuant(np.float32(2 / 255), 127, "INT8")
    assert grids["conv0"].zero_point == 0 and grids["dw1"].zero_point == 85
    x = rng.uniform(-1, 1, (1, 12, 12, 4)).astype(np.float32)
    np.testing.assert_allclose(run(g, [to_ir_layout(x)])[0], to_ir_layout(run_tflite(int8_per_channel(False), [x])[0]),
                               rtol=1e-5, atol=1e-5)


def test_symmetric_per_channel_int8_weights_need_no_warning():
    """TFLite's per-channel int8 weights (zero points 0) stay exact (kcc.quant.weight_grid.channel_grids)."""
    q = import_model(int8_per_channel(True)).quantization
    assert q.per_channel_weights == [] and q.notes() == []


def test_asymmetric_per_channel_weights_are_named_in_a_warning():
    b = QBuilder(True)
    x = b.qinput([1, 6, 6, 2], "x", 1 / 128, 128)
    q = np.random.default_rng(3).integers(0, 256, (3, 3, 3, 2)).astype(np.uint8)
    w = b.weights(q, [0.01, 0.02, 0.03], [120, 130, 125], 0, "asym_w")
    bias = b.bias(np.zeros(3, np.int64), [0.01 / 128, 0.02 / 128, 0.03 / 128], "asym_b")
    # (TFLite itself only accepts symmetric per-channel weights, so its shape inference is bypassed)
    b.output(b.qop("CONV_2D", [x, w, bias], "y", 0.05, 128, out_shape=[1, 6, 6, 3], padding="SAME", stride_h=1,
                   stride_w=1))
    quant = import_model(b.build()).quantization
    assert quant.per_channel_weights == ["asym_w"]  # the int32 bias is exact, not listed
    (note,) = quant.notes()
    assert "1 weight tensor(s) are quantized per channel with zero points (e.g. 'asym_w')" in note
    assert "\n" not in note


def test_weights_only_model_imports_with_float_activations():
    """Dynamic-range models (int8 weights, float activations) import too; they carry no activation
    grids, so they are calibrated like float models."""
    b = TfliteBuilder()
    x = b.input([1, 6], name="x")
    q = rng.integers(-127, 128, (3, 6)).astype(np.int8)
    w = b.const(q, name="w", quant=([0.05], [0], 0))
    b.output(b.op("FULLY_CONNECTED", [x, w, -1], name="y", out_shape=[1, 3]))
    imported = import_model(b.build())
    assert imported.quantization is not None and not imported.quantization.fully_quantized
    v = rng.standard_normal((1, 6)).astype(np.float32)
    np.testing.assert_allclose(run(imported.graph, [v])[0], v @ (q.astype(np.float32) * np.float32(0.05)).T, rtol=1e-5)
    assert not is_prequantized(b.build())


def _quantize_to(type_name: str, quant) -> bytes:
    b = QBuilder(False)
    x = b.input([1, 4], name="x")
    y = b.op("QUANTIZE", [x], name="q", out_type=type_name, out_shape=[1, 4])
    b.tensors[y].quant = quant
    b.output(b.op("DEQUANTIZE", [y], name="dq", out_shape=[1, 4]))
    return b.build()


@pytest.mark.parametrize("type_name,quant,message", [
    ("INT16", (np.array([1e-3], np.float32), np.array([0]), 0), r"int16 activations \(e.g. 'q'\)"),
    ("INT8", None, r"int8 tensor 'q' has no quantization scale"),
    ("UINT8", (np.array([0.1, 0.2, 0.3, 0.4], np.float32), np.array([0, 0, 0, 0]), 1),
     r"activation 'q' is quantized per channel \(4 scales\)"),
])
def test_quantization_without_a_uint8_equivalent_is_one_line(type_name, quant, message):
    with pytest.raises(UnsupportedModelError, match=r"^m.tflite: unsupported quantization: " + message) as e:
        import_tflite(_quantize_to(type_name, quant), name="m.tflite")
    assert "\n" not in str(e.value) and e.value.hint


def test_coral_mobilenet_imports_as_its_dequantized_twin():
    """The reference kit's `_dequant_float` twin was made by a different tool (TF's flatbuffer_utils):
    both imports must compute bit-identical results. (The twin ships as datasets/' example model.)"""
    name = "mobilenet_v1_0.25_128"
    models = refkit.SHIPPED_MODELS
    d = models / name
    imported = import_model(d / f"{name}_quant.tflite")
    twin_path = refkit.tflite_path(name, models)
    twin = import_tflite(twin_path)
    (s,) = refkit.samples(name, 1, models)
    np.testing.assert_array_equal(run(imported.graph, [s.x])[0], run(twin, [s.x])[0])
    q = imported.quantization
    assert len(q.activations) == 32 and q.per_channel_weights == [] and q.activations["input"] == TensorQuant(
        0.0078125, 128, "UINT8")
    assert is_prequantized(d / f"{name}_quant.tflite") and not is_prequantized(twin_path)
    assert not any(isinstance(n.op, O.Input) and n.dtype.name != "float32" for n in imported.graph.nodes)
