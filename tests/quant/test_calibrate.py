"""calibrate(): observers on the float interpreter, no_clip and l2 ranges (kpu_semantics.md §4.2)."""

import numpy as np
import pytest

from kcc.errors import DatasetError, KccError
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.quant.calibrate import (
    STAGE_HISTOGRAM,
    STAGE_RANGE,
    STAGE_SEARCH,
    HistogramObserver,
    MinMaxObserver,
    calibrate,
    fast_range,
    input_range_override,
)
from kcc.quant.histogram import Histogram
from kcc.quant.l2_search import l2_range
from kcc.quant.params import FLT_MIN, get_range

F32 = np.float32


def tiny_graph():
    """x -> y = 2x -> z = y - 10 (always negative for x < 5)."""
    g = Graph()
    x = g.input(0, (1, 1, 4, 4), name="x")
    y = g.add(O.Binary("mul"), [x, g.constant(np.array(2.0, F32), "two")], name="y")
    z = g.add(O.Binary("sub"), [y, g.constant(np.array(10.0, F32), "ten")], name="z")
    g.outputs = [z]
    return g, (x, y, z)


def samples(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.uniform(-0.1, 4.0, (1, 1, 4, 4)).astype(F32)] for _ in range(n)]


def test_no_clip_is_the_union_of_per_sample_ranges():
    g, (x, y, z) = tiny_graph()
    data = samples()
    got = calibrate(g, data, [x, y, z])
    xs = np.stack([s[0] for s in data])
    assert got["x"] == (float(xs.min()), float(xs.max()))
    assert got["y"] == (float((xs * F32(2)).min()), float((xs * F32(2)).max()))
    # z is negative everywhere: its max stays at nncase's FLT_MIN start value
    assert got["z"] == (float((xs * F32(2) - F32(10)).min()), FLT_MIN)
    assert list(got) == ["x", "y", "z"]


def test_no_clip_is_order_independent_and_leaves_the_graph_alone():
    g, points = tiny_graph()
    before = [(n.name, n.op, n.inputs) for n in g]
    data = samples(8)
    assert calibrate(g, data, points) == calibrate(g, data[::-1], points)
    assert [(n.name, n.op, n.inputs) for n in g] == before


def test_minmax_observer_semantics():
    obs = MinMaxObserver()
    obs.observe("t", np.array([-3.0, -2.0], F32))  # all negative: hi = FLT_MIN
    assert obs.ranges() == {"t": (-3.0, FLT_MIN)}
    obs.observe("t", np.array([np.nan, -1.0, np.inf, -np.inf], F32))  # finite values only
    assert obs.ranges() == {"t": (-3.0, FLT_MIN)}
    obs.observe("t", np.array([0.5, 7.0], F32))
    assert obs.ranges() == {"t": (-3.0, 7.0)}


def test_fast_range_equals_get_range():
    rng = np.random.default_rng(2)
    cases = [rng.normal(size=100).astype(F32), -np.abs(rng.normal(size=10)).astype(F32),
             np.array([np.nan, 1.0, -2.0], F32), np.array([np.inf, -np.inf], F32), np.zeros(0, F32),
             np.array([0.0], F32), np.array([-0.0, np.inf, 3.0], F32)]
    for a in cases:
        assert fast_range(a) == get_range(a)


def test_l2_ranges_follow_the_histograms_of_the_no_clip_ranges():
    g, (x, y, z) = tiny_graph()
    data = samples(5)
    no_clip = calibrate(g, data, [x, y, z])
    got = calibrate(g, data, [x, y, z], method="l2")
    xs = np.stack([s[0] for s in data]).astype(F32)
    for name, values in [("x", xs), ("y", xs * F32(2)), ("z", xs * F32(2) - F32(10))]:
        h = Histogram.over(*no_clip[name])
        h.add(values)
        assert got[name] == l2_range(h)
        lo, hi = h.lo, h.hi  # never wider than the (fixed-up) no_clip range
        assert lo <= got[name][0] <= 0.0 <= got[name][1] <= float(np.nextafter(F32(hi), F32(np.inf)))


