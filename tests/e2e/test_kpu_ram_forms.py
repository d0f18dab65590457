"""Layers that stay in KPU RAM or are cut into several: channel concatenations computed in place,
channel split, the uint8 matmul of a wide fully-connected layer, the shifted copies of `stack_kpu`,
and what a layer's placement says of the CPU work around it. Each kmodel runs on kpu_sim, every KPU
layer against the scalar reference, the result against the float graph (bars: measured + 5 %).
"""

import importlib.util
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from kpu_checks import kpu_layers_match_the_scalar_reference, layer_maps, max_steps

import kcc.kmodel as km
import kpu_sim
from kcc import pipeline
from kcc.eval.interpreter import run
from kcc.frontend import import_model
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import decompose_kernels
from kcc.passes.decompose_kernels import Form, rewrite
from kcc.pipeline import compile_graph
from kcc.report import summary

rng = np.random.default_rng(5)


@pytest.fixture(autouse=True)
def _seeded(request):
    """The weights and samples of a test depend on its name only, not on the tests that ran before."""
    rng.bit_generator.state = np.random.default_rng(zlib.crc32(request.node.name.encode())).bit_generator.state


def _const(g, shape, lo=-1.0, hi=1.0):
    return g.constant(rng.uniform(lo, hi, shape).astype(np.float32))


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
            assert [n.opcode.kmodel_name for n in res.emitted.model.nodes].count("kpu_upload") == 2
            continue
        concat = [p for p in res.placements if p.op == "concat"]
        assert len(concat) == 1 and concat[0].on_kpu and "in place in KPU RAM" in concat[0].reason, concat
        names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
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
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
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
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
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
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert names.count("kpu_conv2d") == layers and "conv2d" not in names, names
    assert "strided_slice" not in names, names  # each depthwise group reads its expansion group
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == layers
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= bar, f"{name}: max error {max_steps(got, want):.2f} steps"


def test_a_fully_connected_layer_over_1024_inputs_is_a_bit_exact_uint8_matmul():
    """1100 inputs (more than a KPU layer reads, and partial sums of two layers would round): nncase's
    quantized_matmul on the CPU, uint8 weights, never a float matmul. Its output equals a numpy
    reference of the integer formula (kpu_semantics.md §4.4) on the input codes, and agrees with float."""
    g = Graph()
    x = g.input(0, (1, 1100))
    g.outputs = [g.add(O.MatMul(), (x, _const(g, (1100, 40)), _const(g, (40,))), "fc")]
    calib = [[rng.uniform(-1, 1, (1, 1100)).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])[0]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    nodes = res.emitted.model.nodes
    names = [n.opcode.kmodel_name for n in nodes]
    assert names == ["quantize", "quantized_matmul", "dequantize"], names
    mm = nodes[1].body
    assert mm.bias.dtype == np.int32 and len(res.kmodel) < 1100 * 40 * 2  # uint8 weights, not float
    # the integer formula, from the body's fields, on the input codes the matmul read
    program = kpu_sim.load(res.kmodel)
    seen = {}

    def trace(index, opcode, body, _outs):
        if opcode is km.Opcode.QUANTIZE:
            seen["a"] = program.memory.read(mm.input_a, np.uint8, 1100).astype(np.int64).reshape(1, 1100)
        elif opcode is km.Opcode.QUANTIZED_MATMUL:
            seen["out"] = program.memory.read(mm.output, np.uint8, 40).reshape(1, 40)

    program.run(calib[0], trace=trace)
    b = program.memory.read(mm.input_b, np.uint8, 1100 * 40).reshape(1100, 40).astype(np.int64)
    value = mm.bias.astype(np.int64) + (seen["a"] + mm.input_a_offset) @ (b + mm.input_b_offset)
    scaled = (value * mm.output_mul + (1 << (mm.output_shift - 1))) >> mm.output_shift
    np.testing.assert_array_equal(seen["out"], np.clip(scaled + mm.output_offset, 0, 255).astype(np.uint8))
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= 1.28, f"max error {max_steps(got, want):.2f} steps"  # measured 1.22


