"""The `Body` base class: a body dataclass's field order and types *are* its byte layout.

A body is declared once, as a frozen dataclass whose fields appear in file order (§8, §9):

    @body_dataclass
    class Unary(Body):
        OPCODE: ClassVar[Opcode] = Opcode.UNARY
        input: MemoryRange
        output: MemoryRange
        unary_op: UnaryOp

Each annotation selects the encoding: `MemoryRange`, `Shape4`, `Padding`, `Paddings4`, `ValueRange`,
`QuantParam`, `Scalar` (their own layouts), `int` = i32, `U32` = u32, `float` = f32,
an `IntEnum` = u32 enum (validated on read), `bool` = one byte plus 3 bytes of struct tail
padding (§8.11). Fields annotated `np.ndarray` are trailing arrays: the class lists them in
`_array_layout()` with their element type and a count computed from the fixed fields, exactly
as the runtime's deserializer computes it. Bodies with other tails override `_pack_tail` and
`_unpack_tail`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from enum import IntEnum
from typing import Annotated, Any, ClassVar, Mapping, TypeVar

import numpy as np

from kcc.errors import KmodelError
from kcc.kmodel.spec import Opcode
from kcc.kmodel.types import (
    MemoryRange,
    Padding,
    Paddings4,
    QuantParam,
    Reader,
    Scalar,
    Shape4,
    ValueRange,
    Writer,
    _enum,
)

_U32_TAG = "u32"
U32 = Annotated[int, _U32_TAG]
"""An unsigned 32-bit field (plain `int` fields are i32)."""

_B = TypeVar("_B", bound="Body")

_VALUE_TYPES = (MemoryRange, ValueRange, QuantParam, Scalar)


class _Field:
    """Encoding of one fixed-size field."""

    def __init__(self, kind: str, type_: Any = None):
        self.kind = kind
        self.type = type_

    def coerce(self, value: Any, name: str) -> Any:
        if self.kind == "enum":
            return _enum(self.type, int(value), name)
        if self.kind in ("shape", "padding"):
            return self.type(*value)
        if self.kind == "paddings":
            return Paddings4.of(value)
        if self.kind in ("i32", "u32"):
            return int(value)
        if self.kind == "f32":
            return float(value)
        if self.kind == "bool":
            return bool(value)
        return value

    def pack(self, w: Writer, value: Any, name: str) -> None:
        if self.kind == "i32":
            w.pack("<i", value, what=name)
        elif self.kind in ("u32", "enum"):
            w.pack("<I", value, what=name)
        elif self.kind == "f32":
            w.pack("<f", value, what=name)
        elif self.kind == "bool":
            w.raw(bytes([1 if value else 0, 0, 0, 0]))  # §8.11: 3 bytes of struct tail padding
        else:
            w.raw(value.pack())

    def unpack(self, r: Reader, name: str) -> Any:
        if self.kind == "i32":
            return r.i32(name)
        if self.kind == "u32":
            return r.u32(name)
        if self.kind == "enum":
            return _enum(self.type, r.u32(name), name)
        if self.kind == "f32":
            return r.f32(name)
        if self.kind == "bool":
            flag = r.take(4, name)[0]  # bytes 1..3 are struct padding, content undefined (§8.11)
            if flag > 1:
                raise KmodelError(f"field {name} has invalid bool value {flag}")
            return bool(flag)
        return self.type.read(r, name)


def _field_for(hint: Any) -> _Field | None:
    if typing.get_origin(hint) is Annotated:
        return _Field("u32") if _U32_TAG in hint.__metadata__ else _field_for(hint.__origin__)
    if hint is int:
        return _Field("i32")
    if hint is float:
        return _Field("f32")
    if hint is bool:
        return _Field("bool")
    if isinstance(hint, type) and issubclass(hint, IntEnum):
        return _Field("enum", hint)
    if hint is Shape4:
        return _Field("shape", Shape4)
    if hint is Padding:
        return _Field("padding", Padding)
    if hint is Paddings4:
        return _Field("paddings", Paddings4)
    if hint in _VALUE_TYPES:
        return _Field("value", hint)
    return None  # a trailing array / tail field


class Body:
    """Base of every node body. Subclasses are declared with `@body_dataclass`."""

    OPCODE: ClassVar[Opcode]
    OUTPUTS: ClassVar[tuple[str, ...]] = ("output",)
    """Names of the memory-range fields the node writes; every other range is read."""

    # -- layout -------------------------------------------------------------------------------

    @classmethod
    @functools.cache
    def _fixed_fields(cls) -> tuple[tuple[str, _Field], ...]:
        hints = typing.get_type_hints(cls, include_extras=True)
        out = []
        for f in dataclasses.fields(cls):
            codec = _field_for(hints[f.name])
            if codec is not None:
                out.append((f.name, codec))
        return tuple(out)

    @classmethod
    def _array_layout(cls, values: Mapping[str, Any]) -> list[tuple[str, str, int]]:
        """(field, little-endian dtype, element count) of each trailing array, in file order."""
        return []

    def __post_init__(self) -> None:
        for name, codec in self._fixed_fields():
            object.__setattr__(self, name, codec.coerce(getattr(self, name), name))
        values = {name: getattr(self, name) for name, _ in self._fixed_fields()}
        for name, dtype, count in self._array_layout(values):
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.dtype(dtype)).reshape(-1)
            if arr.size != count:
                raise KmodelError(
                    f"{self.OPCODE.kmodel_name}: field {name} has {arr.size} elements, the other fields need {count}"
                )
            if arr.flags.writeable:
                arr = arr.copy()
                arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # -- encoding -----------------------------------------------------------------------------

    def pack(self, offset: int = 0) -> bytes:
        """The body payload without the trailing 0-7 padding bytes.

        `offset` is the absolute file offset of the body's first byte; only `KpuConv2D`
        needs it (its tables are aligned to file offsets, §9.2).
        """
        w = Writer()
        for name, codec in self._fixed_fields():
            codec.pack(w, getattr(self, name), name)
        self._pack_tail(w, offset)
        return w.getvalue()

    def _pack_tail(self, w: Writer, offset: int) -> None:
        values = {name: getattr(self, name) for name, _ in self._fixed_fields()}
        for name, dtype, _count in self._array_layout(values):
            w.raw(np.asarray(getattr(self, name), dtype=np.dtype(dtype)).tobytes())

    @classmethod
    def unpack(cls: type[_B], buf: bytes | memoryview, offset: int = 0) -> _B:
        """Decode a body; `buf` may include the padding. Raises `KmodelError` if it is too short."""
        return cls.unpack_from(buf, offset)[0]

    @classmethod
    def unpack_from(cls: type[_B], buf: bytes | memoryview, offset: int = 0) -> tuple[_B, int]:
        """Decode a body and also return the payload size it occupied (without padding)."""
        r = Reader(buf)
        values = {name: codec.unpack(r, name) for name, codec in cls._fixed_fields()}
        values.update(cls._unpack_tail(r, values, offset))
        return cls(**values), r.pos

    @classmethod
    def _unpack_tail(cls, r: Reader, values: dict[str, Any], offset: int) -> dict[str, Any]:
        tail = {}
        for name, dtype, count in cls._array_layout(values):
            if count < 0:
                raise KmodelError(f"field {name} would have a negative element count ({count})")
            tail[name] = r.array(dtype, count, name)
        return tail

    # -- memory ranges ------------------------------------------------------------------------

    def ranges(self) -> dict[str, MemoryRange]:
        """Every memory range the node touches, by field name (list items as `name[i]`)."""
        out: dict[str, MemoryRange] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, MemoryRange):
                out[f.name] = value
            elif isinstance(value, tuple) and value and isinstance(value[0], MemoryRange):
                out.update((f"{f.name}[{i}]", item) for i, item in enumerate(value))
        return out

    def input_ranges(self) -> dict[str, MemoryRange]:
        return {k: v for k, v in self.ranges().items() if k not in self.OUTPUTS}

    def output_ranges(self) -> dict[str, MemoryRange]:
        return {k: v for k, v in self.ranges().items() if k in self.OUTPUTS}

    # -- value semantics (numpy arrays make the dataclass __eq__ unusable) -------------------

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                a, b = np.asarray(a), np.asarray(b)
                if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


body_dataclass = dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
"""Decorator for body classes: frozen, keyword-only, compared by `Body.__eq__`."""


def element_count(what: str, *factors: int, divisor: int = 1) -> int:
    """An array length as the runtime's deserializer computes it.

    The runtime evaluates `(size_t)a * b / divisor * c * d`: the first two factors are
    multiplied, then divided (integer division), then the rest multiplied in.
    """
    if any(f < 0 for f in factors) or divisor <= 0:
        raise KmodelError(f"field counts for {what} are invalid ({factors}, divisor {divisor})")
    total = factors[0] * factors[1] // divisor if len(factors) > 1 else factors[0] // divisor
    for f in factors[2:]:
        total *= f
    return total
