"""Build tiny kmodels around one or a few nodes and run them through write -> read -> kpu_sim."""

from __future__ import annotations

from typing import Sequence

import numpy as np

import kcc.kmodel as km
import kpu_sim

F32, U8 = km.DataType.FLOAT32, km.DataType.UINT8


class MainMemory:
    """Hands out 8-aligned main-memory ranges, like ncc's main allocator (§7.1)."""

    def __init__(self) -> None:
        self.top = 0

    def alloc(self, datatype: km.DataType, count: int) -> km.MemoryRange:
        r = km.MemoryRange(km.MemoryType.MAIN, datatype, self.top, count * datatype.itemsize)
        self.top += -(-r.size // 8) * 8
        return r


def run_nodes(
    nodes: Sequence[km.Body],
    inputs: Sequence[tuple[km.MemoryRange, Sequence[int], np.ndarray]],
    outputs: Sequence[km.MemoryRange],
    main_mem: int,
    constants: bytes = b"",
    trace=None,
) -> list[np.ndarray]:
    """Write a model holding `nodes`, read it back, and run it on the given input arrays."""
    model = km.KModel(
        main_mem=main_mem,
        inputs=[r for r, _, _ in inputs],
        input_shapes=[km.Shape4.of(s) for _, s, _ in inputs],
        outputs=list(outputs),
        constants=constants,
        nodes=list(nodes),
    )
    program = kpu_sim.load(km.write(model))
    return program.run([a for _, _, a in inputs], trace=trace)


def run_one(body_factory, in_arrays: Sequence[np.ndarray], out_datatype: km.DataType, out_count: int) -> np.ndarray:
    """Allocate one main range per input (shape taken from the array) and one output; run the body.

    `body_factory(input_ranges, output_range)` returns the body under test.
    """
    mem = MainMemory()
    ins = []
    for a in in_arrays:
        dt = F32 if a.dtype == np.float32 else U8
        ins.append((mem.alloc(dt, a.size), km.Shape4.of(a.shape if a.ndim else (1,)), a))
    out = mem.alloc(out_datatype, out_count)
    body = body_factory([r for r, _, _ in ins], out)
    return run_nodes([body], ins, [out], main_mem=mem.top)[0]
