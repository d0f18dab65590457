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
from kcc.kmodel import KPU_RAM_SIZE, MemoryRange, MemoryType, kpu_row_layout, kpu_rows
from kcc.kmodel.spec import KPU_LINE_SIZE


class Memory:
    """Main memory, constants and KPU RAM of one program run."""

    def __init__(self, main_mem: int, constants: bytes):
        self.main = np.zeros(main_mem, dtype=np.uint8)
        self.const = np.frombuffer(bytes(constants), dtype=np.uint8)
        self.kpu = np.zeros(KPU_RAM_SIZE, dtype=np.uint8)

    def reset(self) -> None:
        # Fresh zeroed buffers (calloc: pages are only touched when a kernel writes them).
        self.main = np.zeros(len(self.main), dtype=np.uint8)
        self.kpu = np.zeros(KPU_RAM_SIZE, dtype=np.uint8)

    def space(self, memory_type: MemoryType) -> np.ndarray:
        if memory_type is MemoryType.MAIN:
            return self.main
        if memory_type is MemoryType.CONST:
            return self.const
        return self.kpu

    def require(self, r: MemoryRange, nbytes: int) -> None:
        """Raise before a kernel allocates an output that `r` could not hold anyway.

        Sizes come from body fields, so a corrupted field must fail here, not in a huge
        allocation or loop.
        """
        if nbytes > r.size:
            raise SimulatorError(f"needs {nbytes} bytes of {r}, which holds only {r.size}")

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
        for target, source in _layout_pieces(self.span(r, kpu_extent(nchw.shape)), nchw.shape, nchw):
            target[...] = source

    def download(self, r: MemoryRange, shape: tuple[int, int, int, int]) -> np.ndarray:
        """Read an NCHW uint8 map stored in the §7.3 layout."""
        out = np.empty(tuple(shape), dtype=np.uint8)
        for source, target in _layout_pieces(self.span(r, kpu_extent(shape)), shape, out):
            target[...] = source
        return out


def kpu_extent(shape: tuple[int, ...]) -> int:
    """Bytes from a map's first line to its last valid byte + 1 (the span upload/download touch)."""
    n, c, h, w = (int(d) for d in shape)
    if min(n, c, h, w) <= 0:
        return 0
    layout = kpu_row_layout(w)
    last_c = c - 1
    return (
        (n - 1) * kpu_rows(w, h, c) * KPU_LINE_SIZE
        + (last_c // layout.groups) * layout.row_len * h * KPU_LINE_SIZE
        + (last_c % layout.groups) * layout.row_pitch
        + (h - 1) * layout.row_len * KPU_LINE_SIZE
        + w
    )


def _layout_pieces(span: np.ndarray, shape: tuple[int, ...], nchw: np.ndarray):
    """Pairs (KPU-layout view, matching NCHW view) covering every element of the map once.

    §7.3 places element (n, c, y, x) at n*B + (c // g)*row_len*H*64 + (c % g)*pitch +
    y*row_len*64 + x. That is a strided 5-D view (n, block, slot, y, x) of the span, so the
    copy is a handful of numpy slice assignments instead of a gather: all full channel blocks
    at once, then the slots of a last, partial block (the other slots stay untouched padding).
    """
    n, c, h, w = (int(d) for d in shape)
    if min(n, c, h, w) <= 0:
        return []
    layout = kpu_row_layout(w)
    g = layout.groups
    line = layout.row_len * KPU_LINE_SIZE
    blocks = -(-c // g)
    strides = (kpu_rows(w, h, c) * KPU_LINE_SIZE, line * h, layout.row_pitch, line, 1)
    size_needed = kpu_extent(shape)
    base = span[:size_needed]
    view = np.lib.stride_tricks.as_strided(base, shape=(n, blocks, g, h, w), strides=strides, writeable=True)
    full = c // g
    pieces = []
    if full:
        pieces.append((view[:, :full], nchw[:, : full * g].reshape(n, full, g, h, w)))
    if c % g:
        pieces.append((view[:, full, : c % g], nchw[:, full * g :]))
    return pieces
