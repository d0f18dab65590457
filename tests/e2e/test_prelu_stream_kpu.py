"""BlazeBlocks streaming through KPU RAM as relu pairs (kcc.passes.prelu_stream), 3x3 (iris) and 5x5
(BlazePalm, through the decomposed depthwise forms): every KPU layer against the scalar reference, the
rewrite exact in float, no CPU op between the first and last layer but the model's own.
"""


import numpy as np
from kpu_checks import RNG, kpu_layers_match_the_scalar_reference, max_steps
from kpu_checks import const as _const

import kpu_sim
from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph

rng = RNG



def _blazeblocks(c=8, hw=16):
    """iris-style BlazeBlocks in the canonical IR: a stem conv and PReLU; a block 1x1 -> PReLU -> 3x3
    depthwise -> 1x1, + y, PReLU; a block depthwise -> 1x1, + y, PReLU; a stride-2 block (3x3 stride-2
    conv, PReLU, depthwise, 1x1 to 2c) + channel-pad(maxpool(y)), PReLU; a 1x1 head. Slopes of both
    signs, some above 1."""
    g = Graph()

    def conv(x, oc, k=1, stride=1, dw=False, name=None):
        c_in = x.shape[1]
        pad = ((k // 2, k // 2), (k // 2, k // 2))
        w = _const(g, (c_in if dw else oc, 1 if dw else c_in, k, k), -0.6, 0.6)
        return g.add(O.Conv2D((stride, stride), pad, groups=c_in if dw else 1), (x, w, _const(g, (w.shape[0],), -0.3, 0.3)),
                     name or "")

    def prelu(x, name):
        return g.add(O.PRelu(), (x, _const(g, (1, x.shape[1], 1, 1), -0.3, 1.3)), name)

    x = g.input(0, (1, 3, hw, hw))
    y = prelu(conv(x, c, 3, name="stem"), "stem_prelu")
    t = conv(prelu(conv(y, c // 2, name="b1_expand"), "b1_expand_prelu"), c // 2, 3, dw=True)
    y = prelu(g.add(O.Binary("add"), (y, conv(t, c)), "b1_add"), "b1_prelu")
    y = prelu(g.add(O.Binary("add"), (conv(conv(y, c, 3, dw=True), c), y), "b2_add"), "b2_prelu")
    t = conv(conv(prelu(conv(y, c, 3, stride=2), "b3_s2_prelu"), c, 3, dw=True), 2 * c)
    s = g.add(O.Pad(((0, 0), (0, c), (0, 0), (0, 0)), 0.0), (g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,)),))
    y = prelu(g.add(O.Binary("add"), (s, t), "b3_add"), "b3_prelu")
    g.outputs = [conv(y, 6, name="head")]
    return g


def test_blazeblocks_stream_through_kpu_ram_as_relu_pairs(monkeypatch):
    """Issue #16 item 3, prelu_stream: each BlazeBlock's add and PReLU is one 1x1 KPU layer over its
    terms in KPU RAM, to [relu(a); relu(-a)]; the next layers read that pair through their weights,
    the stride-2 block's skip is a 1x1 layer with the pool unit's max, and no CPU op, copy-out or
    upload is left between the input and the head. Every KPU layer equals the scalar reference on
    random weights; the legalized float graph computes the model's values; the result agrees with
    float as closely as today's CPU adds and PReLUs (each block's sum kept in float) do."""
    state = rng.bit_generator.state
    err = {}
    for form in ("kpu", "cpu"):
        rng.bit_generator.state = state  # the same weights and samples both times
        g = _blazeblocks()
        calib = [[rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)] for _ in range(8)]
        if form == "cpu":
            monkeypatch.setattr("kcc.passes.legalize_kpu.stream_to_kpu", lambda g, opts, adds=None: (g, [], [], []))
        res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        err[form] = max(max_steps(kpu_sim.load(res.kmodel).run(s)[0].reshape(g.outputs[0].shape), run(g, s)[0])
                        for s in calib[:4])
        if form == "cpu":
            continue
        adds = [p for p in res.placements if p.op == "add"]
        assert [(p.node, p.on_kpu) for p in adds] == [("b1_add", True), ("b2_add", True), ("b3_add", True)], adds
        assert all("[relu(a); relu(-a)]" in p.reason for p in adds)
        (pool,) = [p for p in res.placements if p.op == "pool2d"]
        assert pool.on_kpu and "max_2_s2" in pool.reason, pool
        for s in calib[:2]:  # the rewrites are exact in float
            np.testing.assert_allclose(run(res.float_graph, s)[0], run(g, s)[0], rtol=1e-4, atol=1e-4)
        names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
        first, last = names.index("kpu_conv2d"), len(names) - 1 - names[::-1].index("kpu_conv2d")
        assert set(names[first:last + 1]) == {"kpu_conv2d"}, names
        assert names.count("kpu_upload") == 1, names
        assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == names.count("kpu_conv2d")
        concats = [n for n in res.graph.nodes if n.op.kind == "kpu_concat"]
        assert len(concats) == 3
    # measured (worst of 4 samples, output steps): 3.40 on the KPU, 4.20 with the CPU adds and PReLUs
    assert err["kpu"] <= err["cpu"] and err["kpu"] <= 3.57, err


def _palm_blocks(c=8, hw=16, stem=5):
    """BlazePalm-style BlazeBlocks in the canonical IR: a 5x5 stem conv (decomposed, read in float by its
    PReLU on the CPU; or a `stem` x `stem` one), two blocks 5x5 depthwise -> 1x1, + y, PReLU, a stride-2 block 5x5 stride-2
    depthwise -> 1x1 to 2c, + channel-pad(maxpool(y)), PReLU, and a 1x1 head."""
    g = Graph()

    def conv(x, oc, k=1, stride=1, dw=False, name=""):
        c_in = x.shape[1]
        lo, hi = (k // 2 - (stride - 1), k // 2) if stride == 2 else (k // 2, k // 2)  # TFLite SAME
        w = _const(g, (c_in if dw else oc, 1 if dw else c_in, k, k), -0.4, 0.4)
        return g.add(O.Conv2D((stride, stride), ((lo, hi), (lo, hi)), groups=c_in if dw else 1),
                     (x, w, _const(g, (w.shape[0],), -0.3, 0.3)), name)

    def prelu(x, name):
        return g.add(O.PRelu(), (x, _const(g, (1, x.shape[1], 1, 1), -0.3, 1.3)), name)

    x = g.input(0, (1, 3, hw, hw))
    y = prelu(conv(x, c, stem, name="stem"), "stem_prelu")
    for i in (1, 2):
        y = prelu(g.add(O.Binary("add"), (y, conv(conv(y, c, 5, dw=True, name=f"b{i}_dw"), c)), f"b{i}_add"), f"b{i}_prelu")
    t = conv(conv(y, c, 5, stride=2, dw=True, name="b3_dw"), 2 * c)
    s = g.add(O.Pad(((0, 0), (0, c), (0, 0), (0, 0)), 0.0), (g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,)),))
    y = prelu(g.add(O.Binary("add"), (s, t), "b3_add"), "b3_prelu")
    g.outputs = [conv(y, 6, name="head")]
    return g


def _palm_builds(monkeypatch, stream: str) -> dict:
    """_palm_blocks compiled with its stream (`stream`) and as main had it ("cpu": the residual
    channels, the adds and PReLUs on the CPU), on the same weights and samples: per form (the float
    graph, its calibration samples, the compile result, rms error over 16 inputs outside the
    calibration set, estimated ms)."""
    state = rng.bit_generator.state
    held_out = [[np.random.default_rng(70 + i).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)] for i in range(16)]
    out = {}
    for form in (stream, "cpu"):
        rng.bit_generator.state = state  # the same weights and samples both times
        g = _palm_blocks()
        calib = [[rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)] for _ in range(8)]
        if form == "cpu":
            monkeypatch.setattr("kcc.passes.legalize_kpu.stream_to_kpu", lambda g, opts, adds=None: (g, [], [], []))
            monkeypatch.setattr("kcc.passes.decompose_kernels.streamed_prelus", lambda g, opts: {})
        res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        err = float(np.sqrt(np.mean([np.mean((program.run(s)[0].reshape(g.outputs[0].shape) - run(g, s)[0]) ** 2)
                                     for s in held_out])))
        out[form] = (g, calib, res, err, res.latency.total_ms)
    return out


