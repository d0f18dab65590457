"""Layers that stay in KPU RAM or are cut into several: channel concatenations computed in place,
channel split, the uint8 matmul of a wide fully-connected layer, channel groups read in place, a
depthwise layer cut by its weights' range, and what a layer's placement says of the CPU work around
it. Each kmodel runs on kpu_sim, every KPU layer against the scalar reference, the result against the
float graph (bars: measured + 5 %).
"""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from kpu_checks import (
    RNG,
    dw5x5_then_1x1,
    kpu_layers_match_the_scalar_reference,
    layer_maps,
    max_steps,
    opcodes,
)
from kpu_checks import const as _const

import kcc.kmodel as km
import kpu_sim
from kcc.eval.interpreter import run
from kcc.frontend import import_model
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.decompose_kernels import Form, rewrite
from kcc.pipeline import compile_graph
from kcc.report import summary

rng = RNG



def _ssh_head(w, splits, relu_after=True):
    """ulffd_landmark's SSH head at width w: 3x3 convs of `splits` channels concatenated, a ReLU, then
    two 1x1 convs reading the concatenation (two model outputs)."""
    g = Graph()
    x = g.input(0, (1, 4, 6, w))
    parts = tuple(g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (x, _const(g, (oc, 4, 3, 3)), _const(g, (oc,))),
                        f"part{i}") for i, oc in enumerate(splits))
    c = g.add(O.Concat(1), parts, "concat")
    r = g.add(O.Clamp(0.0, np.inf), (c,), "relu") if relu_after else c
    heads = [g.add(O.Conv2D(), (r, _const(g, (oc, sum(splits), 1, 1)), _const(g, (oc,))), f"head{i}")
             for i, oc in enumerate((5, 3))]
    g.outputs = heads
    return g


# width -> channel splits that start every part on a 64-byte line of its own (a multiple of 1, 2, 4)
KPU_CONCATS = [(40, (3, 5)), (40, (8, 1, 7)), (20, (4, 2)), (20, (2, 6, 3)), (10, (8, 4)), (10, (4, 4, 3))]


@pytest.mark.parametrize("w,splits", KPU_CONCATS, ids=[f"w{w}-{'+'.join(map(str, s))}" for w, s in KPU_CONCATS])
def test_concat_of_kpu_layers_is_computed_in_place_in_kpu_ram(w, splits, monkeypatch):
    """relu(concat(convs)) -> 1x1 convs: the ReLU moves into the producing convs (concat_activations),
    each producer writes its channel range of one KPU RAM buffer, at the line where its first channel
    starts (kmodel_v4.md §7.3), and the heads read that buffer: no copy-out, CPU concatenation or
    upload. Each layer equals the scalar reference of the integer pipeline on random weights, each
    head reads exactly the producers' outputs side by side, the buffer is one allocation alive from
    the first producer to the last head, and the result agrees with float as closely as the CPU
    path (concat and ReLU on the CPU) does."""
    state = rng.bit_generator.state
    err = {}
    for form in ("kpu", "cpu"):
        rng.bit_generator.state = state  # the same weights and samples both times
        g = _ssh_head(w, splits)
        calib = [[rng.uniform(-1, 1, (1, 4, 6, w)).astype(np.float32)] for _ in range(8)]
        want = run(g, calib[0])
        if form == "cpu":
            monkeypatch.setattr("kcc.pipeline.concat_activations", lambda g, ctx: g)
        res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        got = kpu_sim.load(res.kmodel).run(calib[0])
        err[form] = max(max_steps(a.reshape(b.shape), b) for a, b in zip(got, want))
        if form == "cpu":  # copied out, concatenated and rectified in float, uploaded again
            assert opcodes(res.emitted.model).count("kpu_upload") == 2
            continue
        concat = [p for p in res.placements if p.op == "concat"]
        assert len(concat) == 1 and concat[0].on_kpu and "in place in KPU RAM" in concat[0].reason, concat
        names = opcodes(res.emitted.model)
        assert names.count("kpu_conv2d") == len(splits) + 2 and names.count("kpu_upload") == 1, names
        assert not {"concat", "conv2d", "binary", "dequantize"} & set(names[:names.index("kpu_conv2d") + len(splits) + 2]), names
        assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == len(splits) + 2
        maps = layer_maps(res.kmodel, calib[0][0])
        producers, heads = maps[:len(splits)], maps[len(splits):]
        base = heads[0][0].kpu_input().start
        at = 0
        for (body, _, out), oc in zip(producers, splits):
            assert out.shape[1] == oc
            assert body.kpu_output().start == base + km.kpu_channel_offset(w, 6, at), (at, body.kpu_output())
            at += oc
        side_by_side = np.concatenate([out for _, _, out in producers], axis=1)
        for body, x_map, _ in heads:
            assert body.kpu_input().start == base
            np.testing.assert_array_equal(x_map, side_by_side)
        (buf,) = [b for b in res.emitted.buffers if b.name == "relu/kpu"]
        assert buf.size == km.kpu_bytes((1, sum(splits), 6, w))
        steps = {name: i for i, name in enumerate(res.emitted.node_names)}
        assert buf.birth == min(steps[f"part{i}"] for i in range(len(splits)))
        assert buf.death == max(steps["head0"], steps["head1"])
    # measured: 1.43 vs 2.42 steps, 1.59 vs 2.54, 1.99 vs 2.06, 1.46 vs 2.56, 1.72 vs 2.01, 1.61 vs 2.57:
    # each part is rounded once, on the concatenation's grid, instead of on its own and again after the ReLU
    assert err["kpu"] <= err["cpu"] and err["kpu"] <= 2.09, err


