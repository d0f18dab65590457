"""decompose_kernels: every decomposition computes the conv exactly (float) and lands on the KPU;
the pass rewrites only what legalize_kpu rejects, and picks the cheapest candidate."""

import re
from dataclasses import replace

import numpy as np
import pytest
from conv_coverage import conv_coverage, model_conv_macs
from conv_graphs import conv_graph, legalize

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import decompose_kernels as D
from kcc.passes import kernel_cost as KC
from kcc.passes import kernel_plans as P
from kcc.passes.kernel_terms import axis_terms, max_zero_taps
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext
from kcc.target.k210 import CPU_NODE_CYCLES, KPU_LAYER_BYTES, cpu_cycles

rng = np.random.default_rng(17)


def _conv_graph(*args, **kwargs):
    return conv_graph(rng, *args, **kwargs)


@pytest.mark.parametrize("k,s,q", [(k, s, q) for k in (1, 2, 3, 4, 5, 7) for s in (1, 2, 3) for q in {1, s}])
def test_axis_terms_read_every_tap_once(k, s, q):
    for z in range(max_zero_taps(k, q) + 1):
        taps = [t for term in axis_terms(k, s, 0, q, z) for t in term.taps if t >= 0]
        assert sorted(taps) == list(range(k))


SHAPES = [  # kh, kw, stride, padding, depthwise
    (5, 5, 1, ((2, 2), (2, 2)), True),  # BlazePalm / BlazeHand depthwise
    (5, 5, 2, ((1, 2), (1, 2)), True),  # their stride-2 depthwise (TF SAME on even maps)
    (5, 5, 2, ((1, 2), (1, 2)), False),  # BlazePalm stem
    (7, 7, 2, ((3, 3), (3, 3)), False),  # ResNet-style stem
    (4, 4, 1, ((0, 0), (0, 0)), False),
    (7, 7, 1, ((3, 3), (3, 3)), True),
    (1, 5, 1, ((0, 0), (2, 2)), False),  # rectangular kernels: the KPU takes neither
    (5, 3, 3, ((1, 0), (2, 1)), True),
]


@pytest.mark.parametrize("kh,kw,s,pad,dw", SHAPES)
def test_every_plan_is_exact_and_on_the_kpu(kh, kw, s, pad, dw):
    g = _conv_graph(6, 6 if dw else 5, 13, 11, kh, kw, (s, s), pad, 6 if dw else 1)
    conv = g.outputs[0]
    xi = rng.uniform(-1, 1, (1, 6, 13, 11)).astype(np.float32)
    want = run(g, [xi])[0]
    plans = P.plans(conv, residual=True)
    plans += [p for p in P.plans(conv, halves=True) if p.halves]
    plans += [p for p in P.plans(conv, halves=True, bulk=0.3) if p.halves]  # four parts, |y| <= 0.3 fine
    assert {p.combine for p in plans} >= {"sum", "stack"} and any(p.residual for p in plans)
    assert any(p.halves and not p.bulk for p in plans) and any(p.bulk for p in plans)
    for plan in plans:
        alone = KC.alone(conv, plan)
        np.testing.assert_allclose(run(alone, [xi])[0], want, rtol=1e-5, atol=1e-5, err_msg=str(plan))
        lg, placements = legalize(alone)
        assert placements and all(p.on_kpu for p in placements), (plan, placements)
        np.testing.assert_allclose(run(lg, [xi])[0], want, rtol=1e-5, atol=1e-5, err_msg=str(plan))


def test_a_depthwise_stack_in_channel_groups_is_exact():
    g = _conv_graph(7, 7, 9, 8, 5, 5, (2, 2), ((1, 2), (2, 1)), 7)
    xi = rng.uniform(-1, 1, (1, 7, 9, 8)).astype(np.float32)
    want = run(g, [xi])[0]
    D.rewrite(g, g.outputs[0], D.Form((2, 2), (1, 0), "stack", 3))
    g.remove_dead()
    assert len([n for n in g.nodes if isinstance(n.op, O.Conv2D)]) == 3  # channels 0-2, 3-5, 6
    np.testing.assert_allclose(run(g, [xi])[0], want, rtol=1e-5, atol=1e-5)
    _, placements = legalize(g)
    assert len(placements) == 3 and all(p.on_kpu for p in placements)