def test_a_kpu_layer_with_cpu_work_around_it_says_why_and_what_it_costs():
    """Issue #16 item 2: a stride-2 depthwise layer on an odd size keeps its full-size output and a CPU
    slice (the pick would need a CPU pre-pad); its placement says so, and the summary adds the CPU time
    estimated around it (copy out, slice, upload)."""
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


def _dw5x5_then_1x1(g, x, c, source=None):
    """A 5x5 depthwise (relu6) read by a 1x1 KPU layer; `source` "prelu" puts a PReLU (a float tensor
    of the CPU) before it, "conv" a 1x1 KPU layer (its input is then uint8 codes in KPU RAM)."""
    if source == "prelu":
        x = g.add(O.PRelu(), (x, g.constant(rng.uniform(0.05, 0.3, (1, c, 1, 1)).astype(np.float32))))
    elif source == "conv":
        x = g.add(O.Conv2D(), (x, _const(g, (c, x.shape[1], 1, 1)), _const(g, (c,))))
    y = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=c, act=(0.0, 6.0)), (x, _const(g, (c, 1, 5, 5)), _const(g, (c,))),
              "dw")
    return g.add(O.Conv2D(), (y, _const(g, (6, c, 1, 1)), _const(g, (6,))))


def _shift_of(body) -> tuple[int, int] | None:
    """(cy, cx) of a kpu_conv2d that copies its input shifted: depthwise 3x3 whose weight codes are its
    zero point (-arg_x) but for one tap per channel, the same tap in every channel."""
    lay = body.layer
    if not lay.depth_wise_layer or lay.filter_size != 3:
        return None
    w = np.asarray(body.weights, np.int64).reshape(lay.out_channels, 3, 3) + lay.arg_x
    taps = {tuple(map(tuple, np.argwhere(ch != 0))) for ch in w}
    if len(taps) != 1 or len(next(iter(taps))) != 1:
        return None
    a, b = next(iter(taps))[0]
    return a - 1, b - 1


STACK_KPU_CASES = {  # (channels, width, source, residual, group): 4, 2 and 1 channels per 64-byte line
    "float_input_w10": (4, 10, None, False, 0),
    "kpu_input_w20": (6, 20, "conv", False, 0),
    "prelu_residual_w40": (4, 40, "prelu", True, 0),
    # channel groups sliced off a KPU layer's output: the copies of each group on that layer's grid
    "kpu_input_in_groups_w14": (12, 14, "conv", False, 4),
}


def _copy_form(name: str, combine: str, per_group: int):
    """STACK_KPU_CASES[name]'s 5x5 depthwise compiled as the CPU-view `stack` and as `combine` (the same
    weights and samples both times); checks shared by the KPU-made copy forms: each form exact in float,
    `combine`'s rms within 1.05x of the stack's (one rounding either way: the copies add none), every
    layer on the KPU, `per_group` copies per channel group (twice with the residual), one upload of x
    (and of its residual): channel groups of a KPU layer's output are read in place
    (kcc.ir.kpu_ops.KpuChannelView), no pad, concat or slice, concatenations in place.
    Returns (res, calib, want, copies, layers)."""
    c, w, source, residual, group = STACK_KPU_CASES[name]
    shape = (1, 4, 12, w)
    state = rng.bit_generator.state
    rms = {}
    for form in ("stack", combine):
        rng.bit_generator.state = state
        g = Graph()
        g.outputs = [_dw5x5_then_1x1(g, g.input(0, shape), c, source)]
        calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
        want = [run(g, s)[0] for s in calib]
        rewrite(g, g.find("dw"), Form((1, 1), (0, 0), form, group, residual=residual))
        g.remove_dead()
        np.testing.assert_allclose(run(g, calib[0])[0], want[0], atol=1e-5)  # each form is exact in float
        res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        err = np.concatenate([(program.run(s)[0].reshape(v.shape) - v).ravel() for s, v in zip(calib, want)])
        rms[form] = float(np.sqrt(np.mean(err ** 2)))
    assert rms[combine] <= 1.05 * rms["stack"], rms
    assert all(p.on_kpu for p in res.placements), res.placements
    groups = c // group if group else 1
    copies = per_group * (2 if residual else 1) * groups
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    layers = copies + groups + 1 + (source == "conv")
    assert names.count("kpu_conv2d") == layers, names
    assert names.count("kpu_upload") == (2 if residual else 1), names
    assert not {"pad", "concat", "strided_slice"} & set(names), names
    assert all(p.on_kpu for p in res.placements if p.op == "concat"), res.placements  # all in place
    return res, calib, want, copies, layers


