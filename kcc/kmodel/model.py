"""`KModel` and the file reader/writer (kmodel_v4.md §2, §4-§6, §14).

`read()` accepts what the nncase v0 runtime accepts plus the documented ncc quirks (garbage in
header.reserved0, last body's padding missing at end of file) and rejects everything else with
one `KmodelError` line naming the file, the node and the field. `write()` emits the canonical
form: reserved0 = 0, constants padded to 8, every body zero-padded to 8 (the final one too).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from kcc.errors import KmodelError
from kcc.kmodel.codec import Body
from kcc.kmodel.kpu_layout import kpu_bytes
from kcc.kmodel.registry import BODIES
from kcc.kmodel.spec import (
    BODY_ALIGNMENT,
    CONSTANT_ALIGNMENT,
    HEADER_SIZE,
    KPU_ALIGNMENT,
    KPU_RAM_SIZE,
    LEGACY_V3_VERSION,
    MAGIC,
    MEMORY_RANGE_SIZE,
    MODEL_IDENTIFIER,
    NNCASE_V1_VERSION,
    NODE_HEADER_SIZE,
    SHAPE_SIZE,
    VERSION,
    MemoryType,
    Opcode,
    Target,
    align_up,
)
from kcc.kmodel.types import MemoryRange, Reader, Shape4

V3_MESSAGE = "kmodel v3 (nncase v0.1) is not supported; recompile with kcc or ncc v0.2"
V5_MESSAGE = "kmodel v5 (nncase v1) is not supported; recompile with kcc or ncc v0.2"


@dataclass(frozen=True)
class Node:
    """One node: its opcode and decoded body. `Node.of(body)` fills in the opcode."""

    opcode: Opcode
    body: Body

    def __post_init__(self) -> None:
        object.__setattr__(self, "opcode", Opcode(self.opcode))
        if self.body.OPCODE != self.opcode:
            raise KmodelError(f"node opcode {self.opcode.kmodel_name} does not match body {type(self.body).__name__}")

    @classmethod
    def of(cls, body: Body) -> Node:
        return cls(body.OPCODE, body)

    @property
    def name(self) -> str:
        return self.opcode.kmodel_name


@dataclass(kw_only=True)
class KModel:
    """A whole kmodel v4. `nodes` may be given as `Node`s or bare bodies.

    Outputs have no shapes in the format (§5); inputs do, as NCHW `Shape4`.
    """

    target: Target = Target.K210
    main_mem: int
    inputs: list[MemoryRange]
    input_shapes: list[Shape4]
    outputs: list[MemoryRange]
    constants: bytes = b""
    nodes: list[Node] = field(default_factory=list)
    flags: int = 0

    def __post_init__(self) -> None:
        self.target = Target(self.target)
        self.inputs = list(self.inputs)
        self.input_shapes = [Shape4(*s) for s in self.input_shapes]
        self.outputs = list(self.outputs)
        self.constants = bytes(self.constants)
        self.nodes = [n if isinstance(n, Node) else Node.of(n) for n in self.nodes]


def _node_label(index: int, opcode: Opcode) -> str:
    return f"node {index} ({opcode.kmodel_name})"


def _check_range(label: str, r: MemoryRange, main_mem: int, const_size: int) -> None:
    """§3.1, §5, §7: a range must lie inside its memory space; KPU ranges start on 64 bytes.

    `label` names the range, e.g. "node 3 (binary): field output" or "output 0".
    """
    if r.start < 0 or r.size < 0:
        raise KmodelError(f"{label} has a negative start or size ({r})")
    if r.size == 0:
        return  # §3.1: absent
    if r.memory_type is MemoryType.MAIN and r.end > main_mem:
        raise KmodelError(f"{label} exceeds main memory (start {r.start} + size {r.size} > main_mem {main_mem})")
    if r.memory_type is MemoryType.CONST and r.end > const_size:
        raise KmodelError(
            f"{label} exceeds the constants section (start {r.start} + size {r.size} > constants {const_size})"
        )
    if r.memory_type is MemoryType.K210_KPU:
        if r.end > KPU_RAM_SIZE:
            raise KmodelError(f"{label} exceeds KPU RAM (start {r.start} + size {r.size} > {KPU_RAM_SIZE})")
        if r.start % KPU_ALIGNMENT:
            raise KmodelError(f"{label} starts at KPU byte {r.start}, not a multiple of {KPU_ALIGNMENT}")


def validate(model: KModel) -> None:
    """Check every memory range and the inputs' sizes; raise `KmodelError` on the first problem."""
    const_size = len(model.constants)
    if len(model.input_shapes) != len(model.inputs):
        raise KmodelError(f"{len(model.inputs)} inputs but {len(model.input_shapes)} input shapes")
    for i, (r, shape) in enumerate(zip(model.inputs, model.input_shapes)):
        where = f"input {i}"
        if r.memory_type is MemoryType.CONST:
            raise KmodelError(f"{where}: lives in constant memory; inputs must be in main or KPU memory (§11.2)")
        if min(shape) < 1:
            raise KmodelError(f"{where}: shape {tuple(shape)} has a dimension < 1")
        need = kpu_bytes(shape) if r.memory_type is MemoryType.K210_KPU else shape.count * r.datatype.itemsize
        if r.size != need:
            raise KmodelError(f"{where}: size {r.size} does not match shape {tuple(shape)} ({need} bytes)")
        _check_range(where, r, model.main_mem, const_size)
    for i, r in enumerate(model.outputs):
        _check_range(f"output {i}", r, model.main_mem, const_size)
    for i, node in enumerate(model.nodes):
        for name, r in node.body.ranges().items():
            _check_range(f"{_node_label(i, node.opcode)}: field {name}", r, model.main_mem, const_size)