def test_partial_sums_are_not_clamped():
    g = _conv_graph(4, 4, 9, 9, 5, 5, (1, 1), ((2, 2), (2, 2)), 4, act=(0.0, 6.0))
    D.rewrite(g, g.outputs[0], D.Form((1, 1), (0, 0), "sum"))
    g.remove_dead()
    out = g.outputs[0]
    assert isinstance(out.op, O.Binary) and out.op.act == (0.0, 6.0) and out.name == "conv"
    inner = [n for n in g.nodes if isinstance(n.op, (O.Conv2D, O.Binary)) and n is not out]
    assert len([n for n in inner if isinstance(n.op, O.Conv2D)]) == 4
    assert all(n.op.act == O.NO_CLAMP for n in inner)
    biased = [n for n in inner if isinstance(n.op, O.Conv2D) and n.inputs[2].data.any()]
    assert len(biased) == 1  # the bias is added once


def test_pass_rewrites_only_what_the_kpu_rejects():
    g = Graph()
    x = g.input(0, (1, 8, 16, 16))
    w3 = g.constant(rng.uniform(-1, 1, (8, 8, 3, 3)).astype(np.float32), "w3")
    w5 = g.constant(rng.uniform(-1, 1, (8, 1, 5, 5)).astype(np.float32), "w5")
    b = g.constant(rng.uniform(-1, 1, 8).astype(np.float32), "b")
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (x, w3, b), "conv3")
    y = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=8), (y, w5, b), "dw5")
    g.outputs = [g.add(O.Binary("add"), (y, x), "res")]
    xi = rng.uniform(-1, 1, (1, 8, 16, 16)).astype(np.float32)
    want = run(g, [xi])[0]
    macs = model_conv_macs(g)
    ctx = CompileContext()
    g = D.decompose_kernels(g, ctx)
    g.verify("decompose_kernels")
    decisions = ctx.decisions
    assert [d.node for d in decisions] == ["dw5"] and decisions[0].cycles < decisions[0].cpu_cycles
    assert decisions[0].status is D.Status.DECOMPOSED and decisions[0].cpu_note is None
    assert g.find("conv3").op.stride == (1, 1) and g.find("dw5").note  # untouched / explained
    np.testing.assert_allclose(run(g, [xi])[0], want, rtol=1e-5, atol=1e-5)
    lg, placements = legalize(g)
    assert all(p.on_kpu for p in placements)
    cov = conv_coverage(lg, macs)
    assert cov.cpu_macs == 0 and cov.kpu_share == 1.0 and cov.kpu_macs > cov.model_macs


@pytest.mark.parametrize("c", [16, 512])
def test_accurate_takes_the_fastest_form_that_adds_no_rounding(c):
    # 512 channels read a float input: on the camera's uint8 codes the CPU conv would be a uint8 one
    # (kcc.quant.cpu_conv), faster than every form of this size
    opts = CompileOptions(input_type="float" if c == 512 else "default")
    conv = _conv_graph(c, c, 12, 12, 5, 5, (1, 1), ((2, 2), (2, 2)), c).outputs[0]
    costs, at = {}, KC.surroundings(conv, {}, set(), opts)
    for plan in P.plans(conv):
        fits, cycles = KC.on_kpu(KC.alone(conv, plan), opts, at)
        if fits:
            costs.setdefault(plan.combine in ("stack", "stack_kpu", "copies_kpu"), []).append(cycles)
    accurate = D.choose(conv, opts)
    assert min(min(v) for v in costs.values()) < accurate.cpu_cycles  # some form beats the CPU conv
    assert (True in costs) == (c == 16)  # 512 channels: no grouping within the weight budget and 48 layers
    if c == 16:
        # the views made by KPU layers in KPU RAM (stack_kpu): no CPU pad, slices or stacked upload
        assert accurate.plan.combine == "stack_kpu" and accurate.cycles == min(costs[True])
        assert accurate.status is D.Status.DECOMPOSED
    else:  # only sums: each rounds its partial sums, which the float conv does not
        assert accurate.plan is None and accurate.status is D.Status.KEPT
        assert accurate.reason.startswith("every KPU form rounds more than the CPU conv (fastest: ")
    off = D.choose(conv, replace(opts, decompose="off"))
    assert off.plan is None and off.reason == "--decompose off" and off.status is D.Status.KEPT
    fast = D.choose(conv, replace(opts, decompose="fast"))  # the fastest form, however it rounds
    assert fast.status is D.Status.DECOMPOSED and fast.cycles == min(min(v) for v in costs.values())
    assert fast.cycles <= accurate.cycles if accurate.plan else fast.cycles < accurate.cpu_cycles


