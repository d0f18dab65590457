"""Tiny ONNX models built in-process with `onnx.helper`, checked against onnxruntime.

    m = model([node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"x": [1, 3, 8, 8]}, ["y"],
              {"w": randn(4, 3, 3, 3)}, opset=13)
    check_against_ort(m, [randn(1, 3, 8, 8)])

`check_against_ort` imports the model with kcc's ONNX frontend, runs the IR on kcc's float interpreter
(kcc.eval) before and after canonicalisation, and compares with onnxruntime's outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from kcc.eval.interpreter import run
from kcc.frontend.onnx import import_onnx
from kcc.ir.graph import Graph
from kcc.passes.canonicalize import canonicalize

rng = np.random.default_rng(17)


def randn(*shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def node(op_type: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, outputs, name=f"{op_type.lower()}_{outputs[0]}", **attrs)


def model(nodes: list[onnx.NodeProto], inputs: dict[str, list], outputs: list[str],
          initializers: dict[str, np.ndarray] | None = None, opset: int = 13,
          input_type: int = TensorProto.FLOAT, inits_as_inputs: bool = False, ir_version: int | None = None) -> bytes:
    """A serialized ModelProto. `inputs`: name -> shape (ints, or strings for symbolic dims)."""
    initializers = initializers or {}
    vin = [helper.make_tensor_value_info(k, input_type, shape) for k, shape in inputs.items()]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    if inits_as_inputs:  # old PyTorch exports: every weight is also a graph input
        vin += [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                              list(np.asarray(v).shape)) for k, v in initializers.items()]
    vout = [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outputs]
    graph = helper.make_graph(nodes, "g", vin, vout, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="kcc-tests")
    # the oldest IR version of the opset, as an exporter of that time wrote (and onnxruntime reads)
    m.ir_version = ir_version or helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return m.SerializeToString()


def run_ort(m: bytes, feeds: list[np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, feeds)))


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs onnxruntime {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def check_against_ort(m: bytes, feeds: list[np.ndarray], rtol: float = 1e-5, atol: float = 1e-5) -> Graph:
    """Import, run the IR (as imported and canonicalized) and compare every output with onnxruntime."""
    want = run_ort(m, feeds)
    graph = import_onnx(m, "test.onnx")
    graph.verify("import")
    got = run(graph, feeds)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        compare(g, w, rtol, atol, f"output {k} as imported")
    canon = canonicalize(graph)
    canon.verify("canonicalize")
    for k, (g, w) in enumerate(zip(run(canon, feeds), want)):
        compare(g, w, rtol, atol, f"output {k} after canonicalize")
    return canon