# -- reading ---------------------------------------------------------------------------------


def _check_identity(data: memoryview) -> None:
    """§12: tell kmodel v3 / v5 / foreign files apart before anything else."""
    size = len(data)
    if size >= 4 and bytes(data[:4]) != MAGIC:
        first = struct.unpack_from("<I", data)[0]
        if first == LEGACY_V3_VERSION:
            raise KmodelError(V3_MESSAGE)
        raise KmodelError(f"not a kmodel (starts with {bytes(data[:4]).hex(' ')}, expected 'LDMK')")
    if size < HEADER_SIZE:
        what = "not a kmodel" if size < 4 else "truncated header"
        raise KmodelError(f"{what} (file is {size} bytes, the header needs {HEADER_SIZE})")
    version = struct.unpack_from("<I", data, 4)[0]
    if version == LEGACY_V3_VERSION:
        raise KmodelError(V3_MESSAGE)
    if version == NNCASE_V1_VERSION:
        raise KmodelError(V5_MESSAGE)
    if version != VERSION:
        raise KmodelError(f"unsupported kmodel version {version} (kcc reads version {VERSION})")


def _read(data: memoryview) -> KModel:
    _check_identity(data)
    size = len(data)
    r = Reader(data)
    _ident, _version, flags, target, n_const, main_mem, n_nodes, n_in, n_out, _reserved0 = r.unpack("<10I", "header")
    if target not in (Target.CPU, Target.K210):
        raise KmodelError(f"header: invalid target {target} (the runtime accepts 0 = cpu or 1 = k210)")

    sections = (
        ("input descriptors", MEMORY_RANGE_SIZE * n_in),
        ("input shapes", SHAPE_SIZE * n_in),
        ("output descriptors", MEMORY_RANGE_SIZE * n_out),
        ("constants", n_const),
        ("node headers", NODE_HEADER_SIZE * n_nodes),
    )
    pos = HEADER_SIZE
    for what, length in sections:
        if pos + length > size:
            raise KmodelError(f"truncated: {what} need bytes {pos}..{pos + length} but the file has {size} bytes")
        pos += length

    inputs = [MemoryRange.read(r, f"input {i}") for i in range(n_in)]
    shapes = [Shape4.read(r, f"input shape {i}") for i in range(n_in)]
    outputs = [MemoryRange.read(r, f"output {i}") for i in range(n_out)]
    constants = bytes(r.take(n_const, "constants"))
    headers = [r.unpack("<2I", f"node header {i}") for i in range(n_nodes)]
    nodes = [_read_node(data, i, op, body_size, r, last=i == n_nodes - 1) for i, (op, body_size) in enumerate(headers)]
    if r.pos < size:
        raise KmodelError(f"{size - r.pos} trailing bytes after the last node body (model size {r.pos})")
    return KModel(
        target=Target(target),
        main_mem=main_mem,
        inputs=inputs,
        input_shapes=shapes,
        outputs=outputs,
        constants=constants,
        nodes=nodes,
        flags=flags,
    )