def test_the_placement_of_a_kept_conv_says_why_it_was_not_decomposed():
    """legalize_kpu reads the decision decompose_kernels left in the context: a conv kept on the CPU
    says why in its placement, after legalize's own reason."""
    g = _conv_graph(512, 512, 12, 12, 5, 5, (1, 1), ((2, 2), (2, 2)), 512)
    ctx = CompileContext(kpu_form_budget=0)  # no model allowance: no `fan_kpu` (it would take 0.7 MiB)
    legalize_kpu(D.decompose_kernels(g, ctx), ctx)
    (d,), (p,) = ctx.decisions, ctx.placements
    assert d.status is D.Status.KEPT and not p.on_kpu
    assert d.cpu_note == f"not decomposed: {d.reason}"
    assert p.reason == f"5x5 kernel (KPU: 1x1, 3x3); not decomposed: {d.reason}"


def test_a_float_input_of_the_cpu_gets_the_residual_stack():
    """A depthwise reading a PReLU (float, on the CPU) stacks the input's rounding residual; one reading
    the graph input (the pixels' grid) or a conv (8-bit from the KPU) does not, nor with residual=False.
    Its output is read by a 1x1 KPU layer, as BlazePalm's are."""
    def decide(source, residual=True, c=16, hw=12):
        g = Graph()
        x = g.input(0, (1, c, hw, hw))
        if source == "prelu":
            x = g.add(O.PRelu(), (x, g.constant(np.full((1, c, 1, 1), 0.2, np.float32))))
        elif source == "conv":
            x = g.add(O.Conv2D(act=(0.0, 6.0)), (x, g.constant(np.ones((c, c, 1, 1), np.float32)),
                                                g.constant(np.zeros(c, np.float32))))
        w = g.constant(rng.uniform(-1, 1, (c, 1, 5, 5)).astype(np.float32))
        y = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=c), (x, w, g.constant(np.zeros(c, np.float32))))
        g.outputs = [g.add(O.Conv2D(), (y, g.constant(np.ones((c, c, 1, 1), np.float32)),
                                        g.constant(np.zeros(c, np.float32))))]
        at = KC.surroundings(y, g.users(), {id(o) for o in g.outputs})
        assert at.kpu_readers and at.float_input == (source == "prelu")
        return D.choose(y, CompileOptions(), residual=residual, at=at).plan
    assert decide("prelu").residual and decide("prelu").combine == "stack_kpu"
    assert "residual" in decide("prelu").describe()
    assert not decide("input").residual and not decide("conv").residual
    assert not decide("prelu", residual=False).residual
    # BlazePalm's 256-channel 5x5s on 12x12 maps: the residual stack (37 layers of 7 channels) is
    # estimated a little faster than the CPU conv now that its channel groups are views of x in main
    # memory (kcc.emit.storage; in BlazePalm its ~200 KB of kmodel then go back for device RAM,
    # kcc.pipeline). Read from an 8-bit KPU output, without the residual: the plain stack, which beats
    # the uint8 CPU conv (kcc.quant.cpu_conv) too.
    big = decide("prelu", c=256)
    assert big.combine == "stack" and big.residual and big.group == 7
    big = decide("conv", c=256)
    assert big.combine == "stack" and not big.residual
    # BlazePalm's first 5x5s: the residual stack_kpu of all 32 channels (576 input channels of 96x96)
    # does not fit KPU RAM, nor in groups of 11; in groups of 6 it does
    big = decide("prelu", c=32, hw=96)
    assert big.combine == "stack_kpu" and big.residual and big.group == 6