def test_l2_accepts_generators_callables_and_lists_alike():
    g, points = tiny_graph()
    data = samples(4)
    expect = calibrate(g, data, points, method="l2")
    assert calibrate(g, (s for s in data), points, method="l2") == expect
    assert calibrate(g, lambda: iter(data), points, method="l2") == expect
    assert calibrate(g, tuple(data), points, method="l2") == expect
    assert calibrate(g, [s[0] for s in data], points, method="l2") == expect  # bare arrays


def test_progress_reports_every_stage():
    g, points = tiny_graph()
    seen = []
    calibrate(g, samples(3), points, method="l2", progress=lambda d, t, s: seen.append((d, t, s)))
    assert seen == ([(i, 3, STAGE_RANGE) for i in (1, 2, 3)] + [(i, 3, STAGE_HISTOGRAM) for i in (1, 2, 3)]
                    + [(i, 3, STAGE_SEARCH) for i in (1, 2, 3)])
    seen.clear()
    calibrate(g, (s for s in samples(2)), points, progress=lambda d, t, s: seen.append((d, t, s)))
    assert seen == [(1, None, STAGE_RANGE), (2, None, STAGE_RANGE)]  # unknown length


def test_errors():
    g, (x, _, _) = tiny_graph()
    with pytest.raises(DatasetError, match="empty"):
        calibrate(g, [], [x])
    with pytest.raises(KccError, match="unknown calibration method"):
        calibrate(g, samples(1), [x], method="kld")
    _, (ox, _, _) = tiny_graph()
    ox.name = "elsewhere"
    with pytest.raises(KccError, match="never evaluated"):
        calibrate(g, samples(1), [x, ox])


def test_histogram_observer_strategy_alone():
    obs = HistogramObserver({"t": (-1.0, 3.0)})
    obs.observe("t", np.linspace(-1, 3, 1000, dtype=F32))
    h = Histogram.over(-1.0, 3.0)
    h.add(np.linspace(-1, 3, 1000, dtype=F32))
    assert obs.ranges() == {"t": l2_range(h)}


@pytest.mark.parametrize("mean,std,expect", [(0.5, 0.5, (-1.0, 1.0)), (0.5, 1.0, (-0.5, 0.5)),
                                             (0.0, 1.0, (0.0, 1.0)), (127.5, 128.0, (-0.99609375, -0.98828125))])
def test_input_range_override(mean, std, expect):
    assert input_range_override(mean, std) == expect


def test_input_range_override_is_float32_arithmetic():
    lo, hi = input_range_override(0.1, 0.3)
    assert lo == float((F32(0) - F32(0.1)) / F32(0.3)) and hi == float((F32(1) - F32(0.1)) / F32(0.3))


def test_calibration_observes_the_legalized_graph_without_editing_it():
    """The pre-activation range of a layer with a fused activation is measured on a view: the
    calibrated graph keeps its nodes, outputs and names (kcc.quant.calibration_view.calibration_view)."""
    from kcc.ir import kpu_ops as KO
    from kcc.options import CompileOptions
    from kcc.passes.legalize_kpu import legalize_kpu
    from kcc.passes.manager import CompileContext
    from kcc.quant.policy import calibrate_ranges

    rng = np.random.default_rng(5)
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))
    w = g.constant(rng.uniform(-1, 1, (4, 4, 3, 3)).astype(np.float32))
    y = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (x, w, g.constant(np.zeros(4, np.float32))), "conv")
    g.outputs = [g.add(O.LeakyRelu(0.1), (y,), "act")]
    ctx = CompileContext(CompileOptions(), samples=[[rng.uniform(0, 1, (1, 4, 8, 8)).astype(np.float32)]])
    lg = legalize_kpu(g, ctx)
    (layer,) = [n for n in lg.nodes if isinstance(n.op, KO.FloatKpuConv)]
    assert layer.op.fn is not None
    nodes, outputs = list(lg.nodes), list(lg.outputs)
    assert calibrate_ranges(lg, ctx) is lg and ctx.float_graph is lg
    assert lg.nodes == nodes and lg.outputs == outputs
    assert lg.unique_name(layer.name + "/pre_act") == layer.name + "/pre_act"  # the name was not taken
    assert {layer.name, layer.name + "/pre_act", "input"} <= set(ctx.ranges) and ctx.moments is not None
