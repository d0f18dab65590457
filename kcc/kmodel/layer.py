"""The KPU layer: `kpu_layer_argument_t` registers, batch-norm and activation tables (§9.3-9.5),
and the `kpu_conv2d` node body (§9.2) that carries them.

Register fields are decoded with the sign extension the nncase simulator applies (arg_w, arg_x:
24 bits; arg_add: 40; norm_mul: 24; norm_add: 32; y_mul: 16; x_start: 36). Packing is strict:
a value that does not fit its field raises `KmodelError` instead of being truncated. An emitter
that wants nncase's silent truncation calls `wrap_signed` / `wrap_unsigned` itself.
Reserved bits are written as 0 and ignored on read (real files carry garbage in bits 60-63 of
some activation segments; see ncc-outputs/README.md).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from kcc.errors import KmodelError
from kcc.kmodel.spec import KpuFilterType, KpuPoolType

# field -> (register index, lowest bit, width, signed). Order and positions: §9.3.
LAYER_FIELDS: dict[str, tuple[int, int, int, bool]] = {
    # 0 interrupt_enabe
    "int_en": (0, 0, 1, False),
    "ram_flag": (0, 1, 1, False),
    "full_add": (0, 2, 1, False),
    "depth_wise_layer": (0, 3, 1, False),
    # 1 image_addr (64-byte line numbers)
    "image_src_addr": (1, 0, 15, False),
    "image_dst_addr": (1, 32, 15, False),
    # 2 image_channel_num
    "i_ch_num": (2, 0, 10, False),
    "o_ch_num": (2, 32, 10, False),
    "o_ch_num_coef": (2, 48, 10, False),
    # 3 image_size
    "i_row_wid": (3, 0, 10, False),
    "i_col_high": (3, 10, 9, False),
    "o_row_wid": (3, 32, 10, False),
    "o_col_high": (3, 42, 9, False),
    # 4 kernel_pool_type_cfg
    "kernel_type": (4, 0, 3, False),
    "pad_type": (4, 3, 1, False),
    "pool_type": (4, 4, 4, False),
    "first_stride": (4, 8, 1, False),
    "bypass_conv": (4, 9, 1, False),
    "load_para": (4, 10, 1, False),
    "dma_burst_size": (4, 16, 8, False),
    "pad_value": (4, 24, 8, False),
    "bwsx_base_addr": (4, 32, 32, False),
    # 5 kernel_load_cfg
    "load_coor": (5, 0, 1, False),
    "load_time": (5, 1, 6, False),
    "para_size": (5, 15, 17, False),
    "para_start_addr": (5, 32, 32, False),
    # 6 kernel_offset
    "coef_column_offset": (6, 0, 4, False),
    "coef_row_offset": (6, 4, 12, False),
    # 7 kernel_calc_type_cfg
    "channel_switch_addr": (7, 0, 15, False),
    "row_switch_addr": (7, 16, 4, False),
    "coef_size": (7, 20, 8, False),
    "coef_group": (7, 28, 3, False),
    "load_act": (7, 31, 1, False),
    "active_addr": (7, 32, 32, False),
    # 8 write_back_cfg
    "wb_channel_switch_addr": (8, 0, 15, False),
    "wb_row_switch_addr": (8, 16, 4, False),
    "wb_group": (8, 20, 3, False),
    # 9 conv_value
    "shr_w": (9, 0, 4, False),
    "shr_x": (9, 4, 4, False),
    "arg_w": (9, 8, 24, True),
    "arg_x": (9, 32, 24, True),
    # 10 conv_value2
    "arg_add": (10, 0, 40, True),
    # 11 dma_parameter
    "send_data_out": (11, 0, 1, False),
    "channel_byte_num": (11, 16, 16, False),
    "dma_total_byte": (11, 32, 32, False),
}

LAYER_REGISTER_NAMES = (
    "interrupt_enabe",  # sic, as in kpu.h
    "image_addr",
    "image_channel_num",
    "image_size",
    "kernel_pool_type_cfg",
    "kernel_load_cfg",
    "kernel_offset",
    "kernel_calc_type_cfg",
    "write_back_cfg",
    "conv_value",
    "conv_value2",
    "dma_parameter",
)

# In the file these three "address" fields hold padding byte counts (§9.2); the writer sets them.
TABLE_SKIP_FIELDS = ("bwsx_base_addr", "active_addr", "para_start_addr")


def wrap_unsigned(value: int, bits: int) -> int:
    """Truncate to `bits` bits, as a C bit-field assignment does."""
    return value & ((1 << bits) - 1)


def wrap_signed(value: int, bits: int) -> int:
    """Truncate to `bits` bits and sign-extend (what nncase's encoder + simulator decoder do)."""
    value = wrap_unsigned(value, bits)
    return value - (1 << bits) if value >> (bits - 1) else value


def _insert(word: int, name: str, value: int, lsb: int, width: int, signed: bool) -> int:
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    if not lo <= value <= hi:
        kind = "signed" if signed else "unsigned"
        raise KmodelError(f"field {name}: value {value} does not fit in {width} bits ({kind}, {lo}..{hi})")
    return word | (wrap_unsigned(value, width) << lsb)


def _extract(word: int, lsb: int, width: int, signed: bool) -> int:
    raw = (word >> lsb) & ((1 << width) - 1)
    return wrap_signed(raw, width) if signed else raw


@dataclass(frozen=True, kw_only=True)
class KpuLayerArgument:
    """`kpu_layer_argument_t`: 12 little-endian u64 registers (§9.3), as named fields.

    Defaults are the constants ncc always writes (load_para, load_coor, load_act = 1,
    dma_burst_size = 15); every other field defaults to 0. `kernel_type` and `pool_type`
    are enums because the runtime rejects other values.
    """

    int_en: int = 0
    ram_flag: int = 0
    full_add: int = 0
    depth_wise_layer: int = 0
    image_src_addr: int = 0
    image_dst_addr: int = 0
    i_ch_num: int = 0
    o_ch_num: int = 0
    o_ch_num_coef: int = 0
    i_row_wid: int = 0
    i_col_high: int = 0
    o_row_wid: int = 0
    o_col_high: int = 0
    kernel_type: KpuFilterType = KpuFilterType.FILTER_1X1
    pad_type: int = 0
    pool_type: KpuPoolType = KpuPoolType.BYPASS
    first_stride: int = 0
    bypass_conv: int = 0
    load_para: int = 1
    dma_burst_size: int = 15
    pad_value: int = 0
    bwsx_base_addr: int = 0
    load_coor: int = 1
    load_time: int = 0
    para_size: int = 0
    para_start_addr: int = 0
    coef_column_offset: int = 0
    coef_row_offset: int = 0
    channel_switch_addr: int = 0
    row_switch_addr: int = 0
    coef_size: int = 0
    coef_group: int = 0
    load_act: int = 1
    active_addr: int = 0
    wb_channel_switch_addr: int = 0
    wb_row_switch_addr: int = 0
    wb_group: int = 0
    shr_w: int = 0
    shr_x: int = 0
    arg_w: int = 0
    arg_x: int = 0
    arg_add: int = 0
    send_data_out: int = 0
    channel_byte_num: int = 0
    dma_total_byte: int = 0

    SIZE: ClassVar[int] = 96

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kernel_type", KpuFilterType(self.kernel_type))
        except ValueError:
            raise KmodelError(f"field kernel_type has invalid kpu_filter_type value {self.kernel_type}") from None
        try:
            object.__setattr__(self, "pool_type", KpuPoolType(self.pool_type))
        except ValueError:
            raise KmodelError(f"field pool_type has invalid kpu_pool_type value {self.pool_type}") from None

    # Derived quantities, named as the runtime names them.
    @property
    def in_channels(self) -> int:
        return self.i_ch_num + 1

    @property
    def out_channels(self) -> int:
        return self.o_ch_num + 1

    @property
    def in_width(self) -> int:
        return self.i_row_wid + 1

    @property
    def in_height(self) -> int:
        return self.i_col_high + 1

    @property
    def out_width(self) -> int:
        return self.o_row_wid + 1

    @property
    def out_height(self) -> int:
        return self.o_col_high + 1

    @property
    def filter_size(self) -> int:
        return self.kernel_type.size

    @property
    def weights_count(self) -> int:
        """§9.6: oc*f*f if depthwise, else ic*oc*f*f (as the runtime's deserializer computes it)."""
        f = self.filter_size
        if self.depth_wise_layer:
            return self.out_channels * f * f
        return self.in_channels * self.out_channels * f * f

    def registers(self, **overrides: int) -> tuple[int, ...]:
        """The 12 register words; `overrides` replaces field values (used for the table skips)."""
        words = [0] * 12
        for name, (reg, lsb, width, signed) in LAYER_FIELDS.items():
            value = overrides[name] if name in overrides else getattr(self, name)
            words[reg] = _insert(words[reg], name, int(value), lsb, width, signed)
        return tuple(words)

    @staticmethod
    def decode(words: tuple[int, ...] | list[int]) -> dict[str, int]:
        """Field values of 12 register words (signed fields sign-extended, reserved bits dropped)."""
        if len(words) != 12:
            raise KmodelError(f"kpu layer needs 12 registers, got {len(words)}")
        return {name: _extract(words[reg], lsb, w, signed) for name, (reg, lsb, w, signed) in LAYER_FIELDS.items()}

    @classmethod
    def from_registers(cls, words: tuple[int, ...] | list[int]) -> KpuLayerArgument:
        return cls(**cls.decode(words))

    def pack(self) -> bytes:
        return struct.pack("<12Q", *self.registers())

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> KpuLayerArgument:
        if len(buf) < cls.SIZE:
            raise KmodelError(f"too short for field layer: needs {cls.SIZE} bytes, only {len(buf)} left")
        return cls.from_registers(struct.unpack_from("<12Q", buf))

    def replace(self, **changes: int) -> KpuLayerArgument:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class KpuBatchNormTable:
    """The batch-norm table (§9.4): one u64 `kpu_batchnorm_argument_t` per output channel.

    y = ((acc * norm_mul) >> norm_shift) + norm_add. Held as three int64 arrays of length oc
    (norm_mul s24, norm_add s32, norm_shift u4) so that large layers encode in one numpy pass.
    """

    norm_mul: np.ndarray
    norm_add: np.ndarray
    norm_shift: np.ndarray

    ENTRY_SIZE: ClassVar[int] = 8

    def __post_init__(self) -> None:
        arrays = [np.array(a, dtype=np.int64).reshape(-1) for a in (self.norm_mul, self.norm_add, self.norm_shift)]
        if not len(arrays[0]) == len(arrays[1]) == len(arrays[2]):
            raise KmodelError(f"batch-norm arrays differ in length: {[len(a) for a in arrays]}")
        for name, arr, (width, signed) in zip(("norm_mul", "norm_add", "norm_shift"), arrays, _BN_FIELDS.values()):
            lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
            if arr.size and (arr.min() < lo or arr.max() > hi):
                bad = int(arr[(arr < lo) | (arr > hi)][0])
                raise KmodelError(f"field batch_norm.{name}: value {bad} does not fit in {width} bits ({lo}..{hi})")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def of(cls, entries: Sequence[tuple[int, int, int]]) -> KpuBatchNormTable:
        """Build from (norm_mul, norm_add, norm_shift) triples."""
        cols = list(zip(*entries)) if len(entries) else [(), (), ()]
        return cls(*(np.array(c, dtype=np.int64) for c in cols))

    def __len__(self) -> int:
        return len(self.norm_mul)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KpuBatchNormTable):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in _BN_FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def words(self) -> np.ndarray:
        """The table as little-endian u64 words, reserved bits 60-63 zero."""
        word = self.norm_mul.astype(np.uint64) & np.uint64(0xFFFFFF)
        word |= (self.norm_add.astype(np.uint64) & np.uint64(0xFFFFFFFF)) << np.uint64(24)
        word |= self.norm_shift.astype(np.uint64) << np.uint64(56)
        return word.astype("<u8")

    @classmethod
    def from_words(cls, words: np.ndarray) -> KpuBatchNormTable:
        w = np.asarray(words, dtype=np.uint64)
        mul = (w & np.uint64(0xFFFFFF)).astype(np.int64)
        add = ((w >> np.uint64(24)) & np.uint64(0xFFFFFFFF)).astype(np.int64)
        shift = ((w >> np.uint64(56)) & np.uint64(0xF)).astype(np.int64)
        mul = np.where(mul >= 1 << 23, mul - (1 << 24), mul)
        add = np.where(add >= 1 << 31, add - (1 << 32), add)
        return cls(mul, add, shift)