def test_depthwise_stacks_only_within_the_weight_budget():
    def plans(c):
        conv = _conv_graph(c, c, 8, 8, 5, 5, (1, 1), ((2, 2), (2, 2)), c).outputs[0]
        return [(p.combine, p.group) for p in P.plans(conv) if p.z == (0, 0)
                and p.combine not in ("stack_kpu", "copies_kpu")]

    def kpu_views(c, combine="stack_kpu", cap=P.STACK_KPU_BYTES):  # stack_kpu: nine shifted copies,
        # 81 * g * C weight bytes in groups of g; copies_kpu: 25 copies, 25 * g * C
        conv = _conv_graph(c, c, 8, 8, 5, 5, (1, 1), ((2, 2), (2, 2)), c).outputs[0]
        return [p.group for p in P.plans(conv, cap=cap) if p.combine == combine]
    # at width 8 four channels share a 64-byte line: groups of a multiple of 4 let the copies concatenate
    # in place; every group is 10 KPU layers of KPU_LAYER_BYTES besides the weights, within STACK_KPU_BYTES
    assert kpu_views(32) == [0, 16, 8, 4, 2] and kpu_views(64) == [20, 12, 11, 8, 6, 4, 3]
    assert kpu_views(384) == [] and kpu_views(8) == [0, 4, 2, 1]
    # copies_kpu: 26 KPU layers a group, 25 * g * C bytes of 1x1 combine weights and 9 a copied channel,
    # in groups of at most COPIES_KPU_MAX_GROUP channels: 32 in groups of 8 take 62 KiB, 64 take 124 KiB,
    # 96 need 186 KiB even in groups of 8, beyond STACK_KPU_BYTES: only with a model's allowance
    assert P.COPIES_KPU_MAX_GROUP == 8
    assert kpu_views(32, "copies_kpu") == [8, 4] and kpu_views(64, "copies_kpu") == [8]
    assert P.stack_kpu_bytes(32, 25, 8, 1) == 4 * 26 * KPU_LAYER_BYTES + 25 * 8 * 32 + 9 * 25 * 32 <= P.STACK_KPU_BYTES
    assert kpu_views(64, "copies_kpu", 1 << 20) == [8, 4, 2]
    assert P.stack_kpu_bytes(64, 25, 4, 1) > P.STACK_KPU_BYTES and P.stack_kpu_bytes(96, 25, 8, 1) > P.STACK_KPU_BYTES
    assert plans(32) == [("sum", 0), ("stack", 0), ("stack", 16), ("stack", 8), ("stack", 4), ("stack", 2),
                         ("stack", 1), ("stack_dw", 0)]  # one layer first, then 2, 4, ... as many
    assert plans(64)[:3] == [("sum", 0), ("stack", 22), ("stack", 11)]  # 147 KiB in one layer: three of 49 KiB
    assert plans(384)[:2] == [("sum", 0), ("stack", 9)]  # 64 KiB would take 96 layers: 43 of 122 KiB
    assert plans(672) == [("sum", 0)]  # 135 layers of 5 channels even in 128 KiB


def test_a_256_row_stride2_stem_needs_no_decomposition():
    """TFLite SAME, 3x3 stride 2 on 256x256: at stride 1 with a pick layer (kcc.passes.row_pick) the KPU
    input is the map itself, 256 rows: on the KPU as it is."""
    g = _conv_graph(3, 8, 256, 256, 3, 3, (2, 2), ((0, 1), (0, 1)), act=O.NO_CLAMP)
    _, placements = legalize(g)
    assert placements[0].on_kpu and "pick layer" in placements[0].reason
    ctx = CompileContext()
    before = list(g.nodes)
    assert D.decompose_kernels(g, ctx).nodes == before and ctx.decisions == []  # nothing to decide


