"""prelu_kpu: a per-channel PReLU as two 1x1 KPU layers, relu(x) - a*relu(-x), where it is faster."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.prelu_kpu import prelu_to_kpu

rng = np.random.default_rng(16)


def _graph(depthwise: bool, alpha_shape=(1, 8, 1, 1), c=8, hw=16) -> Graph:
    """KPU conv (no activation) -> PReLU -> KPU conv, as legalize_kpu leaves BlazePalm's blocks."""
    g = Graph()
    x = g.input(0, (1, c, hw, hw))
    w = rng.uniform(-1, 1, (c, 1, 3, 3) if depthwise else (c, c, 3, 3)).astype(np.float32)
    b = g.constant(rng.uniform(-1, 1, c).astype(np.float32))
    y = g.add(KO.FloatKpuConv(3, depthwise), (x, g.constant(w), b))
    a = rng.uniform(-0.5, 1.5, alpha_shape).astype(np.float32)
    y = g.add(O.PRelu(), (y, g.constant(a)), "prelu")
    w2 = rng.uniform(-1, 1, (4, c, 1, 1)).astype(np.float32)
    b2 = g.constant(np.zeros(4, np.float32))
    g.outputs = [g.add(KO.FloatKpuConv(1, act=(0.0, 6.0)), (y, g.constant(w2), b2))]
    return g


@pytest.mark.parametrize("depthwise,layers", [(False, 3), (True, 4)])
def test_prelu_becomes_kpu_layers_with_the_same_float_values(depthwise, layers):
    g = _graph(depthwise)
    out, done = prelu_to_kpu(g, CompileOptions())
    assert done == ["prelu"]
    assert not any(isinstance(n.op, O.PRelu) for n in out.nodes)
    assert sum(isinstance(n.op, KO.FloatKpuConv) for n in out.nodes) == layers
    x = rng.uniform(-1, 1, (1, 8, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run(out, [x])[0], run(g, [x])[0], rtol=1e-5, atol=1e-5)


def test_prelu_stays_when_not_per_channel_or_for_the_cpu_target():
    g = _graph(False, alpha_shape=(1, 8, 16, 16))
    assert prelu_to_kpu(g, CompileOptions())[1] == []
    assert prelu_to_kpu(_graph(False), CompileOptions(target="cpu"))[1] == []


def test_prelu_stays_on_the_cpu_when_the_kpu_form_costs_more():
    """After a depthwise KPU layer, read by the CPU only: two more layers (~30 us each) cost more than
    two float ops on a 4x4x4 map."""
    g = Graph()
    x = g.input(0, (1, 4, 4, 4))
    w = g.constant(rng.uniform(-1, 1, (4, 1, 3, 3)).astype(np.float32))
    y = g.add(KO.FloatKpuConv(3, True), (x, w, g.constant(np.zeros(4, np.float32))))
    y = g.add(O.PRelu(), (y, g.constant(np.full((1, 4, 1, 1), 0.25, np.float32))), "prelu")
    g.outputs = [g.add(O.Unary("abs"), (y,))]
    assert prelu_to_kpu(g, CompileOptions())[1] == []


def test_prelu_of_a_cpu_result_stays_on_the_cpu():
    """A float x (the model input, a residual add) would be rounded to 8 bits once more."""
    g = Graph()
    x = g.input(0, (1, 8, 16, 16))
    y = g.add(O.PRelu(), (x, g.constant(np.full((1, 8, 1, 1), 0.25, np.float32))), "prelu")
    w = g.constant(rng.uniform(-1, 1, (4, 8, 1, 1)).astype(np.float32))
    g.outputs = [g.add(KO.FloatKpuConv(1), (y, w, g.constant(np.zeros(4, np.float32))))]
    assert prelu_to_kpu(g, CompileOptions())[1] == []


def test_prelu_pair_gives_way_to_convs_the_device_ram_room_buys_more_with():
    """BlazePalm's 12x12x256 PReLU after a 1x1 conv: the pair saves ~50 CPU cycles per kmodel byte of its
    layers; in a model over its device RAM budget whose room takes 5x5s off the CPU at ~460 cycles a
    byte (a 12x12x256 fan_kpu: ~143 ms for ~124 KB), it stays on the CPU; at 10 cycles a byte, not."""
    def graph() -> Graph:
        g = Graph()
        x = g.input(0, (1, 256, 12, 12))
        w = g.constant(rng.uniform(-1, 1, (256, 256, 1, 1)).astype(np.float32))
        y = g.add(KO.FloatKpuConv(1), (x, w, g.constant(np.zeros(256, np.float32))))
        y = g.add(O.PRelu(), (y, g.constant(rng.uniform(-0.5, 1.5, (1, 256, 1, 1)).astype(np.float32))), "prelu")
        w2 = g.constant(rng.uniform(-1, 1, (256, 256, 1, 1)).astype(np.float32))
        g.outputs = [g.add(KO.FloatKpuConv(1), (y, w2, g.constant(np.zeros(256, np.float32))))]
        return g

    assert prelu_to_kpu(graph(), CompileOptions())[1] == ["prelu"]
    assert prelu_to_kpu(graph(), CompileOptions(), room_rate=10.0)[1] == ["prelu"]
    assert prelu_to_kpu(graph(), CompileOptions(), room_rate=460.0)[1] == []
