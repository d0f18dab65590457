"""Ops between KPU layers that stay on the CPU, on uint8 codes rather than dequantized (issue #16
item 3): binary ops the KPU does not take as nncase's quantized_binary (kcc.quant.cpu_binary), and a
nearest upsampling as data movement (kcc.quant.quantize.moves_values)."""

import numpy as np
import pytest
from kpu_checks import RNG, max_steps
from kpu_checks import const as _const

import kpu_sim
from kcc import latency
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.kmodel import Opcode
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph

rng = RNG


def _compile(g, shape):
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    want = run(g, calib[0])[0]
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    return res, max_steps(got, want)


def _squeeze_excite(c=16, hw=(24, 20)):
    """1x1 conv -> x * sigmoid(fc(relu(fc(mean(x))))) -> 1x1 conv: MobileNetV3's block tail."""
    g = Graph()
    x = g.input(0, (1, 4, *hw))
    y = g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (c, 4, 1, 1)), _const(g, (c,))))
    m = g.add(O.Reduce("mean", (2, 3), True), (y,))
    f = g.add(O.Conv2D(act=(0.0, np.inf)), (m, _const(g, (4, c, 1, 1)), _const(g, (4,))))
    f = g.add(O.Unary("logistic"), (g.add(O.Conv2D(), (f, _const(g, (c, 4, 1, 1)), _const(g, (c,)))),))
    gated = g.add(O.Binary("mul"), (y, f))
    g.outputs = [g.add(O.Conv2D(), (gated, _const(g, (6, c, 1, 1)), _const(g, (6,))))]
    return g


def test_a_squeeze_excite_gate_multiplies_the_codes():
    """The gate is quantized (16 values), repeated over the map by two concatenations and multiplied
    into the layer's codes by the same-shape loop; the product is uploaded to the next layer as it is.
    Measured: 1.92 output steps from float (+ 5 %), as the float form it replaces (dequantize, mul,
    quantize), whose maps are 4 bytes an element."""
    res, steps = _compile(_squeeze_excite(), (1, 4, 24, 20))
    nodes = res.emitted.model.nodes
    (qb,) = [n.body for n in nodes if n.opcode is Opcode.QUANTIZED_BINARY]
    assert tuple(qb.in_a_shape) == tuple(qb.in_b_shape) == (1, 16, 24, 20)
    assert not any(n.opcode is Opcode.BINARY for n in nodes)
    assert steps <= 2.02, steps


def test_an_add_of_two_branches_runs_on_codes():
    """Not a residual connection (residual_kpu's): two 3x3 layers over the same input, added, read by
    a 1x1 layer. Measured: 1.58 output steps from float (+ 5 %), as the float form."""
    g = Graph()
    x = g.input(0, (1, 4, 12, 10))
    a = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (x, _const(g, (8, 4, 3, 3)), _const(g, (8,))))
    b = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (x, _const(g, (8, 4, 3, 3)), _const(g, (8,))))
    s = g.add(O.Binary("add", (0.0, np.inf)), (a, b))
    g.outputs = [g.add(O.Conv2D(), (s, _const(g, (6, 8, 1, 1)), _const(g, (6,))))]
    res, steps = _compile(g, (1, 4, 12, 10))
    names = [n.opcode for n in res.emitted.model.nodes]
    assert Opcode.QUANTIZED_BINARY in names and Opcode.BINARY not in names and Opcode.DEQUANTIZE in names
    assert steps <= 1.66, steps
    est = latency.estimate(res.emitted.model)
    assert "quantized_binary" in est.by_opcode()


def test_no_quantized_binary_keeps_the_float_op():
    """ncc's --no-quantized-binary: the gate multiplies dequantized values, as before kcc.quant.cpu_binary."""
    calib = [[rng.uniform(-1, 1, (1, 4, 24, 20)).astype(np.float32)] for _ in range(4)]
    res = compile_graph(_squeeze_excite(), CompileOptions(input_type="float", no_quantized_binary=True), samples=calib)
    names = [n.opcode for n in res.emitted.model.nodes]
    assert Opcode.BINARY in names and Opcode.QUANTIZED_BINARY not in names


@pytest.mark.parametrize("act", [(0.0, 6.0), O.NO_CLAMP])
def test_an_fpn_upsampling_moves_codes_into_the_concatenation(act):
    """FPN / YOLOv3-tiny: a stride-2 layer's map, through a 1x1 layer, upsampled x2 (nearest) and
    concatenated with the lateral map (which the stride-2 layer reads too) for a 1x1 layer. The
    upsampling repeats the codes (two concatenations of copies, no resize_image, no dequantize). With
    ReLU6 on both sides the concatenation's grid is the lateral layer's, which writes it in KPU RAM,
    the upsampled map uploaded into it; a linear 1x1 layer's map is 5x as wide, which would cost the
    stride-2 layer reading the lateral map 2 bits (kcc.quant.policy.SHARED_GRID_WIDENING): the
    concatenation stays on the CPU, as before. Measured: 2.85 and 2.48 output steps from float
    (+ 5 %), both what the float resize and CPU concatenation gave before."""
    g = Graph()
    x = g.input(0, (1, 4, 16, 12))
    a = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (x, _const(g, (8, 4, 3, 3)), _const(g, (8,))))
    c = g.add(O.Conv2D((2, 2), ((0, 1), (0, 1)), act=(0.0, 6.0)), (a, _const(g, (8, 8, 3, 3)), _const(g, (8,))))
    p = g.add(O.Conv2D(act=act), (c, _const(g, (8, 8, 1, 1)), _const(g, (8,))))
    y = g.add(O.Concat(1), (g.add(O.Resize("nearest", (16, 12), False, False), (p,)), a))
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (6, 16, 1, 1)), _const(g, (6,))))]
    res, steps = _compile(g, (1, 4, 16, 12))
    names = [n.opcode for n in res.emitted.model.nodes]
    assert Opcode.RESIZE_IMAGE not in names and names.count(Opcode.CONCAT) == 2 + (act == O.NO_CLAMP)
    (concat,) = [p for p in res.placements if p.op == "concat"]
    assert concat.on_kpu == (act != O.NO_CLAMP), concat
    assert steps <= (2.99 if act != O.NO_CLAMP else 2.61), steps
