"""kcc.passes.part_groups (and kcc.passes.parts_stack after it) on a stand-in for BlazePalm's stem: a 5x5 stride-2 conv (3 -> 32 channels at
96x96, decomposed into KPU parts whose float sum the CPU makes, kernel_forms' halves), its PReLU,
then a 1x1 KPU conv reading it and a mean on the CPU reading it in float. In output-channel groups, one group's
float temporaries are alive at a time beside the PReLU's output, which the groups write in place:
less working memory, the same values up to each group's own calibration."""

import re

import numpy as np
import pytest
from kpu_checks import kpu_layers_match_the_scalar_reference, max_steps

import kpu_sim
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.options import CompileOptions
from kcc.passes import part_groups, parts_stack
from kcc.pipeline import compile_graph


def _stem_prelu(g: Graph, rng) -> Node:
    """The stem's 5x5 stride-2 conv (3 -> 32 channels at 96x96) and its PReLU."""
    x = g.input(0, (1, 3, 96, 96))
    w = g.constant(rng.uniform(-0.3, 0.3, (32, 3, 5, 5)).astype(np.float32), "w")
    y = g.add(O.Conv2D((2, 2), ((1, 2), (1, 2))), (x, w, g.constant(rng.uniform(-0.1, 0.1, 32).astype(np.float32), "b")),
              "stem")
    return g.add(O.PRelu(), (y, g.constant(rng.uniform(-0.3, 0.3, (1, 32, 1, 1)).astype(np.float32), "alpha")), "prelu")


def _stem() -> tuple[Graph, list]:
    rng = np.random.default_rng(3)
    g = Graph()
    p = _stem_prelu(g, rng)
    z = g.add(O.Conv2D(), (p, g.constant(rng.uniform(-0.3, 0.3, (32, 32, 1, 1)).astype(np.float32), "w2"),
                           g.constant(np.zeros(32, np.float32), "b2")), "pw")
    g.outputs = [z, g.add(O.Pool2D("mean", (48, 48), (48, 48)), (p,), "mean")]
    return g, [[rng.uniform(-1, 1, (1, 3, 96, 96)).astype(np.float32)] for _ in range(2)]


def test_a_float_sum_of_parts_and_its_prelu_run_in_output_channel_groups(monkeypatch):
    results, steps = {}, {}
    for form in ("whole", "groups"):
        with monkeypatch.context() as m:
            if form == "whole":
                m.setattr(part_groups, "GROUP_BYTES", 1 << 30)
            g, calib = _stem()
            res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program, errs, worst = kpu_sim.load(res.kmodel), [], 0.0
        for c in calib:  # the 1x1 conv's output, in steps of its range
            want = run(g, c)[0]
            got = program.run(c)[0].reshape(want.shape)
            worst = max(worst, max_steps(got, want))
            errs.append((got - want) / ((want.max() - min(want.min(), 0)) / 255))
        steps[form] = (worst, float(np.sqrt(np.mean(np.square(errs)))))
        results[form] = res
    res = results["groups"]
    names = res.emitted.node_names
    # groups of 17 channels (156672 B of float map) and 15, each its four parts, their sum and PReLU
    assert [f"prelu/o{o}" in names for o in (0, 17)] == [True] * 2 and "prelu/o34" not in names
    assert sum(re.fullmatch(r"stem/stacked_conv/\w+/o\d+", n) is not None for n in names) == 2 * 4
    mem = {form: r.emitted.memory.main.plan.peak for form, r in results.items()}
    # measured: 663552 -> 608256 B (BlazePalm's 96x96 stem itself: 2654208 -> 1511424 B of working memory)
    assert mem["groups"] < mem["whole"], mem
    assert kpu_layers_match_the_scalar_reference(res.kmodel, _stem()[1][0][0]) == names_count(res)
    # measured: rms 0.443 -> 0.442 steps (max 1.77 -> 1.83): each group's parts on its own channels' ranges
    assert steps["groups"][1] <= 1.05 * steps["whole"][1], steps