def test_concat_stays_on_the_cpu_when_a_part_shares_a_line_and_says_why():
    """At width 20 two channels share a 64-byte line: a part starting at channel 3 cannot be written in
    place. The concatenation runs on the CPU as before, its placement names the part and the rule,
    and the result still agrees with float."""
    g = _ssh_head(20, (3, 3))
    calib = [[rng.uniform(-1, 1, (1, 4, 6, 20)).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    (concat,) = [p for p in res.placements if p.op == "concat"]
    assert not concat.on_kpu
    assert concat.reason == ("its part 'part1' starts at channel 3, not a multiple of 2 (the channels one "
                             "64-byte line of KPU RAM holds at width 20)")
    names = opcodes(res.emitted.model)
    assert names.count("kpu_upload") == 2, names  # the concatenation re-uploaded
    (shown,) = [p for p in summary.placements(res, res.latency) if p.op == "concat"]
    cost = re.fullmatch(r"on the CPU, (\d+\.\d\d) ms estimated: (.*)", shown.reason)
    assert cost and float(cost[1]) > 0 and cost[2] == concat.reason, shown.reason
    got = kpu_sim.load(res.kmodel).run(calib[0])
    err = max(max_steps(a.reshape(b.shape), b) for a, b in zip(got, want))
    assert err <= 1.89, f"max error {err:.2f} steps"  # measured 1.80


def _tflite_builder():
    """tests/tflite_builder.py, loaded by path (only tests/support is on sys.path)."""
    path = Path(__file__).resolve().parents[1] / "tflite_builder.py"
    spec = importlib.util.spec_from_file_location("tflite_builder", path)
    module = sys.modules.setdefault("tflite_builder", importlib.util.module_from_spec(spec))
    if not hasattr(module, "TfliteBuilder"):
        spec.loader.exec_module(module)
    return module


def test_tflite_ssh_head_runs_on_the_kpu_and_agrees_with_the_tflite_interpreter():
    """A .tflite conv / conv / CONCATENATION / RELU / conv (ulffd_landmark's SSH head; TFLite's float
    concatenation takes no fused activation): compiled, the concatenation is in place in KPU RAM and
    the kmodel has no CPU op between its KPU layers; on kpu_sim it agrees with the TFLite
    interpreter's float result within a step and a half of the output grid."""
    tb = _tflite_builder()
    b = tb.TfliteBuilder()
    x = b.input([1, 6, 20, 4])

    def conv(inp, cin, cout, k, name):
        w = b.const(rng.uniform(-1, 1, (cout, k, k, cin)).astype(np.float32))
        return b.op("CONV_2D", [inp, w, b.const(rng.uniform(-0.2, 0.2, cout).astype(np.float32))],
                    padding="SAME", stride_w=1, stride_h=1, fused_activation_function="NONE", name=name)

    parts = [conv(x, 4, 6, 3, "a"), conv(x, 4, 4, 3, "b")]
    c = b.op("CONCATENATION", parts, axis=3, fused_activation_function="NONE", name="concat")
    b.output(conv(b.op("RELU", [c], name="relu"), 10, 5, 1, "head"))
    data = b.build()
    samples = [[rng.uniform(-1, 1, (1, 4, 6, 20)).astype(np.float32)] for _ in range(8)]
    g = import_model(data).graph
    res = compile_graph(g, CompileOptions(input_type="float"), samples=samples)
    (concat,) = [p for p in res.placements if p.op == "concat"]
    assert concat.on_kpu, concat
    names = opcodes(res.emitted.model)
    assert names == ["quantize", "kpu_upload", "kpu_conv2d", "kpu_conv2d", "kpu_conv2d", "dequantize"], names
    want = tb.run_tflite(data, [samples[0][0].transpose(0, 2, 3, 1)])[0].transpose(0, 3, 1, 2)
    got = kpu_sim.load(res.kmodel).run(samples[0])[0].reshape(want.shape)
    err = max_steps(got, want)
    assert err <= 1.50, f"max error {err:.2f} steps"  # measured 1.43


def _expand_dw_project(g, x, c, project=True):
    """An inverted residual block without its add: 1x1 expansion to c channels, 3x3 depthwise, 1x1."""
    relu6 = (0.0, 6.0)
    y = g.add(O.Conv2D(act=relu6), (x, _const(g, (c, x.shape[1], 1, 1)), _const(g, (c,))), "expand")
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), groups=c, act=relu6), (y, _const(g, (c, 1, 3, 3)), _const(g, (c,))), "dw")
    return g.add(O.Conv2D(), (y, _const(g, (6, c, 1, 1)), _const(g, (6,))), "project") if project else y


