"""KPU registers, tables, the kpu_conv2d body and the KPU RAM layout (kmodel_v4.md §7.3, §9)."""

from __future__ import annotations

import numpy as np
import pytest

import kcc.kmodel as km
from kcc.errors import KmodelError

# §9.3 worked example: yolo.kmodel node 0.
YOLO_NODE0 = (
    0x0000000000000000, 0x00000E1000000000, 0x000F000F00000002, 0x0001DC9F0003BD3F,
    0x000000A8000F0411, 0x0000007000D80001, 0x0, 0x00000080900504B0, 0x0000000000130168,
    0x00FFFF7A00000000, 0x0, 0x0004AFFF4AFF0000,
)  # fmt: skip


def test_worked_example_decodes_and_re_encodes() -> None:
    layer = km.KpuLayerArgument.from_registers(YOLO_NODE0)
    assert (layer.image_src_addr, layer.image_dst_addr) == (0, 3600)
    assert (layer.i_ch_num, layer.o_ch_num, layer.in_width, layer.in_height) == (2, 15, 320, 240)
    assert (layer.bwsx_base_addr, layer.active_addr, layer.para_start_addr) == (168, 128, 112)
    assert (layer.para_size, layer.load_time, layer.channel_switch_addr, layer.row_switch_addr) == (432, 0, 1200, 5)
    assert (layer.arg_x, layer.arg_w, layer.arg_add, layer.dma_total_byte) == (-134, 0, 0, 307199)
    assert layer.kernel_type is km.KpuFilterType.FILTER_3X3 and layer.pool_type is km.KpuPoolType.MAX_2_S2
    assert (layer.load_para, layer.dma_burst_size, layer.load_coor, layer.load_act) == (1, 15, 1, 1)
    assert layer.registers() == YOLO_NODE0
    assert km.KpuLayerArgument.unpack(layer.pack()) == layer


def test_signed_fields_sign_extend_and_pack_is_strict() -> None:
    layer = km.KpuLayerArgument(arg_w=-1, arg_x=-(2**23), arg_add=-(2**39))
    regs = layer.registers()
    assert (regs[9] >> 8) & 0xFFFFFF == 0xFFFFFF and (regs[9] >> 32) & 0xFFFFFF == 0x800000
    assert regs[10] == 1 << 39
    assert km.KpuLayerArgument.from_registers(regs) == layer
    with pytest.raises(KmodelError, match=r"field arg_x: value 8388608 does not fit in 24 bits"):
        km.KpuLayerArgument(arg_x=2**23).registers()
    with pytest.raises(KmodelError, match=r"field i_ch_num: value 1024 does not fit in 10 bits"):
        km.KpuLayerArgument(i_ch_num=1024).registers()
    assert km.wrap_signed(2**23, 24) == -(2**23) and km.wrap_unsigned(-1, 4) == 15


def test_invalid_filter_or_pool_type_is_rejected() -> None:
    regs = list(YOLO_NODE0)
    regs[4] = (regs[4] & ~0x7) | 2
    with pytest.raises(KmodelError, match="kernel_type has invalid kpu_filter_type value 2"):
        km.KpuLayerArgument.from_registers(regs)
    regs = list(YOLO_NODE0)
    regs[4] = (regs[4] & ~0xF0) | (12 << 4)
    with pytest.raises(KmodelError, match="pool_type has invalid kpu_pool_type value 12"):
        km.KpuLayerArgument.from_registers(regs)


def test_batch_norm_table_bits() -> None:
    table = km.KpuBatchNormTable.of([(-1, -5, 15), (2**23 - 1, 2**31 - 1, 0)])
    words = table.words()
    assert int(words[0]) == 0xFFFFFF | ((2**32 - 5) << 24) | (15 << 56)
    assert km.KpuBatchNormTable.from_words(words) == table
    with pytest.raises(KmodelError, match="batch_norm.norm_shift: value 16 does not fit in 4 bits"):
        km.KpuBatchNormTable.of([(0, 0, 16)])


def _segments() -> list[km.KpuActivationSegment]:
    segs = [km.KpuActivationSegment(0, 0, -(2**35), 0)]
    segs += [km.KpuActivationSegment(i, 100 * i - 700, 1000 * i, i) for i in range(1, 15)]
    segs += [km.KpuActivationSegment(0, 0, 2**35 - 1, 255)]
    return segs


def test_activation_table_layout() -> None:
    table = km.KpuActivationTable(_segments())
    data = table.pack()
    assert len(data) == 144
    assert int.from_bytes(data[0:8], "little") == 0x800000000 << 24  # §9.5: segment 0 starts at -2^35
    assert data[128:144] == bytes([0, *range(1, 15), 255])
    back = km.KpuActivationTable.unpack(data)
    assert back == table and back.segments[1].y_mul == -600
    garbage = bytearray(data)
    garbage[7] |= 0xF0  # reserved bits 60-63 are ignored on read
    assert km.KpuActivationTable.unpack(bytes(garbage)) == table