def test_oversized_stride2_stem_goes_polyphase():
    """A 3x3 stride-2 conv of a 288x60 map is over the KPU's 256 rows, and too narrow for row bands
    (kcc.passes.row_pick: its output, 30 wide, shares lines between channels): its phases are 144x30.
    At 288x288 the row bands serve it whole and nothing is decomposed."""
    wide = _conv_graph(3, 8, 288, 288, 3, 3, (2, 2), ((0, 1), (0, 1)), act=O.NO_CLAMP)
    _, placements = legalize(wide)
    assert placements[0].on_kpu and "in 2 row bands of 144 rows" in placements[0].reason
    ctx = CompileContext()
    assert D.decompose_kernels(wide, ctx) is not None and all(d.plan is None for d in ctx.decisions)
    g = _conv_graph(3, 8, 288, 60, 3, 3, (2, 2), ((0, 1), (0, 1)), act=O.NO_CLAMP)
    _, placements = legalize(g)
    assert not placements[0].on_kpu
    xi = rng.uniform(-1, 1, (1, 3, 288, 60)).astype(np.float32)
    want = run(g, [xi])[0]
    ctx = CompileContext()
    g = D.decompose_kernels(g, ctx)
    assert ctx.decisions[0].plan.split == (2, 2)
    lg, placements = legalize(g)
    assert all(p.on_kpu for p in placements)
    np.testing.assert_allclose(run(lg, [xi])[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("why", ["weights range", "dilation", "target cpu", "groups"])
def test_what_no_decomposition_fixes_is_left_alone(why):
    opts = CompileOptions(target="cpu") if why == "target cpu" else CompileOptions()
    if why == "weights range":
        g = _conv_graph(4, 4, 8, 8, 3, 3, (1, 1), ((1, 1), (1, 1)), wscale=100.0)
    elif why == "dilation":
        g = _conv_graph(4, 4, 12, 12, 5, 5, (2, 2), ((4, 4), (4, 4)))
        g.outputs[0].op = O.Conv2D((2, 2), ((4, 4), (4, 4)), (2, 2))
        g.retype(g.outputs[0])
    elif why == "groups":
        g = _conv_graph(8, 8, 8, 8, 5, 5, (1, 1), ((2, 2), (2, 2)), groups=2)
    else:
        g = _conv_graph(4, 4, 8, 8, 5, 5, (1, 1), ((2, 2), (2, 2)))
    before = list(g.nodes)
    ctx = CompileContext(opts)
    assert D.decompose_kernels(g, ctx).nodes == before and all(d.plan is None for d in ctx.decisions)
    decisions = ctx.decisions
    reason = {"weights range": "no decomposition lands", "dilation": "dilation (2, 2)", "groups": "groups 2"}.get(why)
    assert [d.reason for d in decisions if reason in d.reason] == [d.reason for d in decisions] and \
        len(decisions) == (why != "target cpu")
    status = D.Status.NO_FORM if why == "weights range" else D.Status.KEPT
    assert all(d.status is status for d in decisions)


def test_coverage_counts_model_cpu_and_kpu_macs():
    g = _conv_graph(4, 6, 10, 10, 5, 5, (1, 1), ((2, 2), (2, 2)))
    macs = model_conv_macs(g)
    assert macs == 6 * 10 * 10 * 4 * 25
    lg, _ = legalize(g)
    cov = conv_coverage(lg, macs)
    assert (cov.cpu_macs, cov.kpu_macs, cov.kpu_share, cov.cpu_convs) == (macs, 0, 0.0, ("conv",))
    lg, _ = legalize(D.decompose_kernels(g))
    cov = conv_coverage(lg, macs)
    assert cov.cpu_macs == 0 and cov.kpu_share == 1.0 and cov.kpu_overhead >= 36 / 25


def test_fully_connected_on_the_kpu_is_not_a_convolution():
    g = Graph()
    a = g.input(0, (1, 64))
    w = g.constant(rng.uniform(-1, 1, (64, 32)).astype(np.float32), "w")
    b = g.constant(rng.uniform(-1, 1, 32).astype(np.float32), "b")
    g.outputs = [g.add(O.MatMul(), (a, w, b), "fc")]
    lg, placements = legalize(g, CompileOptions(output_quantize_threshold=16))
    assert placements[0].on_kpu and any(isinstance(n.op, KO.FloatKpuConv) for n in lg.nodes)
    assert conv_coverage(lg, 0).kpu_macs == 0


def test_estimate_prefers_the_kpu_for_a_large_stem():
    g = _conv_graph(3, 32, 64, 64, 5, 5, (2, 2), ((1, 2), (1, 2)), act=O.NO_CLAMP)
    d = D.choose(g.outputs[0])
    # the polyphase stack, its phases picked by KPU layers (phases_kpu): stride 1 on quarter-size maps
    assert d.plan is not None and d.plan.combine == "phases_kpu" and d.cycles * 5 < d.cpu_cycles
    # faster than every polyphase stack whose phases the CPU pads, slices and uploads
    stacks = [KC.on_kpu(KC.alone(g.outputs[0], p), CompileOptions()) for p in P.plans(g.outputs[0])
              if p.combine == "stack" and p.split == (2, 2)]
    assert stacks and all(fits and cycles > d.cycles for fits, cycles in stacks)


def test_a_stem_read_in_float_computes_its_output_in_halves():
    """A stack without a clamp whose every reader is a float op of the CPU (BlazePalm's stem and its
    PReLU) is computed twice, clamped to y <= 0 and y >= 0; one read by a conv, or clamped, is not."""
    def plan(reader, act=O.NO_CLAMP):
        g = Graph()
        x = g.input(0, (1, 3, 32, 32))
        y = g.add(O.Conv2D((2, 2), ((1, 2), (1, 2)), act=act), (x, g.constant(rng.uniform(-1, 1, (8, 3, 5, 5)).astype(np.float32)),
                                                               g.constant(np.zeros(8, np.float32))), "stem")
        if reader == "prelu":
            g.outputs = [g.add(O.PRelu(), (y, g.constant(np.full((1, 8, 1, 1), 0.2, np.float32))))]
        else:
            g.outputs = [g.add(O.Conv2D(), (y, g.constant(np.ones((4, 8, 1, 1), np.float32)), g.constant(np.zeros(4, np.float32))))]
        ctx = CompileContext()
        D.decompose_kernels(g, ctx)
        return ctx.decisions[0].plan
    halves = plan("prelu")
    assert halves.combine == "phases_kpu" and halves.halves and "two halves" in halves.describe()
    assert not plan("conv").halves and not plan("prelu", act=(0.0, 6.0)).halves


def test_the_bulk_threshold_puts_most_values_on_the_fine_grids():
    """Four parts pay off when y's values crowd near 0 and its range is set by a few outliers."""
    y = np.concatenate([rng.standard_normal(100_000), [-7.0, 7.0]])
    t = D.bulk_threshold(y)
    assert 1.0 < t < 4.0  # well inside [-7, 7], and beyond most of the N(0, 1) bulk
    signs = rng.choice([-1.0, 1.0], 100_000)
    assert D.bulk_threshold(signs) == 0.0  # two values: two halves hold both exactly


def test_bulk_thresholds_measure_each_float_read_conv():
    g = Graph()
    x = g.input(0, (1, 3, 16, 16))
    y = g.add(O.Conv2D((2, 2), ((1, 2), (1, 2))), (x, g.constant(rng.uniform(-1, 1, (8, 3, 5, 5)).astype(np.float32)),
                                                     g.constant(np.zeros(8, np.float32))), "stem")
    g.outputs = [g.add(O.PRelu(), (y, g.constant(np.full((1, 8, 1, 1), 0.2, np.float32))))]
    samples = [[rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)] for _ in range(3)]
    assert D.float_read_convs(g) == [y]
    bulk = D.bulk_thresholds(g, samples)
    values = []
    for sample in samples:
        run(g, sample, lambda n, v: values.append(v.ravel()) if n is y else None)
    assert bulk == {"stem": D.bulk_threshold(np.concatenate(values))} and bulk["stem"] > 0
    ctx = CompileContext(samples=samples)  # decompose_kernels measures the threshold itself
    D.decompose_kernels(g, ctx)
    decisions = ctx.decisions
    assert decisions[0].plan.bulk == bulk["stem"] and "four parts" in decisions[0].plan.describe()
    # each part is added as soon as it is computed (the kmodel keeps the graph order, and a part
    # computed early would keep its 8-bit map alive until its add): conv, conv, add, conv, add...
    kinds = [type(n.op) for n in g.nodes if isinstance(n.op, (O.Conv2D, O.Binary))]
    assert kinds == [O.Conv2D, O.Conv2D, O.Binary, O.Conv2D, O.Binary, O.Conv2D, O.Binary]
    stem = values[0].reshape(1, 8, 8, 8)  # the conv's output on samples[0], then its PReLU
    assert np.allclose(run(g, samples[0])[0], np.where(stem > 0, 1.0, 0.2) * stem, atol=1e-5)


def test_a_conv_whose_exact_forms_are_slower_says_so():
    """BlazePalm's 256-channel 5x5s on 12x12 maps: a stack with the input's residual rounds no more
    than the CPU conv but its views cost the CPU more than the conv; the reason names both forms."""
    g = Graph()
    x = g.input(0, (1, 96, 6, 6))
    p = g.add(O.PRelu(), (x, g.constant(np.full((1, 96, 1, 1), 0.2, np.float32))), "prelu")
    y = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), (1, 1), 96), (p, g.constant(rng.uniform(-1, 1, (96, 1, 5, 5)).astype(np.float32)),
                                                           g.constant(np.zeros(96, np.float32))), "dw5")
    g.outputs = [y]
    d = D.choose(y)
    assert d.plan is None and d.reason.startswith("the KPU forms that round no more than the CPU conv are estimated slower")
    slow = float(re.search(r"residual \(x16\): ~([\d.]+) ms", d.reason).group(1))
    fast, cpu = (float(v) for v in re.search(r"~([\d.]+) ms vs ~([\d.]+) ms on the CPU", d.reason).groups())
    assert fast < cpu <= slow and d.status is D.Status.KEPT
    taken = D.choose(y, CompileOptions(decompose="fast"))  # --decompose fast takes the faster one
    assert taken.status is D.Status.DECOMPOSED and abs(taken.cycles / 400e3 - fast) < 0.1


