"""A stride-2 stem over a KPU layer's limits, with SAME padding on an odd size (DeepLab's 257x257 input:
centred on the even rows, its one pad row below made on the CPU as any picked input's): the conv and
the pool unit's pick in one layer over the padded input's row bands as channels (kcc.passes.row_bands),
not the four stride phases cut by CPU slices. Each KPU layer against the scalar reference; the band
edges' picked rows are the edge layers' good rows; the result errs from the float graph as the one
layer over the whole map does (the same weights and samples, the limit lifted).
"""

import numpy as np
from kpu_checks import RNG, kpu_layers_match_the_scalar_reference, layer_maps, max_steps, opcodes
from kpu_checks import const as _const

import kcc.kmodel as km
import kpu_sim
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph

rng = RNG


def test_a_stride2_stem_over_the_layer_limits_picks_in_row_bands(monkeypatch):
    shape, oc = (1, 3, 29, 133), 6  # padded to 30x134, 15x67 out: three bands of 10 rows at 16 rows a layer
    ho, wo = 15, 67
    state = rng.bit_generator.state
    steps, results = {}, {}
    for form in ("whole", "bands"):
        rng.bit_generator.state = state
        with monkeypatch.context() as m:
            if form == "bands":
                m.setattr("kcc.passes.row_bands.MAX_H", 16)
                m.setattr("kcc.passes.legalize_kpu.MAX_H", 16)
            g = Graph()
            x = g.input(0, shape)
            y = g.add(O.Conv2D((2, 2), ((1, 1), (1, 1)), act=(0.0, 6.0)),
                      (x, _const(g, (oc, 3, 3, 3)), _const(g, (oc,))), "stem")
            g.outputs = [g.add(O.Conv2D(), (y, _const(g, (5, oc, 1, 1)), _const(g, (5,))), "head")]
            calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
            res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        steps[form] = [max_steps(program.run(c)[0].reshape(g.outputs[0].shape), run(g, c)[0]) for c in calib]
        results[form] = res
    res = results["bands"]
    stem = next(p for p in res.placements if p.node == "stem")
    assert stem.on_kpu and "pool left_top_2_s2, in 3 row bands of 10 rows" in stem.reason, stem
    names = opcodes(res.emitted.model)
    assert "conv2d" not in names and "strided_slice" in names, names  # only the edges' input rows are cut
    edge = 1 + oc  # per band edge: the conv over its rows, a one-channel copy per output channel
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 2 + 2 * edge
    maps = layer_maps(res.kmodel, calib[0][0])
    bulk, head = maps[0], maps[-1]
    assert bulk[0].layer.pool_type == km.KpuPoolType.LEFT_TOP_2_S2
    expect = bulk[2].reshape(oc, ho, wo).copy()
    for e, q in enumerate((5, 10)):  # the first output row of bands 1 and 2
        near, copies = maps[1 + e * edge], maps[2 + e * edge:1 + (e + 1) * edge]
        for o, (_, x_map, out) in enumerate(copies):
            np.testing.assert_array_equal(x_map[0, 0], near[2][0, o, 1:5])  # the copy reads the good rows
            np.testing.assert_array_equal(out, x_map)  # and moves them exactly
            expect[o, q - 2:q + 2] = out[0, 0]
    assert head[0].kpu_input().start == bulk[0].kpu_output().start  # the head reads the patched map
    np.testing.assert_array_equal(head[1].reshape(oc, ho, wo), expect)
    # the whole map in one layer errs as much (measured: 1.18-1.72 steps, the same but for two samples, 0.05 apart)
    assert max(b - w for b, w in zip(steps["bands"], steps["whole"])) <= 0.1, steps
    whole = next(p for p in results["whole"].placements if p.node == "stem")
    assert whole.on_kpu and "row bands" not in whole.reason, whole