def _wide_head(g, x):
    return g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (1100, x.shape[1], 1, 1)), _const(g, (1100,))), "head")


# name -> (input shape, graph, KPU RAM the legalizer may use, KPU layers, (bar, measured) in output steps)
SPLIT_CASES = {
    # the depthwise's 24x16x16 input and output need 12 KiB of KPU RAM, over the 10 KiB allowed here
    # (2 MiB on the chip: the same rule, cheaper to check): expansion and depthwise in two groups of 12.
    # Unsplit (with the chip's 2 MiB) the same graph is 2.17 steps off: each group's weights get a grid
    # of their own
    "dw_over_kpu_ram": ((1, 4, 16, 16), lambda g, x: _expand_dw_project(g, x, 24), 10 << 10, 5, (1.97, 1.88)),
    # 1040 channels: expansion and depthwise in two groups of 520, over the 10-bit channel fields (the
    # output, as a 1x1 conv over all 1040 channels would read more than a KPU layer does)
    "dw_over_1024_channels": ((1, 4, 4, 4), lambda g, x: _expand_dw_project(g, x, 1040, False), None, 4,
                              (1.81, 1.72)),
    # 1100 output channels: two output groups reading the same input in KPU RAM
    "conv_over_1024_outputs": ((1, 4, 4, 4), _wide_head, None, 2, (1.88, 1.79)),
}


@pytest.mark.parametrize("name", sorted(SPLIT_CASES))
def test_channel_split_layers_are_bit_exact_on_the_kpu(name, monkeypatch):
    """split_channels (issue #16 item 4): a layer over KPU RAM or 1024 channels runs as channel groups,
    every one a KPU layer (no conv left on the CPU) equal to the scalar reference of the integer
    pipeline on random weights; the whole agrees with the float graph."""
    shape, make, kpu_ram, layers, (bar, _measured) = SPLIT_CASES[name]
    if kpu_ram is not None:
        monkeypatch.setattr("kcc.passes.legalize_kpu.KPU_RAM_SIZE", kpu_ram)
    g = Graph()
    x = g.input(0, shape)
    g.outputs = [make(g, x)]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])[0]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    assert all(p.on_kpu for p in res.placements), res.placements
    names = opcodes(res.emitted.model)
    assert names.count("kpu_conv2d") == layers and "conv2d" not in names, names
    assert "strided_slice" not in names, names  # each depthwise group reads its expansion group
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == layers
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= bar, f"{name}: max error {max_steps(got, want):.2f} steps"


