"""Pre-quantized .tflite -> kmodel without a dataset -> kpu_sim, against TFLite's own quantized kernels.

Why: a uint8/int8 model states the grid of every activation; kcc must compile it on exactly those
grids (no calibration) and then compute what TFLite's integer kernels compute, up to rounding.
The three-model figures are bench/prequantized.py; here the 0.25 MobileNet on its 10 images.
"""

from __future__ import annotations

import numpy as np
import pytest
import refkit
from quantized_models import conv_logistic, int8_per_channel, mobilenet_block
from tflite_builder import TfliteBuilder, run_tflite

import kpu_sim
from kcc import cli
from kcc.errors import DatasetError
from kcc.frontend import import_model
from kcc.ir import kpu_ops as KO
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph, compile_model

FAST = {"max_allocator_solve_secs": 0}
rng = np.random.default_rng(2)
CORAL = "mobilenet_v1_0.25_128"
MODELS = refkit.SHIPPED_MODELS  # the Coral model, its 10 inputs and TFLite's outputs ship in tests/reference


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def coral_build():
    """The default build of the Coral 0.25 MobileNet (uint8 input, no dataset) and its log."""
    lines: list[str] = []
    res = compile_model(MODELS / CORAL / f"{CORAL}_quant.tflite", CompileOptions(**FAST), log=lines.append)
    return res, lines


def test_coral_mobilenet_compiles_without_a_dataset_and_agrees_with_tflite_uint8(coral_build):
    """Default build: uint8 input (the model's own pixels), every conv on the KPU on the model's grids.

    Bar: the logits (the last KPU layer's uint8 output) equal TFLite uint8's bit for bit on all 10
    images. With the exact clamp path (kcc.quant.kpu_params) and the average pool rounding on the
    CPU as TFLite's does, every rounding of the 28 layers is TFLite's; one flip anywhere in the net
    would change hundreds of logits by a step. Hence also top-1 and the per-image cosines, each within
    a few percent of TFLite uint8's own."""
    from ai_edge_litert.interpreter import Interpreter

    d = MODELS / CORAL
    res, lines = coral_build
    assert any("no calibration" in line for line in lines)
    convs = [p for p in res.placements if p.op != "pool2d"]
    assert len(convs) == 28 and all(p.on_kpu for p in convs)
    pools = [p for p in res.placements if p.op == "pool2d"]
    assert len(pools) == 1 and not pools[0].on_kpu and "rounds" in pools[0].reason
    # the kmodel takes the model's own uint8 pixels: the stem pads (and offsets) them with zero point 128
    stem = next(n for n in res.graph.nodes if isinstance(n.op, KO.QuantKpuLayer))
    assert res.graph.inputs[0].dtype.name == "uint8" and (stem.op.pad_value, stem.op.arg_w) == (128, -128)
    # every KPU layer writes exactly the grid of its tflite tensor
    grids = import_model(d / f"{CORAL}_quant.tflite").quantization.activations
    for n in res.graph.nodes:
        if isinstance(n.op, KO.QuantKpuLayer):
            tq = grids[n.name.removesuffix("/kpu").removesuffix("/full")]  # a row_pick conv and its pick
            assert n.op.out_q == (tq.zero_point, 1 / float(np.float32(tq.scale)))
    program = kpu_sim.load(res.kmodel)
    logits = next(n for n in res.graph.nodes if isinstance(n.op, KO.Dequantize) and n.type.size == 1001).inputs[0]
    while logits.name not in res.emitted.node_names:  # a reshape is a view, not a kmodel node
        logits = logits.inputs[0]
    at = res.emitted.node_names.index(logits.name)
    tfl = Interpreter(model_path=str(d / f"{CORAL}_quant.tflite"), experimental_preserve_all_tensors=True)
    tfl.allocate_tensors()
    tfl_logits = next(t["index"] for t in tfl.get_tensor_details() if t["name"].endswith("biases1"))
    meta = refkit.meta(CORAL, MODELS)
    for s in refkit.samples(CORAL, models=MODELS):
        u8 = np.load(d / "ref" / f"{s.name}.in_u8.npy")
        seen = {}
        out = program.run([_nchw(u8)], trace=lambda i, op, body, outs: seen.setdefault(i, np.array(outs[0])))[0]
        tfl.set_tensor(tfl.get_input_details()[0]["index"], u8)
        tfl.invoke()
        np.testing.assert_array_equal(seen[at].ravel(), tfl.get_tensor(tfl_logits).ravel(), err_msg=s.name)
        assert int(np.argmax(out)) == meta["samples"][s.name]["tflite_uint8_top1"], s.name
        # the float softmax of TFLite's logits, against the float twin: TFLite uint8's own error on this
        # input (meta.json, 5 digits) plus 5 %; measured at most 2.2 % above it (sunflower)
        tflite_err = 1 - meta["samples"][s.name]["tflite_uint8_vs_float_cosine"]
        assert 1 - refkit.compare(out, s.refs[0])[0] <= 1.05 * tflite_err + 1e-5, s.name