def names_count(res) -> int:
    return sum(n.opcode.kmodel_name == "kpu_conv2d" for n in res.emitted.model.nodes)


def _stem_and_5x5() -> tuple[Graph, list]:
    """The stem, its PReLU read by a 5x5 depthwise (decomposed in channel groups, reading the float
    PReLU with its rounding residual) and by a residual add after it, as BlazePalm's first block."""
    rng = np.random.default_rng(4)
    g = Graph()
    p = _stem_prelu(g, rng)
    d = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=32),
              (p, g.constant(rng.uniform(-0.2, 0.2, (32, 1, 5, 5)).astype(np.float32), "wd"),
               g.constant(np.zeros(32, np.float32), "bd")), "dw5x5")
    z = g.add(O.Conv2D(), (d, g.constant(rng.uniform(-0.3, 0.3, (32, 32, 1, 1)).astype(np.float32), "w2"),
                           g.constant(np.zeros(32, np.float32), "b2")), "pw")
    a = g.add(O.Binary("add"), (p, z), "add")
    q = g.add(O.PRelu(), (a, g.constant(rng.uniform(-0.3, 0.3, (1, 32, 1, 1)).astype(np.float32), "alpha1")), "prelu1")
    g.outputs = [g.add(O.Conv2D(), (q, g.constant(rng.uniform(-0.3, 0.3, (8, 32, 1, 1)).astype(np.float32), "w3"),
                                    g.constant(np.zeros(8, np.float32), "b3")), "head")]
    return g, [[rng.uniform(-1, 1, (1, 3, 96, 96)).astype(np.float32)] for _ in range(2)]


def _compiled_stem_and_5x5(monkeypatch, forms: dict) -> tuple[dict, dict]:
    """`_stem_and_5x5` compiled once per form (name -> what to patch for it, as (module, attribute,
    value) triples); each form's CompileResult and its output's rms error in output steps."""
    results, rms = {}, {}
    for form, patches in forms.items():
        with monkeypatch.context() as m:
            for module, attr, value in patches:
                m.setattr(module, attr, value)
            g, calib = _stem_and_5x5()
            res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program, errs = kpu_sim.load(res.kmodel), []
        for c in calib:
            want = run(g, c)[0]
            got = program.run(c)[0].reshape(want.shape)
            errs.append((got - want) / ((want.max() - want.min()) / 255))
        rms[form] = float(np.sqrt(np.mean(np.square(errs))))
        results[form] = res
    return results, rms


def test_groups_read_in_channel_slices_run_with_their_readers(monkeypatch):
    """When a decomposed depthwise reads the PReLU in channel slices, the groups are those slices and
    each slice's readers (its copies, the rounding residual, its stacked layer) run right after its
    group: no step holds the whole float PReLU. The values: each group calibrated on its channels."""
    cpu = (parts_stack, "_match", lambda *a: None)  # the groups as the CPU makes them
    results, rms = _compiled_stem_and_5x5(monkeypatch, {
        "regular": [cpu, (part_groups, "_slice_cuts", lambda r, users: None)], "slices": [cpu]})
    names = results["slices"].emitted.node_names
    (dw,) = [d for d in results["slices"].decisions if d.node == "dw5x5"]
    assert dw.plan is not None and dw.plan.residual, dw
    groups = [i for i, n in enumerate(names) if re.fullmatch(r"prelu/o\d+", n)]  # the 5x5's groups of 16
    assert [names[i] for i in groups] == ["prelu/o0", "prelu/o16"], [names[i] for i in groups]
    stacked = [i for i, n in enumerate(names) if n.startswith("dw5x5/") and "stacked_conv" in n]
    assert groups[0] < stacked[0] < groups[1] < stacked[-1], (groups, stacked)
    mem = {form: r.emitted.memory.main.plan.peak for form, r in results.items()}
    assert mem["slices"] < mem["regular"], mem  # measured: 608256 -> 368640 B
    assert rms["slices"] <= 1.05 * rms["regular"], rms  # measured: 0.5475 -> 0.5477 steps


