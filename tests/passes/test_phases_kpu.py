"""phases_kpu: a stride-2 conv as its input's stride phases picked by KPU layers and one stride-1 3x3
layer over them (kcc.passes.kernel_terms.phase_axis / phase_terms, kcc.passes.kernel_forms)."""

import numpy as np
import pytest
from conv_graphs import conv_graph, legalize

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import shift_copy
from kcc.passes import kernel_cost as KC
from kcc.passes import kernel_plans as P
from kcc.passes.kernel_forms import phase_plan
from kcc.passes.kernel_terms import phase_axis

rng = np.random.default_rng(17)


def _conv_graph(*args, **kwargs):
    return conv_graph(rng, *args, **kwargs)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [8, 9, 12, 13, 14])
def test_phase_axis_reads_every_tap_once_and_zero_only_outside_x(k, size):
    """Along one axis, every (padding, output count) a stride-2 conv of k taps can have: where
    `phase_axis` gives phases, the sum over them of the taps it assigns, each reading P_a[j] = x[2j + a]
    for j < size // 2 (0 elsewhere: the phase layer's and the stacked conv's KPU padding), equals the
    conv with x's own zero padding, on random data; TFLite SAME on an even size always has phases."""
    x = rng.uniform(-1, 1, size)
    w = rng.uniform(-1, 1, k)
    for before in range(k):
        for after in range(k):
            out = (size + before + after - k) // 2 + 1
            if out < 1:
                continue
            want = [sum(w[t] * (x[2 * i + t - before] if 0 <= 2 * i + t - before < size else 0.0) for t in range(k))
                    for i in range(out)]
            phases = phase_axis(k, before, size, out)
            same = size % 2 == 0 and (before, after) == ((k - 2) // 2, k - 2 - (k - 2) // 2)  # TF SAME, even size
            assert phases is not None or not same, (before, after)
            if phases is None:
                continue
            assert sorted(tap for _, taps in phases for _, tap in taps) == list(range(k))
            assert len(phases) <= 3 and all(abs(t) <= 1 for _, taps in phases for t, _ in taps)
            half = size // 2

            def p(a, j):
                return x[2 * j + a] if 0 <= j < half and 0 <= 2 * j + a < size else 0.0
            got = [sum(w[tap] * p(a, i + t) for a, taps in phases for t, tap in taps) for i in range(out)]
            np.testing.assert_allclose(got, want, atol=1e-12, err_msg=str((before, after, phases)))


PHASE_SHAPES = {  # c, oc, h, w, padding, depthwise: the stride-2 convs phases_kpu takes
    "dw_same_even": (6, 6, 12, 10, ((1, 2), (1, 2)), True),  # BlazePalm / BlazeHand's stride-2 5x5s
    "dense_same_even": (3, 8, 16, 16, ((1, 2), (1, 2)), False),  # BlazePalm's stem
    "dw_explicit_2": (6, 6, 12, 12, ((2, 2), (2, 1)), True),
    "dw_explicit_odd": (6, 6, 13, 11, ((3, 0), (3, 0)), True),  # three phases an axis
    "dw_wide": (4, 4, 8, 132, ((1, 2), (1, 2)), True),  # phases 66 wide: two 64-byte lines a row
}


@pytest.mark.parametrize("name", sorted(PHASE_SHAPES))
def test_phases_kpu_is_exact_and_wholly_on_the_kpu(name):
    """`phases_kpu`: a stride-2 5x5 as depthwise 3x3 KPU layers picking x's stride phases (one tap of
    1, `left_top_2_s2`) and one 3x3 KPU layer over them at stride 1: the rewritten graph equals the
    conv in float, legalized it is KPU layers alone (no CPU pad, slice or crop) and still equal."""
    c, oc, h, w, pad, dw = PHASE_SHAPES[name]
    g = _conv_graph(c, oc, h, w, 5, 5, (2, 2), pad, c if dw else 1)
    conv = g.outputs[0]
    xi = rng.uniform(-1, 1, (1, c, h, w)).astype(np.float32)
    want = run(g, [xi])[0]
    plans = [p for p in P.plans(conv, residual=True) if p.combine == "phases_kpu"]
    assert plans and any(p.residual for p in plans)
    phases = 9 if name == "dw_explicit_odd" else 4
    for plan in plans:
        alone = KC.alone(conv, plan)
        np.testing.assert_allclose(run(alone, [xi])[0], want, rtol=1e-5, atol=1e-5, err_msg=str(plan))
        lg, placements = legalize(alone)
        assert placements and all(p.on_kpu for p in placements), (plan, placements)
        layers = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
        picks = [n for n in layers if n.op.pool == "left_top_2_s2" and shift_copy(n) is not None]
        groups = -(-c // plan.group) if plan.group and dw else 1
        assert len(picks) == phases * groups * (2 if plan.residual else 1) and len(layers) == len(picks) + groups
        assert not any(isinstance(n.op, (O.Pad, O.StridedSlice)) and n.inputs[0] in picks + layers for n in lg.nodes)
        np.testing.assert_allclose(run(lg, [xi])[0], want, rtol=1e-5, atol=1e-5, err_msg=str(plan))


def test_phases_kpu_is_not_offered_where_a_pick_misses_a_row():
    """TFLite SAME on an odd size has size // 2 + 1 outputs, one more than a pick of x makes, and a
    conv whose last output reads x's last row through a phase's missing row has no exact phases."""
    for h, pad in ((13, ((2, 2), (2, 2))), (11, ((1, 1), (1, 1)))):
        g = _conv_graph(4, 4, h, h, 5, 5, (2, 2), pad, 4)
        assert phase_plan(g.outputs[0]) is None
        assert not any(p.combine == "phases_kpu" for p in P.plans(g.outputs[0]))
