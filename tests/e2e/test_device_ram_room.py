"""The device RAM decomposed convs may take (kcc.passes.kernel_budget, kcc.pipeline's retry): the model
allowance of a first try, the room a model over its budget is compiled again with, and the forms that
read a float input of the CPU as 8-bit codes within CODES_COSINE_BUDGET (bars: measured + 5 %)."""

import numpy as np
import pytest
from kpu_checks import RNG, dw5x5_then_1x1, max_steps

import kpu_sim
from kcc import kmodel as km
from kcc import pipeline
from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import decompose_kernels, kernel_budget, kernel_forms, kernel_plans
from kcc.passes.kernel_budget import CodesCosts, climb, codes_group
from kcc.passes.kernel_forms import KPU_MADE, Form
from kcc.pipeline import compile_graph
from kcc.quant import policy
from kcc.target import quant_rules

rng = RNG


def _two_dw5_blocks_compiler(monkeypatch, source="conv", channels=32, spread=1.0):
    """compile(budget, log) -> (result, device RAM) of the same two 5x5 depthwise blocks (same
    weights and samples every time; compile.build() makes the graph and samples again), each conv's
    own cap too small for a stack made in KPU RAM: only decompose_kernels' model allowance buys one.
    `source` "prelu": each 5x5 reads a PReLU, a float of the CPU; "quotient": a quotient of two 1x1
    convs, a float of the CPU whose channels' ranges span a factor `spread` (as a residual stream's)."""
    monkeypatch.setattr(kernel_plans, "STACK_KPU_BYTES", 16 * 1024)  # 32 channels' stack_kpu needs more
    state = rng.bit_generator.state

    def build():
        rng.bit_generator.state = state
        g = Graph()
        x = g.input(0, (1, channels if source == "prelu" else 4, 12, 12))
        for _ in range(2):
            if source == "prelu" and x.shape[1] != channels:
                x = g.add(O.Conv2D(), (x, _const(g, (channels, x.shape[1], 1, 1)), _const(g, (channels,))))
            if source == "quotient":  # a float of the CPU whose channels' ranges span a factor `spread`
                gain = np.geomspace(1.0, 1.0 / spread, channels).astype(np.float32)[:, None, None, None]
                a = g.add(O.Conv2D(), (x, g.constant(_const(g, (channels, x.shape[1], 1, 1)).op.data * gain),
                                       _const(g, (channels,))))
                b = g.add(O.Conv2D(), (x, g.constant(_const(g, (channels, x.shape[1], 1, 1)).op.data * 0.1),
                                       g.constant(np.full(channels, 3.0, np.float32))))
                x = g.add(O.Binary("div"), (a, b))  # no uint8 op of the CPU divides: it stays float
            x = dw5x5_then_1x1(g, x, channels, source if source != "quotient" else None)
        g.outputs = [x]
        return g, [[rng.uniform(-1, 1, g.inputs[0].shape).astype(np.float32)] for _ in range(2)]

    def compile_it(budget: int | None = None, log=lambda line: None):
        g, calib = build()
        res = compile_graph(g, CompileOptions(input_type="float", ram_budget=budget), log=log, samples=calib)
        return res, len(res.kmodel) + res.emitted.model.main_mem

    compile_it.build = build
    return compile_it


def _const(g, shape):
    return g.constant((rng.standard_normal(shape) * 0.3).astype(np.float32))


def test_a_model_the_allowance_puts_over_the_device_ram_budget_is_compiled_again_with_less(monkeypatch):
    """decompose_kernels spends up to MODEL_KPU_BYTES of kmodel on stacks made in KPU RAM; a model
    that this puts over the device RAM budget (kcc.pipeline.DEVICE_RAM_BUDGET, kmodel + working
    memory) is compiled again within it, and says so."""
    compile_it = _two_dw5_blocks_compiler(monkeypatch)
    kpu_made = ("fan_kpu", *KPU_MADE)
    first, ram = compile_it()
    assert all(d.plan.combine in kpu_made for d in first.decisions), first.decisions  # the allowance's forms
    monkeypatch.setattr(pipeline, "DEVICE_RAM_BUDGET", ram - 1)
    lines = []
    second, less = compile_it(log=lines.append)
    assert less <= ram - 1 and any(" over " in line and "again with" in line for line in lines), lines
    assert [d.plan for d in second.decisions] != [d.plan for d in first.decisions]