@pytest.mark.parametrize("name", sorted(STACK_KPU_CASES))
def test_stack_kpu_shift_copies_are_exact_in_kpu_ram(name):
    """`stack_kpu`: a 5x5 depthwise as nine 3x3 depthwise KPU layers copying x shifted by (cy, cx) in
    {-1, 0, 1}^2, written side by side into one KPU RAM buffer, then one 3x3 KPU layer over the copies.
    Each copy equals the shifted input codes exactly, its border the input's zero point (pad value),
    on random weights and inputs spanning the whole range; each layer equals the scalar reference;
    no CPU pad, slice or concatenation; one upload per KPU input (x, and its residual), none when a
    KPU layer makes x; and the result agrees with the float graph as the CPU-view `stack` does."""
    c, w, source, residual, group = STACK_KPU_CASES[name]
    res, calib, want, copies, layers = _copy_form(name, "stack_kpu", 9)
    for sample in calib[:3]:
        assert kpu_layers_match_the_scalar_reference(res.kmodel, sample[0]) == layers
        shifted, levels = [], []
        for body, x_map, out in layer_maps(res.kmodel, sample[0]):
            shift = _shift_of(body)
            if shift is None:
                continue
            pad = body.layer.pad_value
            padded = np.pad(x_map, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad)
            h, wd = x_map.shape[2:]
            np.testing.assert_array_equal(out, padded[:, :, 1 + shift[0]:1 + shift[0] + h, 1 + shift[1]:1 + shift[1] + wd])
            levels.append(len(np.unique(x_map)))
            shifted.append(shift)
        assert max(levels) > 100, levels  # x's codes span the range (a residual's, z +- gain/2)
        assert sorted(shifted) == sorted([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)] * (copies // 9))
    # the copies' grid is their input's (kcc.quant.policy.copy_grids): x's quantize or producing layer;
    # the residual's codes (quantized at gain x the resolution) hold gain x residual on that grid too
    layers_q = [n for n in res.graph.nodes if type(n.op).__name__ == "QuantKpuLayer" and "/shift" in n.name]
    assert len(layers_q) == copies and len({n.op.out_q for n in layers_q}) == 1, [n.op.out_q for n in layers_q]
    src = next(n for n in layers_q if "/residual" not in n.name).inputs[0]
    while type(src.op).__name__ in ("KpuUpload", "StridedSlice", "KpuDownload", "KpuChannelView"):
        src = src.inputs[0]
    grid = src.op.out_q if source == "conv" else (src.op.zero_point, src.op.scale)
    assert layers_q[0].op.out_q == tuple(grid), (layers_q[0].op.out_q, grid)
    program = kpu_sim.load(res.kmodel)
    steps = max(max_steps(program.run(s)[0].reshape(v.shape), v) for s, v in zip(calib, want))
    assert steps <= STACK_KPU_MAX_STEPS[name][0], f"{name}: max error {steps:.2f} steps"


STACK_KPU_MAX_STEPS = {"float_input_w10": (1.60, 1.52), "kpu_input_w20": (2.52, 2.40), "prelu_residual_w40": (1.54, 1.46),
                       "kpu_input_in_groups_w14": (2.50, 2.39)}


# width -> (channels, group): 4, 2 and 1 channels per 64-byte line, every group on a line of its own
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
    g.outputs = [_dw5x5_then_1x1(g, g.input(0, shape), c, "conv")]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = [run(g, s)[0] for s in calib]
    x_name = g.find("dw").inputs[0].name
    rewrite(g, g.find("dw"), Form((1, 1), (0, 0), "stack_kpu", group))
    g.remove_dead()
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    model = res.emitted.model
    names = [n.opcode.kmodel_name for n in model.nodes]
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
    # code for code what the CPU slice (copy-out, slice, upload) gives
    import kcc.quant.quantize as quantize_module
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize_module, "kpu_view_problem", lambda n, table: "off")
        cpu = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    assert [n.opcode.kmodel_name for n in cpu.emitted.model.nodes].count("strided_slice") == groups
    for s in calib[:3]:
        np.testing.assert_array_equal(kpu_sim.load(res.kmodel).run(s)[0], kpu_sim.load(cpu.kmodel).run(s)[0])
    steps = max(max_steps(kpu_sim.load(res.kmodel).run(s)[0].reshape(v.shape), v) for s, v in zip(calib, want))
    assert steps < 3.0, steps