def test_the_estimate_counts_what_the_surroundings_add():
    """estimate_cycles counts the kmodel nodes of a conv in its model (kcc.latency's work per node):
    a float input is quantized once before its views; a KPU layer's output that a KPU layer reads
    stays in KPU RAM, one a float op reads is copied out and dequantized; the float CPU conv's output
    is quantized and uploaded for a KPU reader, and on a uint8 input the CPU conv is a uint8 one."""
    conv = _conv_graph(8, 8, 16, 16, 5, 5, (2, 2), ((1, 2), (1, 2)), 8).outputs[0]  # TFLite SAME
    plan = D.choose(conv).plan
    lg = legalize(KC.alone(conv, plan))[0]
    y, elems = conv.type.size, conv.inputs[0].type.size
    cost = {w: KC.estimate_cycles(lg, w) for w in (KC.Where(f, k) for f in (False, True) for k in (False, True))}
    quantize, dequantize = CPU_NODE_CYCLES + cpu_cycles("quantize") * elems, CPU_NODE_CYCLES + cpu_cycles("dequantize") * y
    copy_out = cpu_cycles("kpu_download_byte") * y
    assert plan.combine == "phases_kpu" and isinstance(lg.outputs[0].op, KO.FloatKpuConv)
    assert cost[KC.Where(True, True)] - cost[KC.Where(False, True)] == pytest.approx(quantize)
    assert cost[KC.Where(False, False)] - cost[KC.Where(False, True)] == pytest.approx(copy_out + dequantize)
    cpu = legalize(KC.alone(conv, None))[0]
    alone = KC.estimate_cycles(cpu, KC.Where(True, False))
    upload = CPU_NODE_CYCLES + cpu_cycles("kpu_upload_byte") * y  # width 8: no DMA
    assert KC.estimate_cycles(cpu, KC.Where(True, True)) - alone == pytest.approx(upload + CPU_NODE_CYCLES
                                                                                + cpu_cycles("quantize") * y)
    # on a uint8 input the CPU conv is uint8 convs, one a channel run (kcc.quant.cpu_conv): codes in,
    # codes out, dequantized for a float reader, uploaded as they are for a KPU one
    macs = y * 25
    runs = len(KC.channel_runs(conv.inputs[1].data))
    codes = runs * CPU_NODE_CYCLES + cpu_cycles("quantized_conv2d_mac") * macs
    assert alone == pytest.approx(CPU_NODE_CYCLES + cpu_cycles("conv2d_mac") * macs)
    assert KC.estimate_cycles(cpu, KC.Where(False, False)) == pytest.approx(codes + dequantize)
    assert KC.estimate_cycles(cpu, KC.Where(False, True)) == pytest.approx(codes + upload)


