"""The one float interpreter of the IR: used by calibration, pass tests and the frontend tests.

`run(graph, inputs, observer)` executes nodes in order with the kernels of `kcc.eval.kernels` and
frees every intermediate as soon as its last consumer ran, so calibrating a large model keeps only
the live set in memory. `observer(node, value)` sees every node's output (ShapeProp-style facts,
calibration statistics) without changing the graph; `rewrite(node, value)`, when given, returns what
the node's readers get instead (a tensor rounded as a grid would round it: bench/stream_grids.py).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from kcc.errors import KccError
from kcc.eval.kernels import KERNELS
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node

Observer = Callable[[Node, np.ndarray], None]
Rewrite = Callable[[Node, np.ndarray], np.ndarray]


def run(graph: Graph, inputs: Sequence[np.ndarray], observer: Observer | None = None,
        rewrite: Rewrite | None = None) -> list[np.ndarray]:
    """Evaluate `graph` on `inputs` (one array per graph input, in input order)."""
    gin = graph.inputs
    if len(inputs) != len(gin):
        raise KccError(f"the model has {len(gin)} input(s) but {len(inputs)} were given")
    remaining: dict[int, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            remaining[id(i)] = remaining.get(id(i), 0) + 1
    keep = {id(o) for o in graph.outputs}
    values: dict[int, np.ndarray] = {}
    for node, arr in zip(gin, inputs):
        arr = np.asarray(arr)
        if tuple(arr.shape) != node.shape:
            raise KccError(f"input '{node.name}' expects shape {node.shape}, got {tuple(arr.shape)}")
        values[id(node)] = arr.astype(node.dtype.numpy, copy=False)
    for node in graph.nodes:
        if isinstance(node.op, O.Input):
            value = values[id(node)]
        elif isinstance(node.op, O.Constant):
            value = node.op.data
        else:
            args = [values[id(i)] for i in node.inputs]
            try:
                value = KERNELS[type(node.op)](node.op, *args)
            except Exception as e:  # keep the traceback, but say which node failed
                if hasattr(e, "add_note"):
                    e.add_note(f"while evaluating %{node.name} = {node.op.kind}{node.inputs}")
                raise
        if rewrite is not None:
            value = rewrite(node, value)
        if observer is not None:
            observer(node, value)
        values[id(node)] = value
        for i in node.inputs:
            remaining[id(i)] -= 1
            if remaining[id(i)] == 0 and id(i) not in keep:
                values.pop(id(i), None)
    return [values[id(o)] for o in graph.outputs]
