"""Common value types of kmodel v4 (§3) and the little binary reader/writer every struct uses.

The reader never lets `struct.error` or `IndexError` escape: running off the end of a buffer
raises `KmodelError` naming the field that did not fit, so `read()` can add the node context.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from kcc.errors import KmodelError
from kcc.kmodel.spec import FLT_MAX, DataType, MemoryType


class Reader:
    """Sequential little-endian reader over one buffer (a body, or the whole file)."""

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int = 0):
        self.buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, size: int, what: str) -> memoryview:
        if size < 0:
            raise KmodelError(f"field {what} has a negative size ({size})")
        if size > self.remaining:
            raise KmodelError(
                f"too short for field {what}: needs {size} bytes at offset {self.pos}, "
                f"only {max(self.remaining, 0)} left"
            )
        view = self.buf[self.pos : self.pos + size]
        self.pos += size
        return view

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def i32(self, what: str) -> int:
        return self.unpack("<i", what)[0]

    def f32(self, what: str) -> float:
        return self.unpack("<f", what)[0]

    def array(self, dtype: str | np.dtype, count: int, what: str) -> np.ndarray:
        """A read-only copy of `count` elements (§1: arrays may sit at unaligned offsets)."""
        dt = np.dtype(dtype)
        data = self.take(count * dt.itemsize, what)
        out = np.frombuffer(bytes(data), dtype=dt)
        out.setflags(write=False)
        return out


class Writer:
    """Appends little-endian fields; `pos` is the number of bytes written so far."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.pos = 0

    def raw(self, data: bytes) -> None:
        self._chunks.append(bytes(data))
        self.pos += len(data)

    def zeros(self, count: int) -> None:
        self.raw(bytes(count))

    def pack(self, fmt: str, *values: object, what: str = "value") -> None:
        try:
            self.raw(struct.pack(fmt, *values))
        except struct.error as exc:
            raise KmodelError(f"field {what}: {values} does not fit the {fmt!r} encoding ({exc})") from exc

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)


def _enum(enum_type: type, value: int, what: str):
    try:
        return enum_type(value)
    except ValueError:
        raise KmodelError(f"field {what} has invalid {enum_type.__name__} value {value}") from None


@dataclass(frozen=True)
class MemoryRange:
    """`memory_range` (§3.1). `start` and `size` are in bytes; `size == 0` means "absent"."""

    memory_type: MemoryType
    datatype: DataType
    start: int
    size: int

    SIZE = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory_type", _enum(MemoryType, self.memory_type, "memory_type"))
        object.__setattr__(self, "datatype", _enum(DataType, self.datatype, "datatype"))

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def count(self) -> int:
        """Number of whole elements of `datatype` in the range."""
        return self.size // self.datatype.itemsize

    def pack(self) -> bytes:
        try:
            return struct.pack("<4I", self.memory_type, self.datatype, self.start, self.size)
        except struct.error as exc:
            raise KmodelError(f"memory range {self} does not fit u32 fields") from exc

    @classmethod
    def read(cls, reader: Reader, what: str = "memory_range") -> MemoryRange:
        mem, dt, start, size = reader.unpack("<4I", what)
        return cls(_enum(MemoryType, mem, f"{what}.memory_type"), _enum(DataType, dt, f"{what}.datatype"), start, size)

    def __str__(self) -> str:
        return f"{self.memory_type.name.lower()}/{self.datatype.name.lower()}@{self.start}+{self.size}"


ABSENT_RANGE = MemoryRange(MemoryType.CONST, DataType.FLOAT32, 0, 0)  # §3.1: ncc's "unused" range