def _streamed_wholly(g, calib, res) -> None:
    """Every add on the KPU, the rewrites exact in float, no CPU math but the stem's (its halves, its
    PReLU and b1_dw's residual of it), every KPU layer equal to the scalar reference."""
    adds = [p for p in res.placements if p.op == "add"]
    assert [(p.node, p.on_kpu) for p in adds] == [("b1_add", True), ("b2_add", True), ("b3_add", True)], adds
    for s in calib[:2]:
        np.testing.assert_allclose(run(res.float_graph, s)[0], run(g, s)[0], rtol=1e-4, atol=1e-4)
    cpu_math = [n.name for n in res.graph.nodes if n.op.kind in ("prelu", "binary")]
    assert all(m.startswith(("stem", "b1_dw/residual")) for m in cpu_math), cpu_math
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == names.count("kpu_conv2d")


def test_palm_blazeblocks_stream_through_decomposed_5x5_depthwise_convs(monkeypatch):
    """BlazePalm's blocks (issue #16): the stream's PReLUs are 8-bit KPU inputs of the decomposed 5x5
    depthwise convs (no rounding-residual channels), so every add, PReLU, max-pool skip and channel pad
    stays in KPU RAM; the stem's CPU PReLU is uploaded once to start the stream. Exact in float; every
    KPU layer equals the scalar reference; faster than the CPU adds and PReLUs by the cost model. Less
    accurate: the stream is rounded to 8 bits once per block where the CPU keeps it in float."""
    builds = _palm_builds(monkeypatch, "kpu")
    g, calib, res, _, _ = builds["kpu"]
    _streamed_wholly(g, calib, res)
    (pool,) = [p for p in res.placements if p.op == "pool2d"]
    assert pool.on_kpu and "max_2_s2" in pool.reason, pool
    dws = {d.node: d for d in res.decisions if d.node.endswith("_dw")}
    assert sorted(dws) == ["b1_dw", "b2_dw", "b3_dw"] and all(d.plan is not None for d in dws.values()), dws
    # the stem's float PReLU keeps its residual channels; the stream's 8-bit codes need none
    assert [dws[n].plan.residual for n in ("b1_dw", "b2_dw", "b3_dw")] == [True, False, False], dws
    err, ms = {f: b[3] for f, b in builds.items()}, {f: b[4] for f, b in builds.items()}
    # measured (rms error over 16 inputs outside the calibration set; estimated ms): 0.0349 and 5.96 ms
    # streamed, 0.0335 and 11.37 ms with the residual channels and the CPU adds and PReLUs; over three
    # other draws of weights and samples the stream's error was 1.0-1.7 times the CPU form's (the worst
    # output step over the 4 calibration samples, this test's bar before, fell either side by chance:
    # docs/measurements.md §17)
    assert ms["kpu"] < 0.6 * ms["cpu"] and err["kpu"] <= 2.0 * err["cpu"], (err, ms)


