"""Tensor types of the IR: a static shape and an element type."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class DType(enum.Enum):
    float32 = "f32"
    uint8 = "u8"
    int32 = "i32"

    @property
    def numpy(self) -> np.dtype:
        return np.dtype({"f32": np.float32, "u8": np.uint8, "i32": np.int32}[self.value])

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


@dataclass(frozen=True, slots=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: DType = DType.float32

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype.value}[{','.join(map(str, self.shape))}]"