class Shape4(NamedTuple):
    """`runtime_shape_t` (§3.3): N, C, H, W as i32, front-padded with 1 by ncc."""

    n: int
    c: int
    h: int
    w: int

    SIZE = 16

    @classmethod
    def of(cls, dims: Sequence[int], fill: int = 1) -> Shape4:
        """Front-pad a shape of rank <= 4 with `fill` (§3.3; strided_slice.begin uses 0)."""
        dims = [int(d) for d in dims]
        if len(dims) > 4:
            raise ValueError(f"shape {dims} has more than 4 dimensions")
        return cls(*([fill] * (4 - len(dims)) + dims))

    @property
    def count(self) -> int:
        return self.n * self.c * self.h * self.w

    def pack(self) -> bytes:
        try:
            return struct.pack("<4i", *self)
        except struct.error as exc:
            raise KmodelError(f"shape {tuple(self)} does not fit i32 fields") from exc

    @classmethod
    def read(cls, reader: Reader, what: str = "shape") -> Shape4:
        return cls(*reader.unpack("<4i", what))


class Padding(NamedTuple):
    """`padding` (§3.4): negative values crop."""

    before: int
    after: int

    SIZE = 8

    def pack(self) -> bytes:
        try:
            return struct.pack("<2i", self.before, self.after)
        except struct.error as exc:
            raise KmodelError(f"padding {tuple(self)} does not fit i32 fields") from exc

    @classmethod
    def read(cls, reader: Reader, what: str = "padding") -> Padding:
        return cls(*reader.unpack("<2i", what))


@dataclass(frozen=True)
class ValueRange:
    """`value_range<f32>` (§3.4): the fused activation clamp; +-FLT_MAX means none."""

    min: float
    max: float

    SIZE = 8

    @classmethod
    def full(cls) -> ValueRange:
        return cls(-FLT_MAX, FLT_MAX)

    def pack(self) -> bytes:
        return struct.pack("<2f", self.min, self.max)

    @classmethod
    def read(cls, reader: Reader, what: str = "value_range") -> ValueRange:
        return cls(*reader.unpack("<2f", what))


@dataclass(frozen=True)
class QuantParam:
    """`quant_param` (§3.4). `scale` is nncase's inverted scale: q = round(x * scale + zero_point)."""

    zero_point: int
    scale: float

    SIZE = 8

    def pack(self) -> bytes:
        try:
            return struct.pack("<if", self.zero_point, self.scale)
        except struct.error as exc:
            raise KmodelError(f"quant_param {self} does not fit i32/f32 fields") from exc

    @classmethod
    def read(cls, reader: Reader, what: str = "quant_param") -> QuantParam:
        return cls(*reader.unpack("<if", what))


@dataclass(frozen=True)
class Scalar:
    """`scalar` (§3.4): a datatype tag plus 4 raw storage bytes (uint8 lives in byte 0)."""

    datatype: DataType = DataType.FLOAT32
    storage: bytes = bytes(4)

    SIZE = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "datatype", _enum(DataType, self.datatype, "scalar.datatype"))
        if len(self.storage) != 4:
            raise ValueError(f"scalar storage must be 4 bytes, got {len(self.storage)}")
        object.__setattr__(self, "storage", bytes(self.storage))

    @classmethod
    def of_float(cls, value: float) -> Scalar:
        return cls(DataType.FLOAT32, struct.pack("<f", value))

    @classmethod
    def of_uint8(cls, value: int) -> Scalar:
        return cls(DataType.UINT8, bytes([value, 0, 0, 0]))

    def pack(self) -> bytes:
        return struct.pack("<I", self.datatype) + self.storage

    @classmethod
    def read(cls, reader: Reader, what: str = "scalar") -> Scalar:
        dt = reader.u32(f"{what}.datatype")
        return cls(_enum(DataType, dt, f"{what}.datatype"), bytes(reader.take(4, f"{what}.storage")))


class Paddings4(NamedTuple):
    """`runtime_paddings_t` (§3.4): one `Padding` per N, C, H, W axis."""

    n: Padding
    c: Padding
    h: Padding
    w: Padding

    SIZE = 32

    @classmethod
    def of(cls, pairs: Sequence[Sequence[int]]) -> Paddings4:
        return cls(*(Padding(*p) for p in pairs))

    def pack(self) -> bytes:
        return b"".join(Padding(*p).pack() for p in self)

    @classmethod
    def read(cls, reader: Reader, what: str = "paddings") -> Paddings4:
        return cls(*(Padding.read(reader, f"{what}[{i}]") for i in range(4)))