def test_a_channel_slice_not_on_a_line_of_its_own_is_made_on_the_cpu_and_says_why():
    """At width 14 four channels share a 64-byte line: a 3x3 KPU layer reading channels 4..7 of another
    layer's output reads them in place, one reading channels 2..4 cannot (channel 2 starts inside a
    line). That slice is copied out, sliced on the CPU and uploaded as before, and its placement names
    the rule; every layer equals the scalar reference and the result agrees with float."""
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
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert names.count("strided_slice") == 1 and names.count("kpu_upload") == 2, names
    views = {p.node: p for p in res.placements if p.op == "strided_slice"}
    assert views["a4_8"].on_kpu and "in place in KPU RAM" in views["a4_8"].reason, views
    assert not views["a2_5"].on_kpu, views
    assert "channel 2 is not a multiple of 4" in views["a2_5"].reason and "width 14" in views["a2_5"].reason, views
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 3
    got = kpu_sim.load(res.kmodel).run(calib[0])
    assert max(max_steps(o.reshape(v.shape), v) for o, v in zip(got, want)) < 3.0


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
    KPU part's output and the upload side by side; the whole agrees with float."""
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
    nodes = res.emitted.model.nodes
    names = [n.opcode.kmodel_name for n in nodes]
    # expansion cut in two (its rows follow the depthwise's channel order), the depthwise's KPU part,
    # the projection; one float conv of 2 channels; the input's upload and the CPU part's
    assert names.count("kpu_conv2d") == 4 and names.count("conv2d") == 1 and names.count("kpu_upload") == 2, names
    assert "concat" not in names, names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 4
    maps = layer_maps(res.kmodel, calib[0][0])
    (dw_body, _, dw_out), (project, x_map, _) = maps[2], maps[3]
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