def test_a_fully_connected_layer_over_1024_inputs_is_one_kpu_layer_over_a_3x3_map():
    """1100 inputs, more than a KPU layer's 1024 channels (and partial sums of two layers would round):
    the input vector's bytes read as a 123x3x3 map (zero-padded to 1107), one 3x3 KPU layer whose window
    covers the map whole, every product in one accumulation (kernel_forms.fc_as_conv). The layer equals
    the scalar reference of the integer pipeline on random weights; the result agrees with float."""
    g = Graph()
    x = g.input(0, (1, 1100))
    g.outputs = [g.add(O.MatMul(), (x, _const(g, (1100, 40)), _const(g, (40,))), "fc")]
    calib = [[rng.uniform(-1, 1, (1, 1100)).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])[0]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    (fc,) = res.placements
    assert fc.on_kpu and fc.reason == "as 3x3 conv over its 1100 inputs as a 123x3x3 map", fc
    names = opcodes(res.emitted.model)
    assert names.count("kpu_conv2d") == 1 and "quantized_matmul" not in names and "matmul" not in names, names
    (body, x_map, _), = layer_maps(res.kmodel, calib[0][0])
    lay = body.layer
    assert (lay.in_channels, lay.in_height, lay.in_width, lay.filter_size, lay.out_channels) == (123, 4, 4, 3, 40)
    # the pool unit picks the window's output (row 2, column 2 of the 4x4 map): 2x2 per channel out
    assert lay.pool_type.name.lower() == "left_top_2_s2", lay.pool_type
    codes = x_map[0, :, 1:, 1:].reshape(-1)  # the vector's bytes, in order, then 7 zero-padded inputs
    assert np.corrcoef(codes[:1100], calib[0][0][0])[0, 1] > 0.999 and len(np.unique(codes[1100:])) == 1
    zero = codes[1100]  # the pad row and column (to the KPU's 4x4 minimum, before) hold the zero point too
    assert (x_map[:, :, 0, :] == zero).all() and (x_map[:, :, :, 0] == zero).all()
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 1
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= 1.49, f"max error {max_steps(got, want):.2f} steps"  # measured 1.42


def test_a_fully_connected_layer_beyond_a_3x3_maps_reach_is_a_bit_exact_uint8_matmul():
    """9300 inputs, more than a 3x3 window over 1024 channels reaches (9216): nncase's quantized_matmul
    on the CPU, uint8 weights, never a float matmul. Its output equals a numpy reference of the integer
    formula (kpu_semantics.md §4.4) on the input codes, and agrees with float."""
    k = 9300
    g = Graph()
    x = g.input(0, (1, k))
    g.outputs = [g.add(O.MatMul(), (x, _const(g, (k, 40)), _const(g, (40,))), "fc")]
    calib = [[rng.uniform(-1, 1, (1, k)).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])[0]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    nodes = res.emitted.model.nodes
    names = [n.opcode.kmodel_name for n in nodes]
    assert names == ["quantize", "quantized_matmul", "dequantize"], names
    mm = nodes[1].body
    assert mm.bias.dtype == np.int32 and len(res.kmodel) < k * 40 * 2  # uint8 weights, not float
    # the integer formula, from the body's fields, on the input codes the matmul read
    program = kpu_sim.load(res.kmodel)
    seen = {}

    def trace(index, opcode, body, _outs):
        if opcode is km.Opcode.QUANTIZE:
            seen["a"] = program.memory.read(mm.input_a, np.uint8, k).astype(np.int64).reshape(1, k)
        elif opcode is km.Opcode.QUANTIZED_MATMUL:
            seen["out"] = program.memory.read(mm.output, np.uint8, 40).reshape(1, 40)

    program.run(calib[0], trace=trace)
    b = program.memory.read(mm.input_b, np.uint8, k * 40).reshape(k, 40).astype(np.int64)
    value = mm.bias.astype(np.int64) + (seen["a"] + mm.input_a_offset) @ (b + mm.input_b_offset)
    scaled = (value * mm.output_mul + (1 << (mm.output_shift - 1))) >> mm.output_shift
    np.testing.assert_array_equal(seen["out"], np.clip(scaled + mm.output_offset, 0, 255).astype(np.uint8))
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= 1.28, f"max error {max_steps(got, want):.2f} steps"  # measured 1.22