def test_a_prelu_of_parts_on_both_sides_of_zero_is_alpha_times_the_low_ones_plus_the_high_ones(monkeypatch):
    """kernel_forms' halves: parts clamped to y <= 0 and to y >= 0, at most one side non-zero at a
    pixel, so PReLU(sum) = alpha * (low parts) + (high parts): the same values with one per-channel
    product (a 1x1 depthwise conv on the CPU) instead of the PReLU's two and its add."""
    rng = np.random.default_rng(7)
    g = Graph()
    x = g.input(0, (1, 3, 64, 64))
    w = g.constant(rng.uniform(-0.5, 0.5, (12, 3, 3, 3)).astype(np.float32), "w")
    parts = [g.add(O.Conv2D(padding=((1, 1), (1, 1)), act=act), (x, w, g.constant(b.astype(np.float32), f"b{i}")), f"part{i}")
             for i, (act, b) in enumerate([((-np.inf, 0.0), np.full(12, 0.3)), ((-0.3, 0.0), np.zeros(12)),
                                           ((0.0, 0.3), np.zeros(12)), ((0.0, np.inf), np.full(12, -0.3))])]
    y = g.add(O.Binary("add"), (g.add(O.Binary("add"), (g.add(O.Binary("add"), parts[:2]), parts[2])), parts[3]), "y")
    alpha = rng.uniform(-1.5, 1.5, (1, 12, 1, 1)).astype(np.float32)
    g.outputs = [g.add(O.PRelu(), (y, g.constant(alpha, "alpha")), "prelu")]
    monkeypatch.setattr(part_groups, "GROUP_BYTES", 4 * 64 * 64 * 4)  # groups of 4 channels
    out = part_groups.part_groups(g)
    kinds = [n.op.kind for n in out.nodes]
    assert kinds.count("prelu") == 0 and kinds.count("binary") == 3 * 4, kinds  # 3 groups: 3 adds and 1 mul each
    v = rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(run(out, [v])[0], run(g, [v])[0], rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # ~150 s: the scalar reference over 48 layers at 96x96 (tests/passes/test_parts_stack.py: the IR)
def test_a_residual_stack_reading_a_sum_of_parts_reads_the_parts_in_kpu_ram(monkeypatch):
    """kcc.passes.parts_stack: the 5x5's channel groups read the stem's four parts where the KPU made
    them (each part's nine copies by one fan layer, the stack's weights times alpha or 1) and the add
    reads them recombined by one 1x1 layer: no CPU op before the head, every KPU layer as the scalar
    reference computes it, the head's output as close to the float model as with the CPU's sums."""
    results, rms = _compiled_stem_and_5x5(monkeypatch, {
        "cpu sums": [(parts_stack, "_match", lambda *a: None)], "parts": []})
    res = results["parts"]
    kinds = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    head = res.emitted.node_names.index("head")
    first = kinds.index("kpu_conv2d")  # after the float input's quantize and upload
    assert set(kinds[first:head]) == {"kpu_conv2d"}, kinds[:head]  # then the KPU alone
    before = [n.opcode.kmodel_name for n in results["cpu sums"].emitted.model.nodes]
    assert {"dequantize", "binary", "quantize"} <= set(before)  # the CPU's sums, products and residuals
    assert res.latency.total_ms < 0.5 * results["cpu sums"].latency.total_ms, (res.latency.total_ms,
                                                                                results["cpu sums"].latency.total_ms)
    assert kpu_layers_match_the_scalar_reference(res.kmodel, _stem_and_5x5()[1][0][0]) == kinds.count("kpu_conv2d")
    assert rms["parts"] <= 1.25 * rms["cpu sums"], rms