def _read_node(data: memoryview, index: int, opcode: int, body_size: int, r: Reader, last: bool) -> Node:
    try:
        op = Opcode(opcode)
    except ValueError:
        raise KmodelError(f"node {index}: unknown opcode 0x{opcode:04x}") from None
    where = _node_label(index, op)
    start = r.pos
    if body_size % BODY_ALIGNMENT:
        raise KmodelError(f"{where}: body_size {body_size} is not a multiple of {BODY_ALIGNMENT}")
    available = min(body_size, len(data) - start)
    # §2: ncc seeks instead of writing the last body's padding, so up to 7 bytes may be missing.
    if available < body_size and not (last and body_size - available < BODY_ALIGNMENT):
        raise KmodelError(
            f"{where}: body (body_size {body_size} at offset {start}) extends beyond the end of the file "
            f"({len(data)} bytes)"
        )
    try:
        body, payload = BODIES[op].unpack_from(data[start : start + available], offset=start)
    except KmodelError as exc:
        raise KmodelError(f"{where}: {exc}") from None
    if body_size - payload >= BODY_ALIGNMENT:
        raise KmodelError(
            f"{where}: body_size {body_size} leaves {body_size - payload} bytes after the {payload}-byte payload "
            f"(padding is at most {BODY_ALIGNMENT - 1})"
        )
    r.pos = start + available
    return Node(op, body)


def read(data: bytes | bytearray | memoryview, name: str | None = None) -> KModel:
    """Decode and validate a kmodel v4. Errors are one line, prefixed with `name` if given."""
    try:
        model = _read(memoryview(data).cast("B"))
        validate(model)
    except KmodelError as exc:
        raise KmodelError(f"{name}: {exc}" if name else str(exc)) from None
    return model


def read_file(path: str | os.PathLike[str]) -> KModel:
    """`read()` a file; the message names the file as given."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KmodelError(f"{os.fspath(path)}: cannot read: {exc.strerror}") from None
    return read(data, name=os.fspath(path))


# -- writing ---------------------------------------------------------------------------------


def write(model: KModel) -> bytes:
    """Encode a model (§14). Validates it first; a bad range raises `KmodelError` naming the node."""
    validate(model)
    constants = model.constants + bytes(align_up(len(model.constants), CONSTANT_ALIGNMENT) - len(model.constants))
    n_in, n_out, n_nodes = len(model.inputs), len(model.outputs), len(model.nodes)
    header = struct.pack(
        "<10I", MODEL_IDENTIFIER, VERSION, model.flags, model.target, len(constants), model.main_mem,
        n_nodes, n_in, n_out, 0,
    )  # fmt: skip
    pos = HEADER_SIZE + (2 * MEMORY_RANGE_SIZE) * n_in + MEMORY_RANGE_SIZE * n_out + len(constants)
    pos += NODE_HEADER_SIZE * n_nodes
    node_headers, bodies = [], []
    for i, node in enumerate(model.nodes):
        try:
            payload = node.body.pack(offset=pos)
        except KmodelError as exc:
            raise KmodelError(f"{_node_label(i, node.opcode)}: {exc}") from None
        padded = payload + bytes(align_up(len(payload), BODY_ALIGNMENT) - len(payload))
        node_headers.append(struct.pack("<2I", node.opcode, len(padded)))
        bodies.append(padded)
        pos += len(padded)
    parts: list[bytes] = [header]
    parts += [r.pack() for r in model.inputs]
    parts += [s.pack() for s in model.input_shapes]
    parts += [r.pack() for r in model.outputs]
    parts += [constants, *node_headers, *bodies]
    return b"".join(parts)