def test_a_kpu_layer_with_cpu_work_around_it_says_why_and_what_it_costs(monkeypatch):
    """Issue #16 item 2: a stride-2 depthwise layer on an odd size, without its KPU-only form
    (kcc.passes.gap_pick, tests/e2e/test_kpu_picks_and_pools.py), keeps its full-size output and a CPU
    slice (the pick would need a CPU pre-pad); its placement says so, and the summary adds the CPU time
    estimated around it (copy out, slice, upload)."""
    monkeypatch.setattr("kcc.passes.gap_pick.plan", lambda *a: None)
    g = Graph()
    x = g.input(0, (1, 8, 15, 20))
    y = g.add(O.Conv2D((1, 1), ((0, 0), (0, 0)), act=(0.0, 6.0)),
              (x, _const(g, (16, 8, 1, 1)), _const(g, (16,))), "pw")
    y = g.add(O.Conv2D((2, 2), ((1, 1), (1, 1)), (1, 1), 16, (0.0, 6.0)),
              (y, _const(g, (16, 1, 3, 3)), _const(g, (16,))), "dw_s2")
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (4, 16, 1, 1)), _const(g, (4,))), "head")]
    calib = [[rng.uniform(-1, 1, (1, 8, 15, 20)).astype(np.float32)] for _ in range(4)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    (dw,) = [p for p in res.placements if p.node == "dw_s2"]
    assert dw.on_kpu and "to 8x10: the pick would need a CPU pre-pad" in dw.reason, dw.reason
    assert "odd size" in dw.reason
    (shown,) = [p for p in summary.placements(res, res.latency) if p.node == "dw_s2"]
    cost = re.search(r"; (\d+\.\d\d) ms estimated on the CPU around the layer$", shown.reason)
    assert cost and float(cost[1]) > 0, shown.reason


CHANNEL_VIEWS = {"w14": (12, 14, 4), "w24": (6, 24, 2), "w70": (6, 70, 3)}


@pytest.mark.parametrize("name", sorted(CHANNEL_VIEWS))
def test_channel_groups_of_a_kpu_layer_are_read_in_place_in_kpu_ram(name):
    """A 5x5 depthwise decomposed per channel group (`stack_kpu`) after a 1x1 KPU layer: each group's
    copies read channels [c0, c1) of the layer's output where it lies in KPU RAM, at the line where c0
    starts (kcc.kmodel.kpu_channel_offset), as a (c1 - c0)-channel map of their own: no copy-out, CPU
    slice or upload. Each layer equals the scalar reference on random weights, each group's input map
    is exactly its channels of the layer's output, the layer's buffer lives until its last group is
    read, and the kmodel computes what the CPU-slice form computes, code for code."""
    c, w, group = CHANNEL_VIEWS[name]
    shape = (1, 4, 12, w)
    g = Graph()
    g.outputs = [dw5x5_then_1x1(g, g.input(0, shape), c, "conv")]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = [run(g, s)[0] for s in calib]
    x_name = g.find("dw").inputs[0].name
    rewrite(g, g.find("dw"), Form((1, 1), (0, 0), "stack_kpu", group))
    g.remove_dead()
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    model = res.emitted.model
    names = opcodes(model)
    groups = c // group
    layers = 1 + 10 * groups + 1
    assert names.count("kpu_conv2d") == layers and names.count("kpu_upload") == 1, names
    assert not {"strided_slice", "pad", "concat"} & set(names), names
    views = [p for p in res.placements if p.op == "strided_slice"]
    assert len(views) == groups and all(p.on_kpu and "in place in KPU RAM" in p.reason for p in views), views
    layer_names = [res.emitted.node_names[i] for i, n in enumerate(model.nodes) if n.opcode.kmodel_name == "kpu_conv2d"]
    assert layer_names[0] == x_name
    for sample in calib[:2]:
        assert kpu_layers_match_the_scalar_reference(res.kmodel, sample[0]) == layers
        maps = layer_maps(res.kmodel, sample[0])
        x_body, x_out = maps[0][0], maps[0][2]  # the 1x1 layer making x
        readers = [(body, x_map) for (body, x_map, _), nm in zip(maps, layer_names) if "/shift" in nm]
        assert len(readers) == 9 * groups
        at = {x_body.kpu_output().start + km.kpu_channel_offset(w, 12, c0): c0 for c0 in range(0, c, group)}
        assert {body.kpu_input().start for body, _ in readers} == set(at)
        for body, x_map in readers:  # a map of its own: `group` channels at the line where c0 starts
            c0 = at[body.kpu_input().start]
            assert body.layer.in_channels == group
            np.testing.assert_array_equal(x_map, x_out[:, c0:c0 + group])
    (buf,) = [b for b in res.emitted.buffers if b.name == x_name]
    assert buf.size == km.kpu_bytes((1, c, 12, w))
    assert buf.death == max(i for i, nm in enumerate(res.emitted.node_names) if "/shift" in nm), buf
    # code for code what the CPU path gives: the map copied out, each group uploaded from its channels
    # in main memory (a contiguous range: a view, kcc.emit.storage, no strided_slice node)
    import kcc.quant.quantize as quantize_module
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize_module, "kpu_view_problem", lambda n, table: "off")
        cpu = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    cpu_nodes = cpu.emitted.model.nodes
    assert [n.opcode.kmodel_name for n in cpu_nodes].count("strided_slice") == 0
    out = next(n.body.main_mem_output for n in cpu_nodes if n.opcode.kmodel_name == "kpu_conv2d"
               and n.body.main_mem_output.size == c * 12 * w)  # the 1x1 layer's map, copied out
    sources = [prev.body.inputs[0] if prev.opcode.kmodel_name == "concat" and prev.body.output == n.body.input
               else n.body.input  # a DMA upload's rows padded by a concat first (kcc.quant.kpu_ram.upload)
               for prev, n in zip(cpu_nodes, cpu_nodes[1:]) if n.opcode.kmodel_name == "kpu_upload"]
    group_uploads = sorted(r.start - out.start for r in sources if out.start <= r.start < out.start + out.size)
    assert group_uploads == [c0 * 12 * w for c0 in range(0, c, group)], group_uploads
    for s in calib[:3]:
        np.testing.assert_array_equal(kpu_sim.load(res.kmodel).run(s)[0], kpu_sim.load(cpu.kmodel).run(s)[0])
    steps = max(max_steps(kpu_sim.load(res.kmodel).run(s)[0].reshape(v.shape), v) for s, v in zip(calib, want))
    assert steps < 3.0, steps