def test_coral_mobilenet_float_input_build_computes_the_same(coral_build):
    """--input-type float: fed the float twin's inputs (x = u8/128 - 1), the kmodel quantizes them
    back onto the model's input grid exactly, so the KPU sees the same bytes as the uint8 build."""
    d = MODELS / CORAL
    res = compile_model(d / f"{CORAL}_quant.tflite", CompileOptions(input_type="float", **FAST))
    quant = next(n for n in res.graph.nodes if isinstance(n.op, KO.Quantize))  # onto the input's grid
    assert (quant.op.zero_point, quant.op.scale) == (128, 128.0)
    as_float, as_uint8 = kpu_sim.load(res.kmodel), kpu_sim.load(coral_build[0].kmodel)
    for s in refkit.samples(CORAL, 3, MODELS):
        u8 = _nchw(np.load(d / "ref" / f"{s.name}.in_u8.npy"))
        np.testing.assert_array_equal(as_float.run([s.x])[0], as_uint8.run([u8])[0])


def test_uint8_layers_follow_tflites_integer_kernels():
    """Stride-2 stem (pre-pad + pick), depthwise, pointwise, CPU average pool, logits on a 1x1 map."""
    data = mobilenet_block(True)
    program = kpu_sim.load(compile_model(data, CompileOptions(**FAST)).kmodel)
    for _ in range(4):
        u8 = rng.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
        want = run_tflite(data, [u8])[0] / 256  # softmax output grid 1/256
        got = program.run([_nchw(u8)])[0]
        # the logits are TFLite's (next test); what is left is TFLite's rounding of its softmax to the
        # 1/256 grid (its fixed-point exp included): measured at most 0.85 of a step on 64 inputs
        assert np.abs(got - want.ravel()).max() <= 1 / 256


def test_uint8_logits_equal_tflites_bit_for_bit():
    """The same block, every intermediate rounding included: its uint8 logits (after the 8x8 average
    pool, which rounds half up on the codes, and four exact KPU layers) are TFLite's, on 32 inputs."""
    from ai_edge_litert.interpreter import Interpreter

    data = mobilenet_block(True)
    res = compile_model(data, CompileOptions(**FAST))
    program = kpu_sim.load(res.kmodel)
    logits = next(n for n in res.graph.nodes if isinstance(n.op, KO.QuantKpuLayer) and n.name.startswith("logits"))
    at = res.emitted.node_names.index("logits/u8")  # the KPU layer's 1x1 corner of its 4x4 map
    tfl = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
    tfl.allocate_tensors()
    want_index = next(t["index"] for t in tfl.get_tensor_details() if t["name"] == "logits")
    for _ in range(32):
        u8 = rng.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
        seen = {}
        program.run([_nchw(u8)], trace=lambda i, op, body, outs: seen.setdefault(i, np.array(outs[0])))
        tfl.set_tensor(tfl.get_input_details()[0]["index"], u8)
        tfl.invoke()
        np.testing.assert_array_equal(seen[at].ravel(), tfl.get_tensor(want_index).ravel())
    assert logits.op.act_table[1, 1] == 1  # the exact path: one slope-1 segment (multiplier 1)


def test_fused_activation_follows_tflite():
    """A LOGISTIC fused into the KPU layer: its table spans the conv's grid, its output the sigmoid's."""
    data = conv_logistic(True)
    program = kpu_sim.load(compile_model(data, CompileOptions(**FAST)).kmodel)
    u8 = rng.integers(0, 256, (1, 8, 8, 4)).astype(np.uint8)
    want = run_tflite(data, [u8])[0].astype(np.float32) / 256
    got = program.run([_nchw(u8)])[0].reshape(1, 6, 8, 8).transpose(0, 2, 3, 1)
    assert np.abs(got - want).max() <= 3 / 256  # measured 3 steps of the sigmoid's 1/256 grid on 64 inputs


def test_int8_per_channel_model_is_bit_exact_with_tflite():
    """int8 activations map exactly (+128); symmetric per-channel int8 weights are scaled onto one grid
    per layer and the scale undone by each channel's BN multiplier: no warning, and the output equals
    TFLite's default interpreter's bit for bit (float output: the same codes, dequantized)."""
    data = int8_per_channel(True)
    lines: list[str] = []
    res = compile_model(data, CompileOptions(input_type="float", **FAST), log=lines.append)
    assert not any("warning" in line for line in lines)
    program = kpu_sim.load(res.kmodel)
    for _ in range(4):
        x = rng.uniform(-1, 1, (1, 12, 12, 4)).astype(np.float32)
        want = _tflite_default(data, x)
        got = program.run([_nchw(x)])[0].reshape(1, 8, 12, 12).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(np.round(got / np.float32(6 / 255)), np.round(want / np.float32(6 / 255)))