_BN_FIELDS = {"norm_mul": (24, True), "norm_add": (32, True), "norm_shift": (4, False)}


@dataclass(frozen=True)
class KpuActivationSegment:
    """One of the 16 segments of `kpu_activate_table_t` (§9.5) with its result bias byte.

    out = clamp(round(((v - x_start) * y_mul) / 2^shift_number) + bias, 0, 255) for the
    highest-index segment with v > x_start.
    """

    shift_number: int  # u8
    y_mul: int  # s16 (nncase's simulator sign-extends it)
    x_start: int  # s36
    bias: int  # u8

    def to_word(self) -> int:
        word = _insert(0, "shift_number", self.shift_number, 0, 8, False)
        word = _insert(word, "y_mul", self.y_mul, 8, 16, True)
        return _insert(word, "x_start", self.x_start, 24, 36, True)

    @classmethod
    def from_word(cls, word: int, bias: int) -> KpuActivationSegment:
        return cls(_extract(word, 0, 8, False), _extract(word, 8, 16, True), _extract(word, 24, 36, True), bias)


@dataclass(frozen=True)
class KpuActivationTable:
    """`kpu_activate_table_t` (§9.5): 16 u64 segments, then 16 bias bytes (144 bytes)."""

    segments: tuple[KpuActivationSegment, ...]

    SIZE: ClassVar[int] = 144

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        if len(self.segments) != 16:
            raise KmodelError(f"activation table needs 16 segments, got {len(self.segments)}")

    def pack(self) -> bytes:
        for i, seg in enumerate(self.segments):
            if not 0 <= seg.bias <= 255:
                raise KmodelError(f"field activation.bias[{i}]: value {seg.bias} does not fit in 8 bits")
        words = struct.pack("<16Q", *(seg.to_word() for seg in self.segments))
        return words + bytes(seg.bias for seg in self.segments)

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> KpuActivationTable:
        if len(buf) < cls.SIZE:
            raise KmodelError(f"too short for field activation: needs {cls.SIZE} bytes, only {len(buf)} left")
        words = struct.unpack_from("<16Q", buf)
        biases = bytes(buf[128:144])
        return cls(tuple(KpuActivationSegment.from_word(w, b) for w, b in zip(words, biases)))
