"""KModel read/write and the reader's validation (kmodel_v4.md §2, §4-§7, §11, §12, §14)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import kcc.kmodel as km
from kcc.errors import KmodelError

F32, U8 = km.DataType.FLOAT32, km.DataType.UINT8
MAIN, CONST, KPU = km.MemoryType.MAIN, km.MemoryType.CONST, km.MemoryType.K210_KPU


def _model(**changes) -> km.KModel:
    x = km.MemoryRange(MAIN, F32, 0, 24)
    y = km.MemoryRange(MAIN, F32, 24, 24)
    c = km.MemoryRange(CONST, F32, 0, 4)
    nodes = [
        km.Binary(input_a=x, input_b=c, output=y, binary_op=km.BinaryOp.MUL, in_a_shape=(1, 1, 2, 3),
                  in_b_shape=(1, 1, 1, 1), out_shape=(1, 1, 2, 3)),
        km.Unary(input=y, output=x, unary_op=km.UnaryOp.NEG),  # 36-byte payload: 4 bytes of final padding
    ]  # fmt: skip
    fields = dict(
        main_mem=48, inputs=[x], input_shapes=[(1, 1, 2, 3)], outputs=[x], constants=b"\x00\x00\x80\x3f\x01",
        nodes=nodes,
    )
    return km.KModel(**(fields | changes))


def test_writer_layout() -> None:
    data = km.write(_model())
    header = struct.unpack_from("<10I", data)
    assert data[:4] == b"LDMK"
    assert header == (0x4B4D444C, 4, 0, 1, 8, 48, 2, 1, 1, 0)  # constants padded 5 -> 8, reserved0 = 0
    # header 40 + input 16 + shape 16 + output 16 = 88: constants, then node headers at 96, bodies at 112
    assert data[88:96] == b"\x00\x00\x80\x3f\x01\x00\x00\x00"
    assert struct.unpack_from("<4I", data, 96) == (0x00, 112, 0x0E, 40)
    assert len(data) == 112 + 112 + 40 and data[-4:] == bytes(4)  # final padding written


def test_round_trip_equal_model() -> None:
    model = km.read(km.write(_model()))
    assert model.nodes == _model().nodes
    assert model.constants == b"\x00\x00\x80\x3f\x01\x00\x00\x00" and model.target is km.Target.K210
    assert isinstance(model.nodes[0], km.Node) and model.nodes[0].name == "binary"


def test_missing_final_padding_is_accepted() -> None:
    data = km.write(_model())
    assert km.read(data[:-4]).nodes == _model().nodes  # §2: ncc's quirk
    with pytest.raises(KmodelError, match=r"node 1 \(unary\): too short for field unary_op"):
        km.read(data[:-5])


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, *values)
    return bytes(buf)


GOOD = km.write(_model())


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not a kmodel"),
        (b"PK\x03\x04" + bytes(60), "not a kmodel"),
        (struct.pack("<3I", 3, 1, 0) + bytes(40), r"kmodel v3 \(nncase v0.1\) is not supported; recompile with kcc"),
        (_patch(GOOD, 4, "<I", 5), r"kmodel v5 \(nncase v1\) is not supported"),
        (_patch(GOOD, 4, "<I", 9), "unsupported kmodel version 9"),
        (GOOD[:30], "truncated header"),
        (_patch(GOOD, 12, "<I", 2), "invalid target 2"),
        (_patch(GOOD, 28, "<I", 1000), "truncated: input descriptors"),
        (_patch(GOOD, 24, "<I", 100), "truncated: node headers"),
        (_patch(GOOD, 96, "<I", 0x15), "node 0: unknown opcode 0x0015"),
        (_patch(GOOD, 100, "<I", 110), r"node 0 \(binary\): body_size 110 is not a multiple of 8"),
        (_patch(GOOD, 100, "<I", 104), r"node 0 \(binary\): too short for field fused_activation"),
        (_patch(GOOD, 100, "<I", 120), r"node 0 \(binary\): body_size 120 leaves 12 bytes after the 108-byte payload"),
        (_patch(GOOD, 108, "<I", 48), r"node 1 \(unary\): body \(body_size 48 at offset 224\) extends beyond the end"),
        (GOOD + bytes(8), "8 trailing bytes after the last node body"),
        (_patch(GOOD, 224 + 32, "<I", 10), r"node 1 \(unary\): field unary_op has invalid UnaryOp value 10"),
        (_patch(GOOD, 224 + 16, "<I", 5), r"node 1 \(unary\): field output.memory_type has invalid MemoryType value 5"),
        (_patch(GOOD, 40 + 12, "<I", 32), r"input 0: size 32 does not match shape \(1, 1, 2, 3\) \(24 bytes\)"),
        (
            _patch(GOOD, 20, "<I", 40),
            r"node 0 \(binary\): field output exceeds main memory \(start 24 \+ size 24 > main_mem 40\)",
        ),
        (
            _patch(GOOD, 112 + 16 + 8, "<I", 6),
            r"node 0 \(binary\): field input_b exceeds the constants section \(start 6 \+ size 4 > constants 8\)",
        ),
    ],
)  # fmt: skip
def test_reader_errors_are_one_line(data: bytes, message: str) -> None:
    with pytest.raises(KmodelError, match=message) as info:
        km.read(data, name="model.kmodel")
    assert str(info.value).startswith("model.kmodel: ") and "\n" not in str(info.value)


def test_kpu_ranges_must_be_aligned_and_inside_kpu_ram() -> None:
    src = km.MemoryRange(MAIN, U8, 0, 6)
    cases = [(32, "starts at KPU byte 32, not a multiple of 64"), (km.KPU_RAM_SIZE - 64, "exceeds KPU RAM")]
    for start, message in cases:
        out = km.MemoryRange(KPU, U8, start, 128)
        model = km.KModel(main_mem=8, inputs=[src], input_shapes=[(1, 1, 2, 3)], outputs=[src],
                          nodes=[km.KpuUpload(input=src, output=out, in_shape=(1, 1, 2, 3))])  # fmt: skip
        with pytest.raises(KmodelError, match=rf"node 0 \(kpu_upload\): field output {message}"):
            km.write(model)


def test_input_rules() -> None:
    with pytest.raises(KmodelError, match="input 0: lives in constant memory"):
        km.write(_model(inputs=[km.MemoryRange(CONST, F32, 0, 4)], input_shapes=[(1, 1, 1, 1)]))
    with pytest.raises(KmodelError, match=r"input 0: size 24 does not match shape \(1, 1, 2, 2\)"):
        km.write(_model(input_shapes=[(1, 1, 2, 2)]))
    kpu_input = km.MemoryRange(KPU, U8, 0, km.kpu_bytes((1, 3, 240, 320)))
    km.validate(_model(inputs=[kpu_input], input_shapes=[(1, 3, 240, 320)]))


def test_node_must_match_its_body() -> None:
    with pytest.raises(KmodelError, match="does not match body"):
        km.Node(km.Opcode.BINARY, _model().nodes[1].body)


def test_random_corruption_only_ever_raises_kmodel_error() -> None:
    """The reader must never leak IndexError / struct.error / ValueError (brief: wrap everything)."""
    layer = km.KpuLayerArgument(i_ch_num=0, o_ch_num=1, i_row_wid=3, i_col_high=3, o_row_wid=3, o_col_high=3)
    kpu = km.KpuConv2D(
        layer=layer,
        batch_norm=km.KpuBatchNormTable.of([(1, 0, 0), (2, 0, 0)]),
        activation=km.KpuActivationTable([km.KpuActivationSegment(0, 1, -(2**35), 0)] * 16),
        weights=np.arange(2, dtype=np.uint8),
    )
    base = km.write(_model(nodes=[*_model().nodes, kpu]))
    rng = np.random.default_rng(7)
    outcomes = set()
    for _ in range(400):
        data = bytearray(base)
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data)))]
        for _ in range(int(rng.integers(1, 4))):
            if data:
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        try:
            km.read(bytes(data))
            outcomes.add("ok")
        except KmodelError:
            outcomes.add("error")
    assert outcomes == {"ok", "error"}


def test_output_ranges_are_checked_and_read_file_names_the_path(tmp_path) -> None:
    bad = _model(outputs=[km.MemoryRange(MAIN, F32, 40, 16)])
    with pytest.raises(KmodelError, match=r"^output 0 exceeds main memory \(start 40 \+ size 16 > main_mem 48\)$"):
        km.write(bad)
    path = tmp_path / "model.kmodel"
    path.write_bytes(GOOD[:-5])
    with pytest.raises(KmodelError, match=rf"^{path}: node 1 \(unary\): too short"):
        km.read_file(path)


def test_beta3_opcodes() -> None:
    assert km.BETA3_OPCODES == {km.Opcode.TABLE_LOOKUP1D, km.Opcode.NNIL_UNARY_METHOD}