def test_the_ram_budget_option_sets_the_device_ram_the_convs_may_fill(monkeypatch):
    """CompileOptions.ram_budget (`kcc compile --ram-budget maixpy|sdk|MiB`) replaces the bare SDK's
    budget: a budget below the model compiles again within it; a generous one changes nothing."""
    compile_it = _two_dw5_blocks_compiler(monkeypatch)
    first, ram = compile_it()
    assert compile_it(ram)[0].kmodel == first.kmodel
    lines = []
    second, less = compile_it(ram - 1, lines.append)
    assert less <= ram - 1 and any(f"over {ram - 1} B" in line for line in lines), lines


def test_a_model_over_its_budget_shares_the_room_and_says_why_a_conv_went_back(monkeypatch):
    """Without MODEL_KPU_BYTES, both blocks take forms within their own caps; a budget below the model
    compiles again with the room it leaves them, which they share: the model fits, and a conv kept on
    the CPU for it says so. A budget no choice of forms would meet (below the model without any
    decomposition) keeps the first try, unless the model is over the bare SDK's budget too: then
    toward that one (`--ram-budget maixpy` for BlazePalm)."""
    monkeypatch.setattr(decompose_kernels, "MODEL_KPU_BYTES", 0)
    compile_it = _two_dw5_blocks_compiler(monkeypatch)
    first, ram = compile_it()
    assert all(d.plan is not None for d in first.decisions), first.decisions
    lines = []
    second, less = compile_it(ram - 1, lines.append)
    assert less <= ram - 1, (less, ram)
    assert any("for the decomposed convs" in line for line in lines), lines
    assert len(second.decisions) == len(first.decisions)
    for d in second.decisions:
        assert d.plan is not None or d.reason.startswith("device RAM: "), d
    hopeless, _ = compile_it(1024, lines.append)
    assert hopeless.kmodel == first.kmodel
    monkeypatch.setattr(pipeline, "DEVICE_RAM_BUDGET", ram - 1)
    sdk, at_sdk = compile_it(1024, lines.append)
    assert at_sdk <= ram - 1 and sdk.kmodel == second.kmodel


def test_climb_takes_the_most_time_per_share_of_both_budgets():
    """kernel_budget.climb: each candidate moves to a faster choice, the most cycles saved per share
    of the bytes and the cost left first, never past either budget; a move that takes neither
    (fewer bytes, no cost) within no budget at all."""
    a = [(0, 100.0, 0.0), (10, 50.0, 0.0), (30, 10.0, 0.0)]
    b = [(0, 100.0, 0.0), (10, 20.0, 0.1)]  # 80 cycles for the bytes of a's 50, and a tenth of the cost
    assert climb([a, b], 40, [0, 0], 1.0) == [2, 1]
    assert climb([a, b], 40, [0, 0], 0.05) == [2, 0]  # b's cost is beyond the cost budget
    assert climb([a, b], 10, [0, 0], 1.0) == [0, 1]  # 80 / (1 + 0.1) over a's 50 / 1
    assert climb([a, b], 10, [0, 0], 0.1) == [1, 0]  # 80 / (1 + 1) under a's 50
    assert climb([a, b], 9, [0, 0], 1.0) == [0, 0]
    free = [(20, 100.0, 0.0), (5, 90.0, 0.0)]  # fewer bytes and faster: taken within no budget at all
    assert climb([free], 0, [0]) == [1]