def test_a_pool_of_a_layer_also_read_unpooled_is_a_bit_exact_twin_kpu_layer():
    """conv -> (output, max pool -> 1x1 conv): the pool unit writes a layer's pooled output only, so
    the same conv with max_2_s2 is a second KPU layer; no pool runs on the CPU, each layer equals the
    scalar reference, and the pooled twin is exactly the max of the unpooled layer's codes."""
    shape = (1, 4, 16, 16)
    g = Graph()
    x = g.input(0, shape)
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (x, _const(g, (8, 4, 3, 3)), _const(g, (8,))),
              "conv")
    p = g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,), "pool")
    g.outputs = [y, g.add(O.Conv2D(), (p, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert names.count("kpu_conv2d") == 3 and "reduce_window2d" not in names, names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 3
    (conv, _, unpooled), (twin, _, pooled), _ = layer_maps(res.kmodel, calib[0][0])
    assert twin.layer.pool_type == km.KpuPoolType.MAX_2_S2 and twin.kpu_input() == conv.kpu_input()
    # both outputs span ReLU6's [0, 6] on these samples: one grid, one integer pipeline
    assert (conv.batch_norm, conv.activation) == (twin.batch_norm, twin.activation)
    np.testing.assert_array_equal(pooled, unpooled.reshape(1, 8, 8, 2, 8, 2).max(axis=(3, 5)))
    got = kpu_sim.load(res.kmodel).run(calib[0])
    assert max(max_steps(a.reshape(b.shape), b) for a, b in zip(got, want)) <= 2.0


def test_a_max_pool_of_a_depthwise_layer_pools_the_map_in_kpu_ram_exactly():
    """kcc never fuses a pool behind a depthwise layer (nncase never pairs them): the max pool becomes a
    1x1 KPU layer with identity weights and max_2_s2 reading the depthwise's output in KPU RAM (no
    copy-out, no CPU pool). On its input's grid it writes exactly the max of the codes; each layer
    equals the scalar reference; the whole agrees with float."""
    shape = (1, 8, 16, 16)
    g = Graph()
    x = g.input(0, shape)
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), groups=8, act=(0.0, 6.0)),
              (x, _const(g, (8, 1, 3, 3)), _const(g, (8,))), "dw")
    p = g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,), "pool")
    g.outputs = [g.add(O.Conv2D(), (p, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    want = run(g, calib[0])[0]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    (pool,) = [pl for pl in res.placements if pl.node == "pool"]
    assert pool.on_kpu and "identity weights" in pool.reason, pool
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert names.count("kpu_conv2d") == 3 and "reduce_window2d" not in names and "dequantize" not in names[:-1], names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 3
    (dw, _, dw_out), (pooling, x_map, pooled), _ = layer_maps(res.kmodel, calib[0][0])
    assert pooling.layer.pool_type == km.KpuPoolType.MAX_2_S2 and pooling.kpu_input() == dw.kpu_output()
    np.testing.assert_array_equal(pooled, dw_out.reshape(1, 8, 8, 2, 8, 2).max(axis=(3, 5)))
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    assert max_steps(got, want) <= 2.0, f"max error {max_steps(got, want):.2f} steps"


def _shifted(x_map: np.ndarray, offset: tuple[int, int], pad: int) -> np.ndarray:
    """x_map [N, C, H, W] shifted by offset (|dy|, |dx| <= 2): out[i, j] = x[i + dy, j + dx], `pad` outside."""
    h, w = x_map.shape[2:]
    padded = np.pad(x_map, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=pad)
    return padded[:, :, 2 + offset[0]:2 + offset[0] + h, 2 + offset[1]:2 + offset[1] + w]


@pytest.mark.parametrize("name", sorted(STACK_KPU_CASES))
def test_copies_kpu_shifts_by_whole_offsets_exactly_in_kpu_ram(name):
    """`copies_kpu`: a 5x5 depthwise as 25 copies of x shifted by each tap's offset (dy, dx) in -2..2,
    a unit shift by one 3x3 depthwise KPU layer, a shift by 2 by a second one reading a unit copy in
    place in the stack's KPU RAM buffer, then one 1x1 KPU layer over the copies. Every copy equals the
    input codes shifted by its whole offset, the border the input's zero point (a chain of two shifts
    too), on random weights and inputs spanning the whole range; each layer equals the scalar
    reference; no CPU pad, slice or concatenation; and the result agrees with the float graph as the
    CPU-view `stack` does (one rounding, the combine's)."""
    c, w, source, residual, group = STACK_KPU_CASES[name]
    res, calib, want, copies, layers = _copy_form(name, "copies_kpu", 25)
    program = kpu_sim.load(res.kmodel)
    for sample in calib[:3]:
        assert kpu_layers_match_the_scalar_reference(res.kmodel, sample[0]) == layers
        maps = [(body, x_map, out) for body, x_map, out in layer_maps(res.kmodel, sample[0]) if _shift_of(body)]
        pad = {body.layer.pad_value for body, _, _ in maps}
        assert len(pad) == 1, pad  # one grid: x's (and its residual's codes on it)
        pad = pad.pop()
        # the sources: what the (0, 0) copies copy (x's channel groups, and their residuals)
        sources = [x_map for body, x_map, _ in maps if _shift_of(body) == (0, 0)]
        assert len(sources) == copies // 25
        assert max(len(np.unique(s)) for s in sources) > 100  # x's codes span the range
        found = []
        for _, _, out in maps:
            hits = [(i, (dy, dx)) for i, s in enumerate(sources) for dy in range(-2, 3) for dx in range(-2, 3)
                    if s.shape == out.shape and np.array_equal(out, _shifted(s, (dy, dx), pad))]
            assert hits, "a copy is no shift of its source"
            found.append(hits[0])
        # each source copied once by each offset: 16 of them by a chain of two unit shifts
        assert sorted(found) == sorted((i, (dy, dx)) for i in range(len(sources))
                                       for dy in range(-2, 3) for dx in range(-2, 3))
    steps = max(max_steps(program.run(s)[0].reshape(v.shape), v) for s, v in zip(calib, want))
    assert steps <= COPIES_KPU_MAX_STEPS[name][0], f"{name}: max error {steps:.2f} steps"


# (bar, measured): the same rms as the stack's (above), a worst output step that differs either way from
# stack_kpu's (STACK_KPU_MAX_STEPS), the 1x1 combine's weights rounded on another grid than the 3x3's
COPIES_KPU_MAX_STEPS = {"float_input_w10": (2.17, 2.07), "kpu_input_w20": (1.99, 1.89),
                        "prelu_residual_w40": (1.51, 1.44), "kpu_input_in_groups_w14": (2.96, 2.82)}


def test_a_model_the_allowance_puts_over_the_device_ram_budget_is_compiled_again_with_less(monkeypatch):
    """decompose_kernels spends up to MODEL_KPU_BYTES of kmodel on stacks made in KPU RAM; a model
    that this puts over the device RAM budget (kcc.pipeline.DEVICE_RAM_BUDGET, kmodel + working
    memory) is compiled again with that much less to spend, and says so."""
    monkeypatch.setattr(decompose_kernels, "STACK_KPU_BYTES", 16 * 1024)  # 32 channels' stack_kpu needs more
    state = rng.bit_generator.state

    def compile_it(log=lambda line: None):
        rng.bit_generator.state = state
        g = Graph()
        x = g.input(0, (1, 4, 12, 12))
        for _ in range(2):
            x = _dw5x5_then_1x1(g, x, 32, "conv")
        g.outputs = [x]
        calib = [[rng.uniform(-1, 1, (1, 4, 12, 12)).astype(np.float32)] for _ in range(2)]
        res = compile_graph(g, CompileOptions(input_type="float"), log=log, samples=calib)
        return res, len(res.kmodel) + res.emitted.model.main_mem

    kpu_made = ("stack_kpu", "copies_kpu")
    first, ram = compile_it()
    assert [d.plan.combine for d in first.decisions] == ["stack_kpu", "stack_kpu"]
    monkeypatch.setattr(pipeline, "DEVICE_RAM_BUDGET", ram - 1)
    lines = []
    second, less = compile_it(lines.append)
    assert less <= ram - 1 and any(" over " in line and "again with" in line for line in lines), lines
    assert [d.plan.combine in kpu_made for d in second.decisions].count(True) < 2


def _same_s2_block(g, x, oc):
    """TFLite SAME stride 2 on an even size (pad 0 top/left, 1 bottom/right): a 3x3 conv (relu6), a 3x3
    depthwise (relu6), then a 1x1 head reading the map."""
    same = ((0, 1), (0, 1))
    y = g.add(O.Conv2D((2, 2), same, act=(0.0, 6.0)), (x, _const(g, (oc, x.shape[1], 3, 3)), _const(g, (oc,))), "conv_s2")
    y = g.add(O.Conv2D((2, 2), same, groups=oc, act=(0.0, 6.0)), (y, _const(g, (oc, 1, 3, 3)), _const(g, (oc,))), "dw_s2")
    return g.add(O.Conv2D(), (y, _const(g, (5, oc, 1, 1)), _const(g, (5,))), "head")


ROW_PICK_CASES = {  # (input shape, conv output channels): widths of 4, 2 and 1 channels per 64-byte line
    "c3_16x16": ((1, 3, 16, 16), 8),  # Y 16 wide, the picks 8 and 4
    "c3_24x32": ((1, 3, 24, 32), 16),  # Y 32 wide, 16 channels
    "c4_16x132": ((1, 4, 16, 132), 16),  # Y 132 wide: three lines a row, the picks 66 (two) and 33
    "c16_16x68": ((1, 16, 16, 68), 8),  # 16 input channels; Y 68 wide: two lines a row
}


@pytest.mark.parametrize("name", sorted(ROW_PICK_CASES))
def test_same_stride2_on_even_sizes_is_a_kpu_pick_layer(name, monkeypatch):
    """kcc.passes.row_pick: each SAME stride-2 layer on an even size runs at stride 1 (Y, full size,
    exact at the odd centres) and a pick layer copies Y's odd rows and columns, both in KPU RAM: no
    CPU pad, slice, flip or second upload. On random weights and inputs, every layer equals the
    scalar reference of the integer pipeline, each pick layer's output is exactly Y[1::2, 1::2] of the
    codes Y left in KPU RAM, and the result agrees with the float graph as the CPU pre-pad / slice
    path does (the same weights and samples)."""
    shape, oc = ROW_PICK_CASES[name]
    state = rng.bit_generator.state
    rms = {}
    for form in ("cpu", "pick"):
        rng.bit_generator.state = state
        g = Graph()
        g.outputs = [_same_s2_block(g, g.input(0, shape), oc)]
        calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
        want = [run(g, s)[0] for s in calib]
        with monkeypatch.context() as m:
            if form == "cpu":
                m.setattr("kcc.passes.row_pick.serves", lambda *a: False)
            res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        err = np.concatenate([(program.run(s)[0].reshape(v.shape) - v).ravel() for s, v in zip(calib, want)])
        rms[form] = float(np.sqrt(np.mean(err ** 2)))
    assert rms["pick"] <= 1.05 * rms["cpu"], rms  # measured: 0.97-1.014 of the CPU path's
    assert all(p.on_kpu and "CPU" not in p.reason for p in res.placements), res.placements
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert names == ["quantize", "kpu_upload"] + ["kpu_conv2d"] * 5 + ["dequantize"], names
    assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == 5
    for sample in calib[:3]:
        maps = layer_maps(res.kmodel, sample[0])
        pools = [body.layer.pool_type.name.lower() for body, _, _ in maps]
        assert pools == ["bypass", "right_top_2_s2", "bypass", "right_top_2_s2", "bypass"], pools
        for (_, _, y), (body, x_map, out) in zip(maps[0:3:2], maps[1:4:2]):
            assert _shift_of(body) == (1, 0)
            np.testing.assert_array_equal(x_map, y)  # the pick layer reads Y where its layer left it
            np.testing.assert_array_equal(out, y[:, :, 1::2, 1::2])
            assert len(np.unique(y)) > 50


def _palm_blocks(c=8, hw=16):
    """BlazePalm-style BlazeBlocks in the canonical IR: a 5x5 stem conv (decomposed, read in float by its
    PReLU on the CPU), two blocks 5x5 depthwise -> 1x1, + y, PReLU, a stride-2 block 5x5 stride-2
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
    y = prelu(conv(x, c, 5, name="stem"), "stem_prelu")
    for i in (1, 2):
        y = prelu(g.add(O.Binary("add"), (y, conv(conv(y, c, 5, dw=True, name=f"b{i}_dw"), c)), f"b{i}_add"), f"b{i}_prelu")
    t = conv(conv(y, c, 5, stride=2, dw=True, name="b3_dw"), 2 * c)
    s = g.add(O.Pad(((0, 0), (0, c), (0, 0), (0, 0)), 0.0), (g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,)),))
    y = prelu(g.add(O.Binary("add"), (s, t), "b3_add"), "b3_prelu")
    g.outputs = [conv(y, 6, name="head")]
    return g


def test_palm_blazeblocks_stream_through_decomposed_5x5_depthwise_convs(monkeypatch):
    """BlazePalm's blocks (issue #16): the stream's PReLUs are 8-bit KPU inputs of the decomposed 5x5
    depthwise convs (no rounding-residual channels), so every add, PReLU, max-pool skip and channel pad
    stays in KPU RAM; the stem's CPU PReLU is uploaded once to start the stream. Exact in float; every
    KPU layer equals the scalar reference; faster than the CPU adds and PReLUs by the cost model, and
    as accurate."""
    state = rng.bit_generator.state
    err, ms = {}, {}
    for form in ("kpu", "cpu"):
        rng.bit_generator.state = state  # the same weights and samples both times
        g = _palm_blocks()
        calib = [[rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)] for _ in range(8)]
        if form == "cpu":  # main's behaviour: the residual channels, the adds and PReLUs on the CPU
            monkeypatch.setattr("kcc.passes.legalize_kpu.stream_to_kpu", lambda g, opts, adds=None: (g, [], [], []))
            monkeypatch.setattr("kcc.passes.decompose_kernels.streamed_prelus", lambda g, opts: {})
        res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        err[form] = max(max_steps(kpu_sim.load(res.kmodel).run(s)[0].reshape(g.outputs[0].shape), run(g, s)[0])
                        for s in calib[:4])
        ms[form] = res.latency.total_ms
        if form == "cpu":
            continue
        adds = [p for p in res.placements if p.op == "add"]
        assert [(p.node, p.on_kpu) for p in adds] == [("b1_add", True), ("b2_add", True), ("b3_add", True)], adds
        (pool,) = [p for p in res.placements if p.op == "pool2d"]
        assert pool.on_kpu and "max_2_s2" in pool.reason, pool
        dws = {d.node: d for d in res.decisions if d.node.endswith("_dw")}
        assert sorted(dws) == ["b1_dw", "b2_dw", "b3_dw"] and all(d.plan is not None for d in dws.values()), dws
        # the stem's float PReLU keeps its residual channels; the stream's 8-bit codes need none
        assert [dws[n].plan.residual for n in ("b1_dw", "b2_dw", "b3_dw")] == [True, False, False], dws
        for s in calib[:2]:  # the rewrites are exact in float
            np.testing.assert_allclose(run(res.float_graph, s)[0], run(g, s)[0], rtol=1e-4, atol=1e-4)
        names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
        cpu_math = [n.name for n in res.graph.nodes if n.op.kind in ("prelu", "binary")]
        # only the stem's: its halves, its PReLU and b1_dw's residual of it
        assert all(m.startswith(("stem", "b1_dw/residual")) for m in cpu_math), cpu_math
        assert kpu_layers_match_the_scalar_reference(res.kmodel, calib[0][0]) == names.count("kpu_conv2d")
    # measured (worst of 4 samples, output steps; estimated ms): 2.91 and 6.76 ms streamed, 3.01 and
    # 12.10 ms with the residual channels and the CPU adds and PReLUs
    assert ms["kpu"] < 0.6 * ms["cpu"] and err["kpu"] <= err["cpu"], (err, ms)