@pytest.mark.parametrize("group,in_place", [(4, True), (6, False)])
def test_the_estimate_counts_no_slice_or_upload_for_groups_of_a_kpu_layers_output(group, in_place):
    """A depthwise `stack_kpu` in channel groups of a KPU layer's output (`kpu_input`): a group starting
    on a 64-byte line of KPU RAM (width 14: every 4th channel) is read in place (KpuChannelView), so
    the estimate drops its CPU slice and its upload, keeping one upload of x (what a form reading x
    whole is charged); a group starting inside a line is still sliced and uploaded."""
    conv = _conv_graph(12, 12, 12, 14, 5, 5, (1, 1), ((2, 2), (2, 2)), 12).outputs[0]
    plan = D.Form((1, 1), (0, 0), "stack_kpu", group)
    lg = legalize(KC.alone(conv, plan))[0]
    kpu_in, cpu_in = (KC.estimate_cycles(lg, KC.Where(False, True, k)) for k in (True, False))
    elems = group * 12 * 14

    def upload(n):
        return CPU_NODE_CYCLES + cpu_cycles("kpu_upload_byte") * n
    groups = 12 // group
    # a group sliced on the CPU is a view of x's copy in main memory (kcc.emit.storage): no slice node
    saved = groups * upload(elems) - upload(12 * 12 * 14)
    if in_place:
        assert cpu_in - kpu_in == pytest.approx(saved)
    else:  # channel 6 shares its line with 4 and 5: only the group at channel 0 is read in place
        assert cpu_in - kpu_in == pytest.approx(upload(elems) - upload(12 * 12 * 14))


