"""The IR graph: single-output nodes in topological order.

Every node produces exactly one tensor, so a node *is* its value (as in PyTorch FX). Multi-output
tflite ops (SPLIT, UNPACK) become several nodes at import. Node names are the tflite tensor names and
survive every stage, so a layer can be followed from the .tflite file to the kmodel.

Layout: 4-D tensors are NCHW wherever an op cares (conv, pool, resize); the graph inputs and outputs
are NCHW too, as in ncc (kmodel_v4.md §3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from kcc.errors import VerifyError
from kcc.ir import ops as O
from kcc.ir.types import DType, TensorType


@dataclass(eq=False)
class Node:
    """One operation and the tensor it produces."""

    name: str
    op: O.Op
    inputs: tuple["Node", ...]
    type: TensorType
    # Facts later stages attach (placement reason, calibration range, ...) live in typed fields of the
    # stages that own them; `note` is only a human-readable comment carried to the printer (e.g. the
    # tflite op this node came from).
    note: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def is_constant(self) -> bool:
        return isinstance(self.op, O.Constant)

    @property
    def data(self) -> np.ndarray:
        """The value of a Constant node."""
        assert isinstance(self.op, O.Constant), self.name
        return self.op.data

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass(eq=False)
class Graph:
    """Nodes in topological order plus the ordered graph inputs and outputs."""

    nodes: list[Node] = field(default_factory=list)
    outputs: list[Node] = field(default_factory=list)
    _names: set[str] = field(default_factory=set, repr=False)

    # ----------------------------------------------------------------- building
    def unique_name(self, base: str) -> str:
        if base not in self._names:
            return base
        i = 1
        while f"{base}_{i}" in self._names:
            i += 1
        return f"{base}_{i}"

    def add(self, op: O.Op, inputs: Iterable[Node] = (), name: str = "", note: str = "") -> Node:
        """Append a node, inferring its type. Inputs must already be in the graph."""
        inputs = tuple(inputs)
        ty = op.infer_type(tuple(i.type for i in inputs))
        node = Node(self.unique_name(name or op.kind), op, inputs, ty, note)
        self._names.add(node.name)
        self.nodes.append(node)
        return node

    def constant(self, data: np.ndarray, name: str = "const") -> Node:
        return self.add(O.Constant(np.ascontiguousarray(data)), (), name)

    def input(self, index: int, shape: tuple[int, ...], dtype: DType = DType.float32, name: str = "input") -> Node:
        return self.add(O.Input(index, tuple(shape), dtype), (), name)

    # ----------------------------------------------------------------- queries
    @property
    def inputs(self) -> list[Node]:
        found = [n for n in self.nodes if isinstance(n.op, O.Input)]
        return sorted(found, key=lambda n: n.op.index)

    def users(self) -> dict[Node, list[Node]]:
        """Consumers of every node (a node using x twice appears twice)."""
        out: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n)
        return out

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def find(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    # ----------------------------------------------------------------- editing
    def replace_all_uses(self, old: Node, new: Node) -> None:
        """Make every consumer (and the output list) read `new` instead of `old`.

        `new` itself keeps reading `old` (the usual case when `new` was inserted after `old`)."""
        if old is new:
            return
        for n in self.nodes:
            if n is not new and any(i is old for i in n.inputs):
                n.inputs = tuple(new if i is old else i for i in n.inputs)
        self.outputs = [new if o is old else o for o in self.outputs]

    def substitute(self, old: Node, new: Node, retired_suffix: str) -> None:
        """Replace `old` by `new` everywhere; `new` takes over old's (tflite) name, so outputs and
        reports keep it, and `old` (dead from now on) is renamed with `retired_suffix`."""
        self.replace_all_uses(old, new)
        new.name, old.name = old.name, old.name + retired_suffix
        self._names.update((new.name, old.name))

    def insert_before(self, anchor: Node, op: O.Op, inputs: Iterable[Node], name: str = "", note: str = "") -> Node:
        """Create a node placed just before `anchor` (so it can feed it and keep topological order)."""
        node = self.add(op, inputs, name, note)
        self.nodes.pop()
        self.nodes.insert(self.nodes.index(anchor), node)
        return node

    def retype(self, node: Node) -> None:
        """Recompute a node's type after its op or inputs changed."""
        node.type = node.op.infer_type(tuple(i.type for i in node.inputs))

    def remove_dead(self) -> int:
        """Drop nodes that no output depends on (graph inputs always stay). Returns how many went."""
        live: set[int] = set()
        stack = list(self.outputs)
        while stack:
            n = stack.pop()
            if id(n) in live:
                continue
            live.add(id(n))
            stack.extend(n.inputs)
        before = len(self.nodes)
        self.nodes = [n for n in self.nodes if id(n) in live or isinstance(n.op, O.Input)]
        self._names = {n.name for n in self.nodes}
        return before - len(self.nodes)

    def sort(self) -> None:
        """Restore topological order (stable: keeps the existing order where it is already valid)."""
        order: list[Node] = []
        seen: set[int] = set()
        for root in list(self.nodes):
            stack: list[tuple[Node, bool]] = [(root, False)]
            while stack:
                n, expanded = stack.pop()
                if id(n) in seen:
                    continue
                if expanded:
                    seen.add(id(n))
                    order.append(n)
                    continue
                stack.append((n, True))
                stack.extend((i, False) for i in reversed(n.inputs) if id(i) not in seen)
        self.nodes = order

    # ----------------------------------------------------------------- checking
    def verify(self, stage: str = "") -> None:
        """Check topological order, unique names, known inputs and every op's type rule.

        Raises VerifyError naming the first bad node; this always means a compiler bug.
        """
        where = f" after stage '{stage}'" if stage else ""
        seen: set[int] = set()
        names: set[str] = set()
        indices: set[int] = set()
        for n in self.nodes:
            if n.name in names:
                raise VerifyError(f"IR verify{where}: duplicate node name %{n.name}")
            names.add(n.name)
            for i in n.inputs:
                if id(i) not in seen:
                    raise VerifyError(f"IR verify{where}: %{n.name} uses %{i.name} before it is defined")
            try:
                expect = n.op.infer_type(tuple(i.type for i in n.inputs))
            except VerifyError as e:
                raise VerifyError(f"IR verify{where}: %{n.name} = {n.op.kind}: {e}") from None
            if expect != n.type:
                raise VerifyError(f"IR verify{where}: %{n.name} has type {n.type} but {n.op.kind} gives {expect}")
            if isinstance(n.op, O.Input):
                if n.op.index in indices:
                    raise VerifyError(f"IR verify{where}: two graph inputs with index {n.op.index}")
                indices.add(n.op.index)
            seen.add(id(n))
        for o in self.outputs:
            if id(o) not in seen:
                raise VerifyError(f"IR verify{where}: graph output %{o.name} is not a node of the graph")
        if sorted(indices) != list(range(len(indices))):
            raise VerifyError(f"IR verify{where}: graph input indices {sorted(indices)} are not 0..n-1")


