"""Residual adds on the KPU end to end (kcc.passes.residual_kpu): a MobileNetV2-style chain of inverted
residual blocks, built as TFLite, compiled with calibration samples and run in kpu_sim, against TFLite's
float output. Every add (each read by a KPU layer) becomes one 1x1 KPU layer over [skip; depthwise output] in KPU RAM: no binary,
download, quantize or upload is left between the layers."""

import numpy as np
import pytest

import kpu_sim
from kcc.frontend import import_model
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph
from tests.tflite_builder import TfliteBuilder, from_ir_layout, run_tflite, to_ir_layout


def _chain(rng, size=24, c=16, expand=48, blocks=3, act="NONE") -> bytes:
    b = TfliteBuilder()
    x = b.input([1, size, size, 3], name="image")
    y = b.op("CONV_2D", [x, b.const((rng.standard_normal((c, 3, 3, 3)) * 0.4).astype(np.float32)),
                         b.const(rng.uniform(-0.2, 0.2, c).astype(np.float32))],
             padding="SAME", stride_w=1, stride_h=1, fused_activation_function="RELU6", name="stem")
    for k in range(blocks):
        e = b.op("CONV_2D", [y, b.const((rng.standard_normal((expand, 1, 1, c)) / np.sqrt(c)).astype(np.float32)),
                             b.const(rng.uniform(0, 0.5, expand).astype(np.float32))],
                 padding="SAME", stride_w=1, stride_h=1, fused_activation_function="RELU6", name=f"expand{k}")
        d = b.op("DEPTHWISE_CONV_2D", [e, b.const((rng.standard_normal((1, 3, 3, expand)) * 0.3).astype(np.float32)),
                                       b.const(rng.uniform(0, 0.5, expand).astype(np.float32))],
                 padding="SAME", stride_w=1, stride_h=1, depth_multiplier=1, fused_activation_function="RELU6",
                 name=f"dw{k}")
        p = b.op("CONV_2D", [d, b.const((rng.standard_normal((c, 1, 1, expand)) * 0.3 / np.sqrt(expand)).astype(np.float32)),
                             b.const(rng.uniform(-0.1, 0.1, c).astype(np.float32))],
                 padding="SAME", stride_w=1, stride_h=1, fused_activation_function="NONE", name=f"project{k}")
        y = b.op("ADD", [p, y], fused_activation_function=act, name=f"add{k}")
    b.output(b.op("CONV_2D", [y, b.const((rng.standard_normal((8, 1, 1, c)) / np.sqrt(c)).astype(np.float32)),
                              b.const(np.zeros(8, np.float32))],
                  padding="SAME", stride_w=1, stride_h=1, fused_activation_function="NONE", name="head"))
    return b.build()


@pytest.mark.parametrize("act", ["NONE", "RELU"])
def test_a_chain_of_inverted_residual_blocks_keeps_its_adds_on_the_kpu(act):
    rng = np.random.default_rng(17)
    model = _chain(rng, act=act)
    pictures = [rng.uniform(-1, 1, (1, 24, 24, 3)).astype(np.float32) for _ in range(12)]
    g = import_model(model).graph
    res = compile_graph(g, CompileOptions(input_type="float"), samples=[[to_ir_layout(p)] for p in pictures[:8]])
    adds = [p for p in res.placements if p.op == "add"]
    assert [(p.node, p.on_kpu) for p in adds] == [(f"add{k}", True) for k in range(3)], adds
    kinds = [n.op.kind for n in res.graph.nodes]
    assert "binary" not in kinds and kinds.count("kpu_concat") == 3 and kinds.count("kpu_upload") == 1
    stacked = [n for n in res.graph.nodes if isinstance(n.op, KO.QuantKpuLayer) and n.inputs[0].op.kind == "kpu_concat"]
    assert [n.name for n in stacked] == ["add0", "add1", "add2"]
    if act == "RELU":  # the fused activation is the layer's clamp: no code below the zero point
        assert all(n.op.act_table[0, 3] == n.op.out_q[0] for n in stacked)
    program = kpu_sim.load(res.kmodel)
    cos, err = [], []
    for p in pictures[8:]:  # held-out pictures
        want = run_tflite(model, [p])[0]
        got = from_ir_layout(program.run([to_ir_layout(p)])[0].reshape(res.graph.outputs[0].shape))
        cos.append(float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want)))
        err.append(float(np.sqrt(np.mean((got - want) ** 2)) / (np.ptp(want) / 255)))
    # measured: cos 0.9998, 0.6-0.7 output steps rms (input, weights, 10 layers of rounding)
    assert min(cos) >= 0.9995 and max(err) <= 0.9, (cos, err)
    assert not any(isinstance(n.op, O.Binary) for n in res.graph.nodes)