def test_surroundings_of_a_conv():
    """Where a conv sits: a float input (a PReLU; the model input of a float build) or uint8 codes
    (the uint8 model input, a KPU layer's output); readers that are all KPU layers or not."""
    g = Graph()
    x = g.input(0, (1, 8, 16, 16))
    p = g.add(O.PRelu(), (x, g.constant(np.full((1, 8, 1, 1), 0.2, np.float32))), "prelu")
    w5 = g.constant(rng.uniform(-1, 1, (8, 1, 5, 5)).astype(np.float32))
    w1, b = g.constant(np.ones((8, 8, 1, 1), np.float32)), g.constant(np.zeros(8, np.float32))
    a = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=8), (x, w5, b), "on_input")
    k = g.add(O.Conv2D(), (a, w1, b), "kpu")
    c = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=8), (k, w5, b), "on_kpu")
    d = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=8), (p, w5, b), "on_prelu")
    g.outputs = [c, g.add(O.Binary("add"), (d, x), "res")]
    users, outs = g.users(), {id(o) for o in g.outputs}
    assert KC.surroundings(a, users, outs) == KC.Where(False, True)
    assert KC.surroundings(a, users, outs, CompileOptions(input_type="float")) == KC.Where(True, True)
    assert KC.surroundings(c, users, outs) == KC.Where(False, False, True)  # the model's output, a KPU input
    assert KC.surroundings(d, users, outs) == KC.Where(True, False)  # read by a float add