def test_palm_blazeblocks_over_the_pair_ram_make_their_prelu_explicit(monkeypatch):
    """A block whose relu pair is over STREAM_PAIR_RAM (BlazePalm's 96x96 blocks: 768 KiB) streams
    with its PReLU made explicit at once, one merge layer from the pair to C channels, so that its
    readers (the next block's stack, the 5x5's copies) read C channels and only the stack and the pair
    are alive at its peak. Here every block is such a block (STREAM_PAIR_RAM lowered below their 4 KiB
    pairs): every add still on the KPU, each PReLU a 1x1 KPU layer of its own, no CPU op between the
    stem and the head, exact in float, every layer equal to the scalar reference, faster than the CPU
    adds and PReLUs and within the stream's error (measured: 0.0309 and 5.51 ms, against 0.0256 and
    11.37 ms on the CPU)."""
    monkeypatch.setattr("kcc.passes.blaze_blocks.STREAM_PAIR_RAM", 2048)  # the rule's one place (explicit_prelu)
    builds = _palm_builds(monkeypatch, "explicit")
    g, calib, res, _, _ = builds["explicit"]
    _streamed_wholly(g, calib, res)
    merges = {n.name: n for n in res.float_graph.nodes if n.name in ("b1_prelu", "b2_prelu", "b3_prelu")}
    assert sorted(merges) == ["b1_prelu", "b2_prelu", "b3_prelu"]
    for name, m in merges.items():  # a 1x1 layer over its pair [relu(a); relu(-a)] to C channels
        assert isinstance(m.op, KO.FloatKpuConv) and m.op.kernel == 1 and m.inputs[0].shape[1] == 2 * m.shape[1], name
    err, ms = {f: b[3] for f, b in builds.items()}, {f: b[4] for f, b in builds.items()}
    assert ms["explicit"] < 0.6 * ms["cpu"] and err["explicit"] <= 2.0 * err["cpu"], (err, ms)


def test_a_form_that_overflows_kpu_ram_beside_a_stream_is_made_again_smaller():
    """BlazePalm-like blocks of 32 channels at 80x80 after a 3x3 stem (a KPU layer, its PReLU a relu
    pair on the KPU): b1_dw's copies fit KPU RAM by its own check, but not beside the stack of b1_add
    its output is written into (b4b9e4b: "KPU RAM overflow ... at 'b1_dw (stacked 3x3 terms)'", no
    kmodel). kcc.pipeline runs the stages again with that stack's bytes left beside b1_dw's form: the
    model compiles, every add stays on the KPU, and its output is float's within a few steps (the
    layers are the kinds the tests above check against the scalar reference)."""
    g = _palm_blocks(c=32, hw=80, stem=3)
    calib = [[np.random.default_rng(i).uniform(-1, 1, (1, 3, 80, 80)).astype(np.float32)] for i in range(2)]
    lines = []
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib, log=lines.append)
    assert any("KPU RAM overflow at b1_dw" in line for line in lines), lines
    assert [p.on_kpu for p in res.placements if p.op == "add"] == [True, True, True]
    out = kpu_sim.load(res.kmodel).run(calib[1])[0].reshape(g.outputs[0].shape)
    assert max_steps(out, run(g, calib[1])[0]) < 8  # measured 4.65 output steps