def _kpu_body(**changes) -> km.KpuConv2D:
    layer = km.KpuLayerArgument(
        i_ch_num=3, o_ch_num=7, o_ch_num_coef=7, i_row_wid=7, i_col_high=7, o_row_wid=7, o_col_high=7,
        image_dst_addr=2, para_size=32, channel_switch_addr=8, row_switch_addr=1, coef_group=4,
        wb_channel_switch_addr=8, wb_row_switch_addr=1, wb_group=4, channel_byte_num=63, dma_total_byte=511,
    )  # fmt: skip
    fields = dict(
        layer=layer,
        batch_norm=km.KpuBatchNormTable.of([(i + 1, -i, 15) for i in range(8)]),
        activation=km.KpuActivationTable(_segments()),
        weights=np.arange(32, dtype=np.uint8),
    )
    return km.KpuConv2D(**(fields | changes))


@pytest.mark.parametrize("offset", [0, 8, 200, 256, 1000])
def test_kpu_conv2d_activation_table_lands_on_a_256_byte_file_offset(offset: int) -> None:
    body = _kpu_body()
    data = body.pack(offset)
    layer = km.KpuLayerArgument.unpack(data[24:120])
    p1, p2, p3 = layer.bwsx_base_addr, layer.active_addr, layer.para_start_addr
    bn_at = offset + 120 + p1
    act_at = bn_at + 64 + p2
    w_at = act_at + 144 + p3
    assert act_at % 256 == 0 and p2 < 256  # the KPU's need (kcc.kmodel.spec); the other two on 8 bytes
    assert bn_at % 8 == w_at % 8 == 0 and max(p1, p3) < 8
    assert data[w_at - offset :] == bytes(range(32))
    assert data[120 : 120 + p1] == bytes(p1)
    back, used = km.KpuConv2D.unpack_from(data, offset)
    assert used == len(data) and back == body and back.table_padding is None


def test_kpu_conv2d_keeps_foreign_padding_explicitly() -> None:
    body = _kpu_body(table_padding=(8, 0, 128))
    data = body.pack(offset=64)
    back = km.KpuConv2D.unpack(data, offset=64)
    assert back.table_padding == (8, 0, 128) and back.pack(offset=64) == data


def test_kpu_conv2d_checks_table_sizes_and_exposes_kpu_ranges() -> None:
    with pytest.raises(KmodelError, match="weights has 31 bytes, the layer needs 32"):
        _kpu_body(weights=np.zeros(31))
    with pytest.raises(KmodelError, match="batch_norm has 2 entries, layer has 8 output channels"):
        _kpu_body(batch_norm=km.KpuBatchNormTable.of([(1, 0, 0)] * 2))
    ranges = _kpu_body(batches=2).ranges()
    # 4 input channels of width 8 share one line: 8 lines per batch
    assert ranges["input"] == km.MemoryRange(km.MemoryType.K210_KPU, km.DataType.UINT8, 0, 2 * 8 * 64)
    assert ranges["output"].start == 128 and "main_mem_output" not in ranges


@pytest.mark.parametrize(
    "shape, size",
    [((1, 3, 240, 320), 230400), ((1, 125, 7, 10), 14336), ((1, 2, 2, 5), 128), ((2, 5, 3, 33), 2 * 5 * 3 * 64)],
)
def test_kpu_bytes_examples(shape, size) -> None:
    assert km.kpu_bytes(shape) == size


def test_kpu_offsets_follow_the_documented_formula() -> None:
    off = km.kpu_offsets((1, 5, 2, 5))
    assert off[0, 1, 1, 3] == 64 + 16 + 3  # §2 of kpu_semantics.md
    assert off[0, 4, 0, 0] == 128  # the fifth channel opens a second block
    assert np.array_equal(km.kpu_offsets((2, 3, 4, 64)).reshape(-1), np.arange(2 * 3 * 4 * 64))  # W % 64 == 0: NCHW
    assert km.kpu_row_layout(16) == (4, 1, 16) and km.kpu_row_layout(17) == (2, 1, 32)
    assert km.kpu_row_layout(64) == (1, 1, 64) and km.kpu_row_layout(65) == (1, 2, 64)


def test_layer_problems_lists_inconsistent_derived_fields() -> None:
    good = _kpu_body()
    assert km.layer_problems(good) == []
    bad = _kpu_body(layer=good.layer.replace(wb_group=2, para_size=31))
    assert km.layer_problems(bad) == ["wb_group is 2, expected 4", "para_size is 31, expected 32"]