def test_a_channel_slice_not_on_a_line_of_its_own_is_made_on_the_cpu_and_says_why():
    """At width 14 four channels share a 64-byte line: a 3x3 KPU layer reading channels 4..7 of another
    layer's output reads them in place, one reading channels 2..4 cannot (channel 2 starts inside a
    line). That slice is copied out and uploaded from its channels in main memory (a view of the
    copy: no strided_slice node), and its placement names the rule; every layer equals the scalar
    reference and the result agrees with float."""
    shape = (1, 3, 6, 14)
    g = Graph()
    x = g.input(0, shape)
    a = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (x, _const(g, (8, 3, 3, 3)), _const(g, (8,))), "a")
    outs = []
    for c0, c1 in ((4, 8), (2, 5)):
        part = g.add(O.StridedSlice((0, c0, 0, 0), (1, c1, 6, 14), (1, 1, 1, 1)), (a,), f"a{c0}_{c1}")
        outs.append(g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (part, _const(g, (5, c1 - c0, 3, 3)), _const(g, (5,))),
                          f"b{c0}"))
    g.outputs = outs
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    names = opcodes(res.emitted.model)
    assert names.count("strided_slice") == 0 and names.count("kpu_upload") == 2, names
    views = {p.node: p for p in res.placements if p.op == "strided_slice"}
    assert views["a4_8"].on_kpu and "in place in KPU RAM" in views["a4_8"].reason, views
    assert not views["a2_5"].on_kpu, views
    assert "channel 2 is not a multiple of 4" in views["a2_5"].reason and "width 14" in views["a2_5"].reason, views
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 3
    got = kpu_sim.load(res.kmodel).run(calib[0])
    assert max(max_steps(o.reshape(v.shape), v) for o, v in zip(got, want)) < 3.0