def test_a_dataset_still_calibrates_a_prequantized_model():
    imported = import_model(mobilenet_block(True))
    samples = [[rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)] for _ in range(2)]
    lines: list[str] = []
    compile_graph(imported.graph, CompileOptions(input_type="float", **FAST), lines.append, samples=samples,
                  quantization=imported.quantization)
    assert any("2 sample(s)" in line for line in lines) and not any("no calibration" in line for line in lines)


def test_weights_only_model_still_needs_a_dataset():
    b = TfliteBuilder()
    x = b.input([1, 64], name="x")
    w = b.const(rng.integers(-127, 128, (32, 64)).astype(np.int8), name="w", quant=([0.02], [0], 0))
    b.output(b.op("FULLY_CONNECTED", [x, w, -1], name="y", out_shape=[1, 32]))
    with pytest.raises(DatasetError, match="--dataset is required"):
        compile_model(b.build(), CompileOptions(output_quantize_threshold=16, **FAST))


def test_cli_compiles_a_prequantized_model_without_dataset(tmp_path, capsys):
    model = tmp_path / "q.tflite"
    model.write_bytes(mobilenet_block(True))
    out = tmp_path / "q.kmodel"
    assert cli.main(["compile", str(model), str(out), "--max-allocator-solve-secs", "0"]) == 0
    assert "no calibration" in capsys.readouterr().out
    program = kpu_sim.load(out.read_bytes())
    assert program.inputs[0].dtype == np.uint8
    float_model = tmp_path / "f.tflite"
    float_model.write_bytes(mobilenet_block(False))
    assert cli.main(["compile", str(float_model), str(out)]) == 1  # a float model still needs --dataset
    assert "--dataset" in capsys.readouterr().err


def _tflite_default(data: bytes, u8: np.ndarray) -> np.ndarray:
    """TFLite's default interpreter, as users and the reference kit run it (XNNPACK for uint8 convs:
    one rounding of the product). The builtin kernels without the delegate round twice, gemmlowp's
    way (SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT), which moves every rounding
    boundary down by 2^-(e+1) of a step for a multiplier in [2^-(e+1), 2^-e): a different answer
    for ~0.3 % of the outputs of these layers; kcc computes the single, exact rounding."""
    from ai_edge_litert.interpreter import Interpreter

    tfl = Interpreter(model_content=data)
    tfl.allocate_tensors()
    tfl.set_tensor(tfl.get_input_details()[0]["index"], u8)
    tfl.invoke()
    return tfl.get_tensor(tfl.get_output_details()[0]["index"])


@pytest.mark.parametrize("seed", range(18))
def test_random_uint8_layer_is_bit_exact_with_tflite(seed):
    """Random single uint8 layers (conv 3x3 / 1x1 / depthwise 3x3; no activation, RELU, RELU6; random
    grids): the kmodel's output codes equal TFLite's default interpreter's on every element."""
    r = np.random.default_rng(100 + seed)
    kind = ["conv3", "conv1", "dw3"][seed % 3]
    act = ["NONE", "RELU", "RELU6"][(seed // 3) % 3]
    c_in, c_out = 6, (6 if kind == "dw3" else 10)
    s_in, z_in = float(r.uniform(0.005, 0.05)), int(r.integers(0, 256))
    s_out, z_out = float(r.uniform(0.01, 0.1)), (0 if act != "NONE" else int(r.integers(0, 256)))
    from quantized_models import QBuilder, _layer

    b = QBuilder(True)
    x = b.qinput([1, 8, 8, c_in], "x", s_in, z_in)
    k = 1 if kind == "conv1" else 3
    shape = (1, 3, 3, c_in) if kind == "dw3" else (c_out, k, k, c_in)
    w, bias = _layer(b, r, shape, s_in, "w")
    opts = dict(padding="SAME", stride_h=1, stride_w=1, fused_activation_function=act)
    if kind == "dw3":
        y = b.qop("DEPTHWISE_CONV_2D", [x, w, bias], "y", s_out, z_out, depth_multiplier=1, **opts)
    else:
        y = b.qop("CONV_2D", [x, w, bias], "y", s_out, z_out, **opts)
    b.output(y)
    data = b.build()
    program = kpu_sim.load(compile_model(data, CompileOptions(**FAST)).kmodel)
    for _ in range(3):
        u8 = r.integers(0, 256, (1, 8, 8, c_in)).astype(np.uint8)
        want = _tflite_default(data, u8).astype(np.int64)  # NHWC codes
        got = program.run([_nchw(u8)])[0].reshape(1, c_out, 8, 8).transpose(0, 2, 3, 1)
        codes = np.round(got.astype(np.float64) / np.float32(s_out) + z_out).astype(np.int64)
        np.testing.assert_array_equal(codes, want, err_msg=f"{kind} {act}")
