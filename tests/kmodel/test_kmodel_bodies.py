"""Body layouts (kmodel_v4.md §6.3 sizes, §8, §9.1): pack/unpack round trips and validation."""

from __future__ import annotations

import numpy as np
import pytest

import kcc.kmodel as km
from kcc.errors import KmodelError

M = km.MemoryRange(km.MemoryType.MAIN, km.DataType.FLOAT32, 8, 64)
C = km.MemoryRange(km.MemoryType.CONST, km.DataType.UINT8, 0, 256)
S = km.Shape4(1, 2, 3, 4)
COMMON = dict(input=M, output=M)


def _samples() -> list[km.Body]:
    conv = dict(COMMON, in_shape=(1, 4, 5, 5), out_channels=6, filter_h=3, filter_w=1, padding_h=(1, 1))
    quant = dict(input_offset=-3, filter_offset=-4, output_mul=12345, output_shift=17, output_offset=2)
    return [
        km.Binary(input_a=M, input_b=C, output=M, binary_op=km.BinaryOp.MAX, in_a_shape=S, in_b_shape=S, out_shape=S),
        km.Concat(output=M, inner_size=48, outer_size=2, inputs=(M, C, M), dims=(1, 2, 3)),
        km.Conv2D(**conv, groups=2, weights=np.arange(36), bias=np.ones(6)),
        km.Dequantize(**COMMON, quant_param=km.QuantParam(128, 0.5)),
        km.MatMul(input_a=M, input_b=C, output=M, a_rows=2, a_cols=3, b_cols=5, bias=np.arange(5)),
        km.Pad(**COMMON, in_shape=S, paddings=[(0, 0), (1, -1), (2, 2), (0, 3)], pad_value=km.Scalar.of_uint8(7)),
        km.Quantize(**COMMON, quant_param=km.QuantParam(3, 2.5)),
        km.Reduce(**COMMON, reduce_op=km.ReduceOp.SUM, in_shape=S, out_shape=(1, 2, 1, 1), init_value=0.0),
        km.ReduceWindow2D(**COMMON, reduce_op=km.ReduceOp.MEAN, in_shape=S, filter_h=2, filter_w=2, init_value=0.0),
        km.MemoryCopy(**COMMON),
        km.ResizeImage(**COMMON, in_shape=S, out_h=6, out_w=8, mode=km.ResizeMode.BILINEAR, align_corners=True),
        km.Softmax(**COMMON, inner_size=4, outer_size=6, beta=0.5),
        km.Transpose(**COMMON, in_shape=S, perm=(0, 2, 3, 1)),
        km.StridedSlice(**COMMON, in_shape=S, begin=(0, 0, 1, 0), end=(1, 2, 3, 4), strides=(1, 1, 1, 2), end_mask=3),
        km.Unary(**COMMON, unary_op=km.UnaryOp.RSQRT),
        km.QuantizedConv2D(**conv, **quant, bias=np.arange(6), weights=np.arange(72) % 256),
        km.QuantizedMatMul(input_a=M, input_b=C, output=M, a_rows=1, a_cols=4, b_cols=3, input_a_offset=-1,
                           input_b_offset=-2, output_mul=3, output_shift=4, output_offset=5, bias=[1, 2, 3]),
        km.QuantizedBinary(input_a=M, input_b=C, output=M, binary_op=km.BinaryOp.ADD, in_a_shape=S, in_b_shape=S,
                           out_shape=S, input_a_offset=1, input_a_mul=2, input_a_shift=3, input_b_offset=4,
                           input_b_mul=5, input_b_shift=6, output_offset=7, output_mul=8, output_shift=9),
        km.TableLookup1D(input=M, table=C, output=M),
        km.Conv2DTranspose(**COMMON, in_shape=(1, 4, 3, 3), out_shape=(1, 2, 5, 5), groups=2, filter_h=3, filter_w=3,
                           stride_h=2, stride_w=2, weights=np.arange(36), bias=[0.5, 0.25]),
        km.NnilUnaryMethod(**COMMON, program=bytes([3, 6, 0, 0, 0x80, 0x3F, 0x42, 0xA0])),
        km.CpuConv2D(**COMMON, in_shape=(1, 5, 5, 3), out_channels=2, filter_h=3, filter_w=3, weights=np.arange(54),
                     bias=[1, 2]),
        km.CpuDepthwiseConv2D(**COMMON, in_shape=(1, 5, 5, 3), filter_h=3, filter_w=3, weights=np.arange(27),
                              bias=[1, 2, 3]),
        km.CpuReduceWindow2D(**COMMON, reduce_op=km.ReduceOp.MAX, in_shape=S, filter_h=2, filter_w=2,
                             init_value=-km.FLT_MAX),
        km.CpuQuantizedConv2D(**COMMON, in_shape=(1, 5, 5, 3), out_channels=2, filter_h=1, filter_w=1, **quant,
                              weights=np.arange(6), bias=[9, 8]),
        km.CpuQuantizedDepthwiseConv2D(**COMMON, in_shape=(1, 5, 5, 3), filter_h=3, filter_w=3, **quant,
                                       weights=np.arange(27), bias=[1, 2, 3]),
        km.KpuUpload(input=M, output=km.MemoryRange(km.MemoryType.K210_KPU, km.DataType.UINT8, 64, 128), in_shape=S),
    ]  # fmt: skip


