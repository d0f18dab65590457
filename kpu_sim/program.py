"""Load a kmodel v4 and run it node by node, as the nncase v0 runtime does (kmodel_v4.md §11).

Each `run()` starts from zeroed main memory and KPU RAM, stores the inputs (a KPU input is
uploaded from NCHW into the §7.3 layout, as the SDK and `ncc infer` do), executes the nodes
strictly in file order and returns a copy of every output range.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kcc.errors import KmodelError, SimulatorError
from kcc.kmodel import (
    Body,
    KModel,
    MemoryRange,
    MemoryType,
    Opcode,
    Shape4,
    read,
    read_file,
    validate,
)
from kpu_sim.blas import single_thread
from kpu_sim.checks import check_model
from kpu_sim.kernels import KERNELS
from kpu_sim.memory import Memory

Trace = Callable[[int, Opcode, Body, list[np.ndarray]], None]
"""trace(node_index, opcode, body, outputs): `outputs` are copies of the node's output ranges."""


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: where it lives and how to interpret it.

    `shape` is the NCHW input shape (None for outputs: the format stores none, §5). `count` is
    the number of elements the caller passes or receives; for a KPU input that is the NCHW
    element count, not the (larger) KPU-layout `size`.
    """

    memory: MemoryRange
    shape: Shape4 | None = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.memory.datatype.itemsize == 4 else np.dtype(np.uint8)

    @property
    def size(self) -> int:
        return self.memory.size

    @property
    def count(self) -> int:
        return self.shape.count if self.shape is not None else self.memory.count


class Program:
    """A loaded kmodel ready to run. Holds its memory between runs (reset at each run)."""

    def __init__(self, model: KModel, name: str | None = None):
        try:
            validate(model)
            check_model(model)
        except KmodelError as exc:
            raise KmodelError(f"{name}: {exc}" if name else str(exc)) from None
        self.model = model
        self.inputs = [TensorInfo(r, s) for r, s in zip(model.inputs, model.input_shapes)]
        self.outputs = [TensorInfo(r) for r in model.outputs]
        self.memory = Memory(model.main_mem, model.constants)

    def run(self, inputs: Sequence[np.ndarray], trace: Trace | None = None,
            profile: list[float] | None = None) -> list[np.ndarray]:
        """Run once; returns the outputs as flat 1-D arrays, in output order.

        `profile`, if given, is a list with one entry per node: each node's kernel time in
        seconds is added to its entry (bench/sim.py uses it for the per-opcode breakdown).
        """
        if len(inputs) != len(self.inputs):
            raise SimulatorError(f"the model takes {len(self.inputs)} inputs, got {len(inputs)}")
        if profile is not None and len(profile) != len(self.model.nodes):
            raise SimulatorError(f"profile needs one entry per node ({len(self.model.nodes)}), got {len(profile)}")
        mem = self.memory
        mem.reset()
        for i, (info, value) in enumerate(zip(self.inputs, inputs)):
            self._store_input(i, info, value)
        with np.errstate(all="ignore"), single_thread():  # C float semantics: inf/nan silently
            for index, node in enumerate(self.model.nodes):
                started = time.perf_counter()
                try:
                    KERNELS[node.opcode](mem, node.body)
                except SimulatorError as exc:
                    raise SimulatorError(f"node {index} ({node.name}): {exc}") from None
                except (ValueError, IndexError) as exc:  # inconsistent shapes in a body
                    raise SimulatorError(f"node {index} ({node.name}): cannot execute: {exc}") from exc
                if profile is not None:
                    profile[index] += time.perf_counter() - started
                if trace is not None:
                    outs = [mem.read_typed(r) for r in node.body.output_ranges().values()]
                    trace(index, node.opcode, node.body, outs)
        return [mem.read_typed(info.memory) for info in self.outputs]

    def _store_input(self, index: int, info: TensorInfo, value: np.ndarray) -> None:
        array = np.asarray(value)
        if array.size != info.count:
            raise SimulatorError(f"input {index}: expected {info.count} elements {tuple(info.shape)}, got {array.size}")
        if info.dtype == np.float32:
            if array.dtype.kind not in "fiub":
                raise SimulatorError(f"input {index}: expected float32 data, got {array.dtype}")
            array = array.astype(np.float32)
        else:
            if array.dtype.kind not in "iub" or (array.size and (array.min() < 0 or array.max() > 255)):
                raise SimulatorError(f"input {index}: expected uint8 data, got {array.dtype}")
            array = array.astype(np.uint8)
        if info.memory.memory_type is MemoryType.K210_KPU:
            self.memory.upload(info.memory, array.reshape(info.shape))  # §11.2: the runtime uploads it
        else:
            self.memory.write(info.memory, array)


def load(source: str | os.PathLike[str] | bytes | bytearray | memoryview | KModel) -> Program:
    """Load a kmodel from a path, its bytes, or an in-memory `KModel`. Raises `KmodelError`."""
    if isinstance(source, KModel):
        return Program(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Program(read(source, name="<kmodel bytes>"), name="<kmodel bytes>")
    return Program(read_file(source), name=os.fspath(source))
