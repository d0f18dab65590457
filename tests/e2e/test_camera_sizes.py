"""A TFLite model at the MaixPy camera's 320x240 (QVGA) and at 320x320, compiled as a MaixPy user
compiles it (uint8 camera input, --input-mean/--input-std, a folder of pictures) and run in kpu_sim
against the TFLite interpreter: a TFLite SAME stride-2 stem (its full-size map over a KPU layer's
65536 pixels or 256 rows) and tiny YOLO's 3x3 conv + 2x2 max pool (320 rows) run on the KPU in row
bands (kcc.passes.row_bands), with no CPU pad, slice or float conv."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kcc.kmodel as km
import kpu_sim
from kcc.options import CompileOptions
from kcc.pipeline import compile_model


def _tflite_builder():
    """tests/tflite_builder.py, loaded by path once: only tests/support is on sys.path here
    (tests/conftest.py); the frontend tests import it by name."""
    if "tflite_builder" not in sys.modules:
        spec = importlib.util.spec_from_file_location("tflite_builder", Path(__file__).parents[1] / "tflite_builder.py")
        sys.modules["tflite_builder"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["tflite_builder"]


TfliteBuilder, run_tflite = _tflite_builder().TfliteBuilder, _tflite_builder().run_tflite

rng = np.random.default_rng(11)


def _mobilenet_stem(h: int, w: int) -> bytes:
    """A MobileNet's first layers: 3x3 stride-2 SAME conv (relu6), 3x3 depthwise (relu6), 1x1 conv."""
    b = TfliteBuilder()
    x = b.input([1, h, w, 3])
    y = b.op("CONV_2D", [x, b.const(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3),
                         b.const(rng.uniform(-0.1, 0.1, 16).astype(np.float32))],
             padding="SAME", stride_w=2, stride_h=2, fused_activation_function="RELU6")
    y = b.op("DEPTHWISE_CONV_2D", [y, b.const(rng.standard_normal((1, 3, 3, 16)).astype(np.float32) * 0.3),
                                   b.const(rng.uniform(-0.1, 0.1, 16).astype(np.float32))],
             padding="SAME", stride_w=1, stride_h=1, depth_multiplier=1, fused_activation_function="RELU6")
    y = b.op("CONV_2D", [y, b.const(rng.standard_normal((8, 1, 1, 16)).astype(np.float32) * 0.3),
                         b.const(np.zeros(8, np.float32))], padding="SAME", stride_w=1, stride_h=1)
    b.output(y)
    return b.build()


def _tiny_yolo_stem(h: int, w: int) -> bytes:
    """Tiny YOLO's first layers: 3x3 conv (leaky ReLU), 2x2 max pool, 3x3 conv."""
    b = TfliteBuilder()
    x = b.input([1, h, w, 3])
    y = b.op("CONV_2D", [x, b.const(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3),
                         b.const(rng.uniform(-0.1, 0.1, 16).astype(np.float32))], padding="SAME", stride_w=1, stride_h=1)
    y = b.op("LEAKY_RELU", [y], alpha=0.1)
    y = b.op("MAX_POOL_2D", [y], padding="VALID", stride_w=2, stride_h=2, filter_width=2, filter_height=2)
    y = b.op("CONV_2D", [y, b.const(rng.standard_normal((8, 3, 3, 16)).astype(np.float32) * 0.2),
                         b.const(np.zeros(8, np.float32))], padding="SAME", stride_w=1, stride_h=1)
    b.output(y)
    return b.build()


@pytest.mark.parametrize("name,build,h,w", [("mobilenet_qvga", _mobilenet_stem, 240, 320),
                                            ("mobilenet_320", _mobilenet_stem, 320, 320),
                                            ("tiny_yolo_320", _tiny_yolo_stem, 320, 320)])
def test_a_camera_sized_model_runs_on_the_kpu_as_tflite_computes_it(name, build, h, w, tmp_path):
    model = build(h, w)
    pictures = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(3)]
    for k, p in enumerate(pictures):
        Image.fromarray(p).save(tmp_path / f"{k}.png")
    res = compile_model(model, CompileOptions(dataset=tmp_path, dataset_format="image", input_mean=0.5, input_std=0.5))
    first = res.placements[0]
    assert first.on_kpu and "row bands" in first.reason, first
    assert all(p.on_kpu for p in res.placements if p.op == "conv2d"), res.placements
    names = [n.opcode.kmodel_name for n in km.read(res.kmodel).nodes]
    assert "pad" not in names and "conv2d" not in names, names
    program = kpu_sim.load(res.kmodel)
    for p in pictures:
        want = run_tflite(model, [(p[None].astype(np.float32) / 255.0 - 0.5) / 0.5])[0]
        got = program.run([np.ascontiguousarray(p.transpose(2, 0, 1)[None])])[0].reshape(want.shape[0], want.shape[3],
                                                                                          *want.shape[1:3])
        got = got.transpose(0, 2, 3, 1)
        cos = float(np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cos > 0.999, f"{name}: cosine {cos}"