# §6.3 "fixed N" payload sizes and variable formulas.
EXPECTED_SIZES = {
    km.Opcode.BINARY: 108, km.Opcode.CONCAT: 28 + 20 * 3, km.Opcode.CONV2D: 104 + 4 * 36 + 4 * 6,
    km.Opcode.DEQUANTIZE: 40, km.Opcode.MATMUL: 68 + 4 * 5, km.Opcode.PAD: 88, km.Opcode.QUANTIZE: 40,
    km.Opcode.REDUCE: 72, km.Opcode.REDUCE_WINDOW2D: 104, km.Opcode.MEMORY_COPY: 32, km.Opcode.RESIZE_IMAGE: 64,
    km.Opcode.SOFTMAX: 44, km.Opcode.TRANSPOSE: 64, km.Opcode.STRIDED_SLICE: 116, km.Opcode.UNARY: 36,
    km.Opcode.QUANTIZED_CONV2D: 116 + 4 * 6 + 72, km.Opcode.QUANTIZED_MATMUL: 80 + 4 * 3,
    km.Opcode.QUANTIZED_BINARY: 136, km.Opcode.TABLE_LOOKUP1D: 48, km.Opcode.CONV2D_TRANSPOSE: 116 + 4 * 36 + 4 * 2,
    km.Opcode.NNIL_UNARY_METHOD: 32 + 8, km.Opcode.CPU_CONV2D: 100 + 4 * 54 + 8,
    km.Opcode.CPU_DEPTHWISE_CONV2D: 96 + 4 * 27 + 12, km.Opcode.CPU_REDUCE_WINDOW2D: 104,
    km.Opcode.CPU_QUANTIZED_CONV2D: 112 + 6 + 8, km.Opcode.CPU_QUANTIZED_DEPTHWISE_CONV2D: 108 + 27 + 12,
    km.Opcode.KPU_UPLOAD: 48,
}  # fmt: skip


@pytest.mark.parametrize("body", _samples(), ids=lambda b: b.OPCODE.kmodel_name)
def test_pack_size_and_round_trip(body: km.Body) -> None:
    data = body.pack()
    assert len(data) == EXPECTED_SIZES[body.OPCODE]
    back, used = type(body).unpack_from(data + bytes(-len(data) % 8))
    assert back == body
    assert used == (len(data) + (-len(data) % 8) if body.OPCODE is km.Opcode.NNIL_UNARY_METHOD else len(data))
    assert back.pack() == data or body.OPCODE is km.Opcode.NNIL_UNARY_METHOD


def test_every_opcode_has_a_body_and_sample() -> None:
    assert set(km.BODIES) == set(km.Opcode)
    assert {b.OPCODE for b in _samples()} | {km.Opcode.KPU_CONV2D} == set(km.Opcode)


def test_binary_field_offsets() -> None:
    """§8.1 offsets: binary_op @48, in_a_shape @52, fused_activation @100."""
    body = km.Binary(input_a=M, input_b=M, output=M, binary_op=km.BinaryOp.DIV, in_a_shape=(1, 1, 1, 7),
                     in_b_shape=S, out_shape=S, fused_activation=km.ValueRange(-1.0, 6.0))  # fmt: skip
    data = body.pack()
    assert data[48:52] == (3).to_bytes(4, "little")
    assert np.frombuffer(data[52:68], "<i4").tolist() == [1, 1, 1, 7]
    assert np.frombuffer(data[100:108], "<f4").tolist() == [-1.0, 6.0]


def test_resize_image_bool_has_three_tail_bytes() -> None:
    mode = km.ResizeMode.NEAREST_NEIGHBOR
    body = km.ResizeImage(**COMMON, in_shape=S, out_h=1, out_w=1, mode=mode, align_corners=True)
    assert body.pack()[60:64] == b"\x01\x00\x00\x00"


def test_quantized_conv2d_puts_bias_before_weights_and_cpu_variant_after() -> None:
    samples = {type(b): b for b in _samples()}
    q = samples[km.QuantizedConv2D].pack()
    assert np.frombuffer(q[116:140], "<i4").tolist() == list(range(6))
    cq = samples[km.CpuQuantizedConv2D].pack()
    assert list(cq[112:118]) == list(range(6)) and np.frombuffer(cq[118:126], "<i4").tolist() == [9, 8]


def test_array_length_is_checked_against_the_fields() -> None:
    with pytest.raises(KmodelError, match="weights has 35 elements, the other fields need 36"):
        km.Conv2D(**COMMON, in_shape=(1, 4, 5, 5), groups=2, out_channels=6, filter_h=3, filter_w=1,
                  weights=np.zeros(35), bias=np.zeros(6))  # fmt: skip


def test_unpack_errors_name_the_field() -> None:
    data = _samples()[0].pack()
    with pytest.raises(KmodelError, match="too short for field out_shape"):
        km.Binary.unpack(data[:90])
    bad = bytearray(data)
    bad[48] = 9
    with pytest.raises(KmodelError, match="field binary_op has invalid BinaryOp value 9"):
        km.Binary.unpack(bytes(bad))
    bad = bytearray(data)
    bad[0] = 7
    with pytest.raises(KmodelError, match="input_a.memory_type has invalid MemoryType value 7"):
        km.Binary.unpack(bytes(bad))


def test_concat_with_huge_count_is_reported_not_allocated() -> None:
    data = bytearray(km.Concat(output=M, inner_size=4, outer_size=1, inputs=(M,), dims=(1,)).pack())
    data[24:28] = (10**9).to_bytes(4, "little")
    with pytest.raises(KmodelError, match="too short for 1000000000 concat inputs"):
        km.Concat.unpack(bytes(data))


def test_shape_helpers() -> None:
    assert km.Shape4.of([5, 7]) == (1, 1, 5, 7)
    assert km.Shape4.of([2], fill=0) == (0, 0, 0, 2)  # strided_slice.begin (§3.3)
    assert km.Shape4(1, 2, 3, 4).count == 24