def test_codes_costs_measure_the_rounding_of_a_conv_input_alone():
    """kernel_budget.CodesCosts: a conv input whose values are already on its 8-bit grid costs
    nothing to read as codes; a continuous one costs something small, and more the more the conv
    weighs its rounding, less on a grid per channel group when the channels' ranges differ; the
    graph is left as it was."""
    def model():
        g = Graph()
        x = g.input(0, (1, 4, 8, 8))
        h = g.add(O.PRelu(), (x, g.constant(np.full((1, 4, 1, 1), 0.25, np.float32))), "prelu")
        w = np.zeros((4, 1, 5, 5), np.float32)
        w[:, 0, 2, 2] = 1.0
        big = w * 40.0 + 0.01
        a = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=4), (h, g.constant(w), g.constant(np.zeros(4, np.float32))), "a")
        b = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=4), (a, g.constant(big), g.constant(np.zeros(4, np.float32))), "b")
        g.outputs = [b]
        return g

    g = model()
    names = [n.name for n in g.nodes]
    on_grid = [[np.round(rng.uniform(0, 255, (1, 4, 8, 8))).astype(np.float32) / 255] for _ in range(2)]
    on_grid[0][0].flat[0], on_grid[0][0].flat[1] = 0.0, 1.0  # the range is [0, 1]: steps of 1/255
    convs = [n for n in g.nodes if n.name in ("a", "b")]
    assert CodesCosts(g, convs[:1], on_grid).cost("a") < 1e-9  # float32 ulps
    spread = [[rng.uniform(-1, 1, (1, 4, 8, 8)).astype(np.float32)] for _ in range(2)]
    costs = CodesCosts(g, convs, spread)
    assert 0.0 < costs.cost("a") < 1e-3 and 0.0 < costs.cost("b") < 1e-3
    # channels of ranges 100x apart: one grid per channel costs far less than one for all
    wide = [[x * np.array([1.0, 0.1, 0.01, 0.01], np.float32)[:, None, None]] for [x] in spread]
    costs = CodesCosts(g, convs, wide)
    assert costs.cost("b", 1) < costs.cost("b", 2) < costs.cost("b") and costs.cost("b", 1) < costs.cost("b") / 3, \
        costs.measured  # measured 4.8e-6 < 9.3e-6 < 1.9e-5
    assert [n.name for n in g.nodes] == names


def test_a_codes_form_is_priced_on_the_channel_groups_it_quantizes():
    """kernel_budget.codes_group: a depthwise conv's stacked forms quantize its input group by group
    (Form.group channels, 0: all in one layer); a dense conv, or a sum of terms, all of it at once."""
    g = Graph()
    x = g.input(0, (1, 8, 12, 12))
    dw = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=8), (x, _const(g, (8, 1, 5, 5)), _const(g, (8,))))
    dense = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2))), (x, _const(g, (8, 8, 5, 5)), _const(g, (8,))))
    fan = Form((1, 1), (0, 0), "fan_kpu", 4)
    assert codes_group(dw, fan) == 4
    assert codes_group(dw, Form((1, 1), (0, 0), "stack_kpu", 0)) is None
    assert codes_group(dw, Form((2, 2), (0, 0), "sum")) is None
    assert codes_group(dense, fan) is None and codes_group(dw, None) is None


def test_over_its_budget_a_conv_reads_its_float_input_as_codes_within_the_cosine_budget(monkeypatch):
    """Two 5x5s reading PReLUs (floats of the CPU): their exact forms stack the PReLU's rounding
    residual. A model over its budget compiles again with forms that read the PReLU as 8-bit codes
    where the room holds no exact form made in KPU RAM, as measured costs within CODES_COSINE_BUDGET
    allow; with a budget of 0 none does. The kmodel computes the float graph (bar: measured + 5 %)."""
    compile_it = _two_dw5_blocks_compiler(monkeypatch, "prelu", 16)
    first, ram = compile_it()
    assert not any(d.codes for d in first.decisions)
    monkeypatch.setattr(pipeline, "DEVICE_RAM_BUDGET", ram - 1)
    second, less = compile_it()
    assert less <= ram - 1 and any(d.codes for d in second.decisions), second.decisions
    assert all(d.plan.combine in ("fan_kpu", *KPU_MADE) and not d.plan.residual for d in second.decisions if d.codes)
    monkeypatch.setattr(kernel_budget, "CODES_COSINE_BUDGET", 0.0)
    exact, _ = compile_it()
    assert not any(d.codes for d in exact.decisions)
    g, calib = compile_it.build()
    program = kpu_sim.load(second.kmodel)
    steps = max(max_steps(program.run(x)[0].reshape(want.shape), want) for x in calib for want in run(g, x)[:1])
    assert steps <= CODES_MAX_STEPS[0], f"max error {steps:.2f} steps"


