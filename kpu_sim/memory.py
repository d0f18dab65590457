"""The three memory spaces a kmodel addresses (kmodel_v4.md §3.1, §7).

* main memory: `header.main_mem` bytes, allocated by the runtime (zeroed here, for determinism;
  the real runtime does not clear it),
* the constants blob of the file (read-only here; ncc never writes to it),
* KPU RAM: 2 MiB, addressed in bytes by memory ranges and in 64-byte lines by KPU registers.

Kernels read with `read(range, dtype, count)`, which, like the runtime's `memory_at<T>`, only
uses `range.start` and reinterprets bytes as the kernel's element type; the range's `size`
bounds the access. Writes go through `write(range, values)`.
"""

from __future__ import annotations

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import KPU_RAM_SIZE, MemoryRange, MemoryType, kpu_offsets


class Memory:
    """Main memory, constants and KPU RAM of one program run."""

    def __init__(self, main_mem: int, constants: bytes):
        self.main = np.zeros(main_mem, dtype=np.uint8)
        self.const = np.frombuffer(bytes(constants), dtype=np.uint8)
        self.kpu = np.zeros(KPU_RAM_SIZE, dtype=np.uint8)

    def reset(self) -> None:
        self.main[:] = 0
        self.kpu[:] = 0

    def space(self, memory_type: MemoryType) -> np.ndarray:
        if memory_type is MemoryType.MAIN:
            return self.main
        if memory_type is MemoryType.CONST:
            return self.const
        return self.kpu

    def span(self, r: MemoryRange, nbytes: int | None = None) -> np.ndarray:
        """The bytes of `r` (a view). `nbytes` asks for a prefix of the range."""
        nbytes = r.size if nbytes is None else nbytes
        if nbytes > r.size:
            raise SimulatorError(f"needs {nbytes} bytes of {r}, which holds only {r.size}")
        space = self.space(r.memory_type)
        if r.start + nbytes > len(space):
            raise SimulatorError(f"{r} runs past the end of {r.memory_type.name.lower()} memory ({len(space)} bytes)")
        return space[r.start : r.start + nbytes]

    def read(self, r: MemoryRange, dtype: str | np.dtype, count: int | None = None) -> np.ndarray:
        """A copy of `count` elements of `dtype` at `r.start` (default: as many as fit in `r`)."""
        dt = np.dtype(dtype)
        count = r.size // dt.itemsize if count is None else count
        return self.span(r, count * dt.itemsize).copy().view(dt)

    def read_typed(self, r: MemoryRange) -> np.ndarray:
        """The whole range as its own datatype (what trace hooks and outputs show)."""
        return self.read(r, r.datatype.numpy)

    def write(self, r: MemoryRange, values: np.ndarray) -> None:
        """Store `values` (already of the kernel's element type) from `r.start` on."""
        if r.memory_type is MemoryType.CONST:
            raise SimulatorError(f"cannot write to constant memory ({r})")
        data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        self.span(r, data.size)[:] = data

    def upload(self, r: MemoryRange, nchw: np.ndarray) -> None:
        """Write an NCHW uint8 map into KPU RAM in the §7.3 layout; padding bytes are untouched."""
        if r.memory_type is not MemoryType.K210_KPU:
            raise SimulatorError(f"kpu upload target {r} is not in KPU RAM")
        offsets = kpu_offsets(nchw.shape)
        span = self.span(r, int(offsets.max()) + 1 if offsets.size else 0)
        span[offsets.reshape(-1)] = nchw.reshape(-1)

    def download(self, r: MemoryRange, shape: tuple[int, int, int, int]) -> np.ndarray:
        """Read an NCHW uint8 map stored in the §7.3 layout."""
        offsets = kpu_offsets(shape)
        span = self.span(r, int(offsets.max()) + 1 if offsets.size else 0)
        return span[offsets]