def _dw_with_wide_channels(g, x, wide=(1, 6)):
    """expand (1x1, 12 channels) -> 3x3 depthwise whose channels `wide` have a weight range of 100,
    over --weights-quantize-threshold (64) -> project (1x1, 6)."""
    relu6 = (0.0, 6.0)
    y = g.add(O.Conv2D(act=relu6), (x, _const(g, (12, x.shape[1], 1, 1)), _const(g, (12,))), "expand")
    w = rng.uniform(-1, 1, (12, 1, 3, 3)).astype(np.float32)
    w[list(wide), 0, 0, 0], w[list(wide), 0, 2, 2] = -50.0, 50.0
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), groups=12, act=relu6), (y, g.constant(w), _const(g, (12,))), "dw")
    return g.add(O.Conv2D(), (y, _const(g, (6, 12, 1, 1)), _const(g, (6,))), "project")


def test_a_depthwise_cut_by_its_weights_range_writes_its_cpu_channels_into_kpu_ram(monkeypatch):
    """The two wide channels of the depthwise run in float on the CPU; the ten others are one KPU layer.
    The CPU part, quantized on the grid of the concatenation, is uploaded into its channel range of the
    KPU RAM buffer the KPU part writes, which the 1x1 projection reads: no copy-out, CPU concatenation
    or re-upload of the KPU part. Every KPU layer equals the scalar reference; the projection reads the
    KPU part's output and the upload side by side; the whole agrees with float. (Where the wide
    channels can take a kcc.passes.fine_weights pair they run on the KPU: tests/e2e/test_fine_weights.py;
    here they cannot.)"""
    monkeypatch.setattr("kcc.passes.fine_weights.run_plans", lambda *a: {})
    monkeypatch.setattr("kcc.passes.fine_weights.whole_pair", lambda *a: False)
    shape = (1, 4, 12, 40)
    state = rng.bit_generator.state

    def build():  # compiling edits the graph (split_channels): a fresh one, the same weights, each time
        rng.bit_generator.state = state
        g = Graph()
        g.outputs = [_dw_with_wide_channels(g, g.input(0, shape))]
        return g

    g = build()
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])[0]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    (concat,) = [p for p in res.placements if p.op == "concat"]
    assert concat.on_kpu and "in place in KPU RAM" in concat.reason, concat
    nodes, names = res.emitted.model.nodes, opcodes(res.emitted.model)
    # expansion cut in two (its rows follow the depthwise's channel order), the depthwise's KPU part,
    # the projection; one float conv of 2 channels; the input's upload and the CPU part's
    assert names.count("kpu_conv2d") == 4 and names.count("conv2d") == 1 and names.count("kpu_upload") == 2, names
    assert "concat" not in names, names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 4
    maps = layer_maps(res.kmodel, calib[0][0])
    (dw_body, _, dw_out), = [m for m in maps if m[0].layer.depth_wise_layer]
    project, x_map, _ = maps[-1]
    assert dw_out.shape[1] == 10 and x_map.shape[1] == 12
    base = project.kpu_input().start
    assert dw_body.kpu_output().start == base
    (upload,) = [n.body for n in nodes if n.opcode.kmodel_name == "kpu_upload" and n.body.in_shape.c == 2]
    assert upload.output.start == base + km.kpu_channel_offset(40, 12, 10)
    np.testing.assert_array_equal(x_map[:, :10], dw_out)
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    err = max_steps(got, want)
    # against the whole depthwise in float on the CPU (no cut): the wide channels amplify the
    # expansion's rounding in both forms; measured 13.77 steps cut, 18.48 whole
    monkeypatch.setattr("kcc.passes.channel_split.plan_range_split", lambda n, opts: None)
    whole = compile_graph(build(), CompileOptions(input_type="float"), samples=calib)
    assert [n.opcode.kmodel_name for n in whole.emitted.model.nodes].count("kpu_conv2d") == 2
    err_whole = max_steps(kpu_sim.load(whole.kmodel).run(calib[0])[0].reshape(want.shape), want)
    assert err <= err_whole, (err, err_whole)