CODES_MAX_STEPS = (4.50, 4.29)  # (bar, measured): two fan_kpu forms reading the PReLUs' codes


def test_codes_read_in_channel_groups_are_quantized_on_a_grid_each(monkeypatch):
    """A float read as codes by a depthwise conv's channel groups (kcc.passes.kernel_forms) is
    quantized group by group, each on its own range (kcc.quant.policy.share_view_grids): on quotients
    whose channels' ranges span 100x, the codes forms compute the float graph closer than on one grid
    for all (max error 1.12 output steps against 1.76; bars: measured -+ 5 %)."""
    compile_it = _two_dw5_blocks_compiler(monkeypatch, "quotient", 16, spread=100.0)
    _, ram = compile_it()
    monkeypatch.setattr(pipeline, "DEVICE_RAM_BUDGET", ram - 1)
    g, calib = compile_it.build()

    def codes_build():
        res, _ = compile_it()
        assert any(d.codes for d in res.decisions), res.decisions
        program = kpu_sim.load(res.kmodel)
        steps = max(max_steps(program.run(x)[0].reshape(want.shape), want) for x in calib for want in run(g, x)[:1])
        scales = {n.body.quant_param.scale for n in res.emitted.model.nodes if type(n.body).__name__ == "Quantize"}
        return steps, scales

    monkeypatch.setattr(kernel_forms, "batchable_fan", lambda *args: False)  # a fan a group: its own zero point
    steps, scales = codes_build()
    monkeypatch.setattr(policy, "_slice_groups", lambda views: [views])  # one grid for every group
    one_grid, one_scale = codes_build()
    assert len(scales) > len(one_scale)
    assert steps <= GROUP_GRID_MAX_STEPS[0] and one_grid >= ONE_GRID_MIN_STEPS[0], (steps, one_grid)


GROUP_GRID_MAX_STEPS = (1.17, 1.12)  # (bar, measured): a grid per channel group
ONE_GRID_MIN_STEPS = (1.67, 1.76)  # (bar = measured - 5 %, measured): one grid for all groups


def _batched_fans(res) -> list:
    return [n.body for n in res.emitted.model.nodes if isinstance(n.body, km.KpuConv2D) and n.body.batches > 1]


def test_a_batched_fan_is_a_fan_a_group_on_the_same_grids(monkeypatch):
    """A decomposed 5x5's channel groups as the batches of ONE fan layer (kcc.ir.kpu_ops.KpuBatchStack)
    compute what a fan layer a group computes: compiled again with a fan a group but the batched
    build's grids for the groups (a scale each, one zero point), kpu_sim's outputs are bit-identical,
    and the kmodel holds one fan a conv instead of one a group (4 groups of 4 channels here)."""
    compile_it = _two_dw5_blocks_compiler(monkeypatch, "prelu", 16)
    _, ram = compile_it()
    monkeypatch.setattr(pipeline, "DEVICE_RAM_BUDGET", ram - 1)
    _, calib = compile_it.build()
    batched, _ = compile_it()
    assert [d.plan.combine for d in batched.decisions] == ["fan_kpu", "fan_kpu"], batched.decisions
    assert [b.batches for b in _batched_fans(batched)] == [4, 4]
    parts = [p.name for n in batched.float_graph.nodes if isinstance(n.op, KO.KpuBatchStack) for p in n.inputs]
    grids = {name: batched.ranges[name] for name in parts}
    assert len({r.param.zero_point for r in grids.values()}) == 2 and len({r.param.scale for r in grids.values()}) > 2

    monkeypatch.setattr(kernel_forms, "batchable_fan", lambda *args: False)
    monkeypatch.setattr(policy, "share_batch_zero_points", lambda g, ranges: ranges.update(grids))
    per_group, _ = compile_it()
    assert not _batched_fans(per_group)
    assert [d.plan for d in per_group.decisions] == [d.plan for d in batched.decisions]
    assert len(per_group.kmodel) - len(batched.kmodel) >= 2 * 3 * kernel_plans.KPU_LAYER_BYTES
    one, many = kpu_sim.load(batched.kmodel), kpu_sim.load(per_group.kmodel)
    for x in calib:
        assert all(np.array_equal(a, b) for a, b in zip(one.run(x), many.run(x)))


