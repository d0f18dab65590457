"""Constant folding at import: a node whose inputs are all known at import time is computed in numpy.

That covers the shape arithmetic PyTorch exports put in front of Reshape, Resize and Slice
(Shape -> Gather -> Unsqueeze -> Concat, Cast, ConstantOfShape, Range...), weights computed from
other weights, and Constant nodes: with static input shapes they are all constants, and no
onnx-simplifier run is needed. `Shape` and `Size` only need their input's static shape.

The values come from the `onnx` package's reference implementation (`onnx.reference`, numpy), run on
one node at a time, so every standard op folds with ONNX's own semantics (integer division, Cast
rounding, broadcasting). Random ops never fold; ops with subgraphs (If, Loop, Scan) are not folded.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import helper
from onnx.reference import ReferenceEvaluator

from kcc.frontend.onnx.reader import OnnxNode

SHAPE_ONLY = ("Shape", "Size")  # read nothing but the input's static shape
_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
          "Bernoulli", "If", "Loop", "Scan", "SequenceMap"}


def foldable(node: OnnxNode, is_const: Callable[[str], bool]) -> bool:
    """Whether `node` computes constants: its op is deterministic and its inputs are known (or only
    their shape matters)."""
    if node.op_type in SHAPE_ONLY:
        return True
    if node.op_type in _NEVER or "." in node.op_type:
        return False
    return all(is_const(t) for t in node.inputs if t)


def fold(node: OnnxNode, inputs: list[np.ndarray | None], shapes: list[tuple[int, ...] | None],
         opset: int) -> list[np.ndarray]:
    """The node's outputs. `inputs[i]` is None for an omitted input (or a Shape/Size input known only by
    its shape, given in `shapes`). Raises whatever the reference implementation raises."""
    if node.op_type == "Shape":
        shape = shapes[0]
        start, end = int(node.attr("start", 0)), node.attr("end")
        return [np.array(shape[start:None if end is None else int(end)], np.int64)]
    if node.op_type == "Size":
        return [np.array(int(np.prod(shapes[0], dtype=np.int64)), np.int64)]
    # a one-node model: the evaluator picks each op's version from the model's opset_import (given a
    # bare NodeProto it would use the newest version of the op, e.g. Unsqueeze-13 for an opset 11 node)
    names = [t for t in node.inputs if t]
    graph = helper.make_graph([node.proto], "fold", [helper.make_empty_tensor_value_info(t) for t in names],
                              [helper.make_empty_tensor_value_info(t) for t in node.outputs if t])
    ev = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    outs = iter(ev.run(None, {t: v for t, v in zip(node.inputs, inputs) if t}))
    return [np.asarray(next(outs)) if t else np.zeros(0) for t in node.outputs]
