"""MobileNetV2 (bench/mobilenet_v2.py, random weights) at the input sizes K210 users train for: it
compiles, fits KPU RAM, and kpu_sim follows the float graph. At 288x288 and 320x320 its first blocks'
maps exceed KPU RAM: before the channel groups were sized for what stays beside them
(kcc.passes.kpu_live.chain) and residual stacks checked against the block's layers
(kcc.passes.kpu_live), these compiles failed with a KPU RAM overflow at emit."""

import mobilenet_v2
import numpy as np
import pytest

import kpu_sim
from kcc.eval.interpreter import run
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph
from kcc.target.k210 import KPU_RAM_SIZE


@pytest.mark.parametrize("width,size", [(1.0, 320), (0.5, 320), (1.0, 288)])
def test_mobilenet_v2_at_tall_inputs_compiles_and_follows_the_float_graph(width, size):
    g = mobilenet_v2.build(width, size)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    res = compile_graph(g, CompileOptions(input_type="float"), samples=[[x]])
    assert res.emitted.kpu_peak <= KPU_RAM_SIZE
    assert not [p for p in res.placements if not p.on_kpu and p.op in ("conv2d", "matmul")]
    want = run(g, [x])[0].ravel()
    got = kpu_sim.load(res.kmodel).run([x])[0].ravel()
    assert float(np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want))) > 0.99