def test_groups_that_one_zero_point_would_cost_keep_a_fan_each(monkeypatch):
    """decompose_kernels batches a 5x5's groups only where one zero point widens their mean squared
    step by at most BATCH_STEP_GROWTH (kcc.target.quant_rules.zero_point_growth, over the samples):
    allowed none, every group keeps its own fan and zero point; allowed any, both 5x5s batch theirs."""
    compile_it = _two_dw5_blocks_compiler(monkeypatch, "quotient", 16, spread=100.0)
    _, ram = compile_it()
    monkeypatch.setattr(pipeline, "DEVICE_RAM_BUDGET", ram - 1)

    def batches(growth: float) -> list[int]:
        monkeypatch.setattr(decompose_kernels, "BATCH_STEP_GROWTH", growth)
        res, _ = compile_it()
        assert [d.plan.combine for d in res.decisions] == ["fan_kpu", "fan_kpu"], res.decisions
        return [b.batches for b in _batched_fans(res)]

    assert batches(0.0) == [] and batches(np.inf) == [4, 4]


def test_one_zero_point_costs_what_the_growth_says():
    """zero_point_growth: 1 for groups of one shape (one zero point fits them all), the ratio of
    mean squared steps otherwise (a [-1, 1] group and a [0, 1] one: one zero point halves the
    second's resolution at best)."""
    same = quant_rules.zero_point_growth(np.array([-1.0, -2.0]), np.array([3.0, 6.0]))
    assert same == pytest.approx(1.0, rel=1e-2)
    mixed = quant_rules.zero_point_growth(np.array([-1.0, 0.0]), np.array([1.0, 1.0]))
    assert mixed > 1.5
    zero, levels = quant_rules.shared_zero_point(np.array([-1.0, 0.0]), np.array([1.0, 1.0]))
    assert 1 <= zero <= 254 and zero / levels[0] >= 1.0 - 1e-6 and (255 - zero) / levels[1] >= 1.0 - 1e-6


def test_a_retry_that_leaves_room_unused_is_made_once_more_with_it(monkeypatch):
    """A retry whose forms took less than estimated leaves part of the budget unused: past FILL_MIN,
    the stages run once more with that much more room, and that try is kept only where it fits and
    is estimated faster than the retry before it (here: 20.3 -> 1.3 ms 20000 B below the model, the
    same kmodel 1 B below it, where the retry already had both convs' fastest forms)."""
    monkeypatch.setattr(decompose_kernels, "MODEL_KPU_BYTES", 0)
    monkeypatch.setattr(pipeline, "DEVICE_RAM_MARGIN", 0)
    compile_it = _two_dw5_blocks_compiler(monkeypatch)
    _, ram = compile_it()

    def both(budget):
        monkeypatch.setattr(pipeline, "FILL_MIN", 1 << 30)
        plain, plain_ram = compile_it(budget)
        monkeypatch.setattr(pipeline, "FILL_MIN", 1)
        lines = []
        filled, filled_ram = compile_it(budget, lines.append)
        assert any(f"{budget - plain_ram} B under {budget} B" in line for line in lines), lines
        assert plain_ram <= budget and filled_ram <= budget
        return plain, filled

    plain, filled = both(ram - 20000)
    assert filled.latency.total_ms < plain.latency.total_ms / 2, (plain.latency.total_ms, filled.latency.total_ms)
    plain, filled = both(ram - 1)
    assert filled.kmodel == plain.kmodel
