"""Unreadable and unsupported models give one precise KccError line, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import refkit
from tflite_builder import TfliteBuilder

from kcc.errors import KccError, ModelFormatError, UnsupportedModelError
from kcc.frontend import import_tflite

DIGITS = refkit.SHIPPED_MODELS / "digits_cnn16_gray" / "digits_cnn16_gray.tflite"


def _one_line(err: KccError) -> str:
    assert "\n" not in str(err)
    return str(err)


def _small_model() -> bytes:
    rng = np.random.default_rng(0)
    b = TfliteBuilder()
    x = b.input([1, 6, 6, 2])
    w = b.op("DEQUANTIZE", [b.const(rng.standard_normal((4, 3, 3, 2)).astype(np.float16))])
    y = b.op("CONV_2D", [x, w, b.const(np.zeros(4, np.float32))], padding="SAME", stride_w=2, stride_h=2)
    y = b.op("MAX_POOL_2D", [y], filter_height=2, filter_width=2, stride_h=1, stride_w=1, padding="VALID")
    y = b.op("RESHAPE", [y, b.const(np.array([1, -1], np.int32))])
    b.output(b.op("STRIDED_SLICE", [y, b.const(np.array([0, 1], np.int32)), b.const(np.array([1, 9], np.int32)),
                                     b.const(np.array([1, 2], np.int32))]))
    return b.build()


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tflite"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError) as e:
        import_tflite(path)
    assert _one_line(e.value) == "empty.tflite: empty file, expected a TFLite flatbuffer model"


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match=r"^nope.tflite: cannot read model file"):
        import_tflite(tmp_path / "nope.tflite")


def test_not_a_tflite_file():
    with pytest.raises(ModelFormatError) as e:
        import_tflite(b"\x89PNG\r\n\x1a\n" + bytes(100), name="photo.png")
    assert _one_line(e.value) == "photo.png: not a TFLite model (no 'TFL3' flatbuffer identifier)"


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_behind_a_valid_identifier(seed):
    rng = np.random.default_rng(seed)
    data = b"\x1c\x00\x00\x00TFL3" + rng.integers(0, 256, int(rng.integers(0, 4000)), np.uint8).tobytes()
    with pytest.raises(ModelFormatError, match=r"^random.tflite: "):
        import_tflite(data, name="random.tflite")


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9, 0.999])
def test_truncated_real_model(fraction):
    data = DIGITS.read_bytes()
    with pytest.raises(ModelFormatError) as e:
        import_tflite(data[:int(len(data) * fraction)], name="digits.tflite")
    assert _one_line(e.value).startswith("digits.tflite: ")


def test_corrupted_small_models_only_raise_kcc_errors():
    """Byte flips anywhere in a small model: either it still imports or a KccError says why."""
    data = _small_model()
    rng = np.random.default_rng(7)
    outcomes = set()
    for _ in range(400):
        mutated = bytearray(data)
        for pos in rng.integers(0, len(data), int(rng.integers(1, 4))):
            mutated[pos] = int(rng.integers(0, 256))
        try:
            import_tflite(bytes(mutated), name="fuzz.tflite")
            outcomes.add("ok")
        except KccError as err:
            assert str(err).startswith("fuzz.tflite: ")
            outcomes.add(type(err).__name__)
    assert "ModelFormatError" in outcomes


def test_every_unsupported_op_is_listed_once():
    """SHAPE of a statically shaped tensor is not listed: it folds (kcc.frontend.tflite.fold); the
    ARG_MAX computing integers from the data is."""
    b = TfliteBuilder()
    x = b.input([1, 4, 4, 3], name="image")
    c1 = b.op("CUSTOM", [x], custom_code="FancyNorm", name="norm1", out_shape=[1, 4, 4, 3])
    c2 = b.op("CUSTOM", [c1], custom_code="FancyNorm", name="norm2", out_shape=[1, 4, 4, 3])
    s = b.op("SHAPE", [c2], name="shape", out_type="INT32", out_shape=[4])
    r = b.op("RESHAPE", [c2, s], name="flat", out_shape=[1, 48])
    t = b.op("LSTM", [r], name="lstm", out_shape=[1, 48])
    am = b.op("ARG_MAX", [t, b.const(np.array([1], np.int32))], name="best", out_type="INT32", out_shape=[1])
    b.output(b.op("ADD", [t, t], name="sum", fused_activation_function="TANH", out_shape=[1, 48]), am)
    with pytest.raises(UnsupportedModelError) as e:
        import_tflite(b.build(), name="model.tflite")
    assert _one_line(e.value) == (
        "model.tflite: 4 unsupported op types: CUSTOM(FancyNorm) x2 (first: 'norm1'), "
        "ADD with fused TANH x1 (first: 'sum'), ARG_MAX x1 (first: 'best'), LSTM x1 (first: 'lstm')")
    assert "custom ops" in e.value.hint


def test_unsupported_ops_of_a_single_type():
    b = TfliteBuilder()
    x = b.input([1, 8], name="x")
    b.output(b.op("GELU", [x], name="g", out_shape=[1, 8]))
    with pytest.raises(UnsupportedModelError, match=r"^m.tflite: 1 unsupported op type: GELU x1 \(first: 'g'\)$"):
        import_tflite(b.build(), name="m.tflite")


@pytest.mark.parametrize("type_name,signature,expect", [
    ("INT32", None, "input 'x' is INT32, kcc needs float32 inputs"),
    ("FLOAT32", [1, -1, -1, 3], r"input 'x' has a dynamic shape \[1, -1, -1, 3\]"),
])
def test_bad_graph_inputs(type_name, signature, expect):
    b = TfliteBuilder()
    x = b.input([1, 4, 4, 3], name="x", type_name=type_name, signature=signature)
    b.output(b.op("RELU", [x], out_shape=[1, 4, 4, 3], out_type=type_name))
    with pytest.raises(UnsupportedModelError, match=f"^in.tflite: {expect}"):
        import_tflite(b.build(), name="in.tflite")


def test_dynamic_batch_is_accepted():
    b = TfliteBuilder()
    x = b.input([1, 4], name="x", signature=[-1, 4])
    b.output(b.op("RELU", [x]))
    assert import_tflite(b.build()).inputs[0].shape == (1, 4)


def test_run_time_weights_are_rejected_with_the_tensor_name():
    b = TfliteBuilder()
    x, w = b.input([1, 4], name="x"), b.input([3, 4], name="w")
    b.output(b.op("FULLY_CONNECTED", [x, w, -1], out_shape=[1, 3], name="fc"))
    with pytest.raises(UnsupportedModelError, match=r"^m.tflite: FULLY_CONNECTED 'fc': weights 'w' is computed "
                                                    r"at run time"):
        import_tflite(b.build(), name="m.tflite")


def test_inconsistent_declared_shape_is_a_format_error():
    b = TfliteBuilder()
    x = b.input([1, 4], name="x")
    b.output(b.op("RELU", [x], out_shape=[1, 5], name="r"))
    with pytest.raises(ModelFormatError, match=r"declares shape \[1, 5\] for 'r' but the op computes \[1, 4\]"):
        import_tflite(b.build(), name="m.tflite")


def test_zero_stride_is_rejected():
    b = TfliteBuilder()
    x = b.input([1, 4, 4, 1])
    b.output(b.op("MAX_POOL_2D", [x], filter_height=2, filter_width=2, stride_h=0, stride_w=1,
                  out_shape=[1, 2, 2, 1]))
    with pytest.raises(UnsupportedModelError, match="option stride_h = 0"):
        import_tflite(b.build(), name="m.tflite")
