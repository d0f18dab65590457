"""tflite_reader: eager records of tensors, operators and options; index and size validation."""

from __future__ import annotations

import numpy as np
import pytest
from tflite_builder import TfliteBuilder

from kcc.errors import ModelFormatError
from kcc.frontend.tflite.reader import read_tflite


def _model() -> tuple[TfliteBuilder, dict[str, int]]:
    b = TfliteBuilder()
    t = {"x": b.input([1, 4, 4, 2], name="x")}
    t["w16"] = b.const(np.arange(36, dtype=np.float16).reshape(2, 3, 3, 2), name="w16")
    t["w"] = b.op("DEQUANTIZE", [t["w16"]], name="w", out_shape=[2, 3, 3, 2])
    t["q"] = b.const(np.array([[-3, 5], [7, -1]], np.int8), name="q", quant=([0.5, 0.25], [0, 1], 1))
    t["y"] = b.op("CONV_2D", [t["x"], t["w"], -1], name="y", padding="VALID", stride_w=1, stride_h=2,
                  fused_activation_function="RELU6", out_shape=[1, 1, 2, 2])
    t["s"] = b.op("SQUEEZE", [t["y"]], name="s", squeeze_dims=[0], out_shape=[1, 2, 2])
    t["g"] = b.op("GELU", [t["s"]], name="g", out_shape=[1, 2, 2])
    b.output(t["g"])
    return b, t


def test_records():
    b, t = _model()
    m = read_tflite(b.build(), name="m.tflite")
    assert m.name == "m.tflite" and m.version == 3 and m.num_subgraphs == 1
    assert m.inputs == (t["x"],) and m.outputs == (t["g"],)
    x, w16, q = m.tensors[t["x"]], m.tensors[t["w16"]], m.tensors[t["q"]]
    assert (x.name, x.shape, x.type_name, x.data, x.is_constant) == ("x", (1, 4, 4, 2), "FLOAT32", None, False)
    assert w16.type_name == "FLOAT16" and w16.data.dtype == np.float16
    np.testing.assert_array_equal(w16.data, np.arange(36, dtype=np.float16).reshape(2, 3, 3, 2))
    assert q.data.dtype == np.int8 and q.quant.axis == 1
    np.testing.assert_array_equal(q.quant.scale, [0.5, 0.25])
    np.testing.assert_array_equal(q.quant.zero_point, [0, 1])
    ops = {op.opcode: op for op in m.operators}
    conv = ops["CONV_2D"]
    assert conv.inputs == (t["x"], t["w"], -1) and conv.outputs == (t["y"],)
    assert conv.options["padding"] == "VALID" and conv.options["fused_activation_function"] == "RELU6"
    assert conv.opt("stride_h") == 2 and conv.opt("dilation_w_factor") == 1
    assert ops["SQUEEZE"].options["squeeze_dims"] == (0,)
    assert ops["DEQUANTIZE"].options == {}
    assert "GELU" in ops  # builtin code 150: read from builtin_code, the deprecated field says 127


@pytest.mark.parametrize("edit,message", [
    (lambda b, t: setattr(b.tensors[t["w16"]], "shape", [2, 3, 3, 3]),
     r"m.tflite: tensor 'w16': buffer holds 72 bytes but shape \[2, 3, 3, 3\] of FLOAT16 needs 108"),
    (lambda b, t: setattr(b.tensors[t["w16"]], "buffer", 99), r"m.tflite: tensor 'w16' refers to buffer 99"),
    (lambda b, t: b.ops[1].inputs.__setitem__(0, 77), r"m.tflite: operator 1 \(CONV_2D\) input refers to tensor 77"),
    (lambda b, t: b.outputs.__setitem__(0, 50), r"m.tflite: subgraph output refers to tensor 50"),
])
def test_validation(edit, message):
    b, t = _model()
    b.build()
    edit(b, t)
    with pytest.raises(ModelFormatError, match=f"^{message}"):
        read_tflite(b._serialise(), name="m.tflite")
