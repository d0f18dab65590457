"""quantize as an analysis (each node's domain and grid, kcc.quant.quantize.analyze) and a rewrite.

Why: the table says, before any node is built, which tensors cross between float and uint8, so the
rewrite only follows it; these tests pin the table's decisions on a tiny legalized graph and check
the rewrite builds what the table says.
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext
from kcc.quant.params import QuantParam, range_param
from kcc.quant.policy import calibrate_ranges
from kcc.quant.quantize import Domain, analyze, quantize


def _legalized(act: bool = False):
    """input -> 3x3 conv -> VALID 3x3 conv (a KPU layer `conv2/kpu` with the KPU's padding, cropped
    to conv2) [-> leaky relu, fused into the first layer when `act`]."""
    rng = np.random.default_rng(3)
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))

    def conv(x, name, pad):
        w = g.constant(rng.uniform(-1, 1, (4, 4, 3, 3)).astype(np.float32))
        b = g.constant(np.zeros(4, np.float32))
        return g.add(O.Conv2D((1, 1), ((pad, pad), (pad, pad))), (x, w, b), name)

    y = conv(x, "conv1", 1)  # same size
    if act:
        y = g.add(O.LeakyRelu(0.1), (y,), "act")
    g.outputs = [conv(y, "conv2", 0)]  # VALID: a real crop
    ctx = CompileContext(CompileOptions(), samples=[[rng.uniform(0, 1, (1, 4, 8, 8)).astype(np.float32)]])
    lg = legalize_kpu(g, ctx)
    calibrate_ranges(lg, ctx)
    return lg, ctx


def test_layers_are_kpu_and_their_crops_move_codes_on_the_layers_grid():
    lg, ctx = _legalized()
    table = analyze(lg, ctx.ranges, input_u8=False)
    by_name = {n.name: n for n in lg.nodes}
    domains = {n.name: table[n].domain for n in lg.nodes if not n.is_constant}
    assert domains == {"input": Domain.FLOAT, "conv1": Domain.KPU, "conv2/kpu": Domain.KPU,
                       "conv2": Domain.CODES}
    layer = table[by_name["conv2/kpu"]]
    assert layer.grid == QuantParam(*layer.layer.out_q) and table[by_name["conv2"]].grid == layer.grid
    assert table[by_name["input"]].grid == range_param(ctx.ranges["input"])


def test_a_uint8_input_is_its_own_domain():
    lg, ctx = _legalized()
    table = analyze(lg, ctx.ranges, input_u8=True)
    assert table[lg.inputs[0]].domain is Domain.UINT8_INPUT


def test_the_rewrite_builds_what_the_table_says():
    """The uint8 input (the default --input-type) goes to KPU RAM as it is; consecutive layers hand
    over in KPU RAM; the crop of the last one runs on uint8 and is dequantized once, for the output."""
    lg, ctx = _legalized()
    q = quantize(lg, ctx)
    kinds = [(n.name, type(n.op).__name__) for n in q.nodes if not n.is_constant]
    assert kinds == [("input", "Input"), ("input/upload", "KpuUpload"), ("conv1", "QuantKpuLayer"),
                     ("conv2/kpu", "QuantKpuLayer"), ("conv2/kpu/download", "KpuDownload"),
                     ("conv2/u8", "StridedSlice"), ("conv2/dequantize", "Dequantize")]
    assert q.inputs[0].dtype.name == "uint8"


def test_a_fused_activation_reads_its_pre_activation_range_through_the_link():
    lg, ctx = _legalized(act=True)
    (layer,) = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv) and n.op.fn is not None]
    assert ctx.pre_activations == {layer.name: layer.name + "/pre_act"}
    linked = analyze(lg, ctx.ranges, False, pre_activations=ctx.pre_activations)[layer].layer
    unlinked = analyze(lg, ctx.ranges, False)[layer].layer  # the output range stands in for it
    assert linked.out_q == unlinked.out_q and not np.array_equal(linked.bn, unlinked.bn)