def copy_rewriting(src: Graph, dst: Graph, mapping: dict[int, Node],
                   rewrite: Callable[[Node], Node | None]) -> Graph:
    """Copy `src` into `dst` in order, the way the graph-to-graph passes (legalize_kpu, prelu_kpu,
    residual_kpu) rebuild a graph: `rewrite(n)` returns the node standing for n in `dst` (having added
    what it needs), or None to copy n as it is, its inputs mapped. `dst` then gets src's outputs,
    mapped, and loses its dead nodes."""
    for n in src.nodes:
        new = rewrite(n)
        if new is None:
            new = dst.add(n.op, tuple(mapping[id(i)] for i in n.inputs), n.name, n.note)
        mapping[id(n)] = new
    dst.outputs = [mapping[id(o)] for o in src.outputs]
    dst.remove_dead()
    return dst


def depthwise_conv(n: Node) -> bool:
    """n is a depthwise Conv2D: one group per input channel, one output channel per group."""
    c, oc = n.inputs[0].shape[1], n.inputs[1].shape[0]
    return isinstance(n.op, O.Conv2D) and n.op.groups == c == oc and c > 1


def channel_range(n: Node) -> tuple[int, int] | None:
    """(c0, c1) if n is a StridedSlice of a 4-D map that keeps channels c0..c1-1 and everything else."""
    if not isinstance(n.op, O.StridedSlice) or n.type.rank != 4:
        return None
    x = n.inputs[0]
    (b0, c0, y0, x0), (b1, c1, y1, x1), steps = n.op.begin, n.op.end, n.op.strides
    full = (b0, y0, x0) == (0, 0, 0) and (b1, y1, x1) == (x.shape[0], *x.shape[2:])
    if not full or tuple(steps) != (1, 1, 1, 1) or n.shape[1:] != (c1 - c0, *x.shape[2:]):
        return None
    return c0, c1


def channel_values(x: Node, c: Node) -> np.ndarray | None:
    """Per channel of NCHW `x`, the value of constant `c` broadcast against it (float32, one per
    channel), when `c` varies along channels only; else None. What a per-channel slope or operand
    needs to be folded into a per-channel conv."""
    if not c.is_constant or x.type.rank != 4:
        return None
    try:
        full = np.broadcast_to(c.data, x.shape)
    except ValueError:
        return None
    per_c = np.ascontiguousarray(full[0, :, 0, 0], np.float32)
    return per_c if np.array_equal(full, np.broadcast_to(per_c[None, :, None, None], x.shape)) else None
