"""global_mean: a global mean of a KPU layer's map as 2x2 block sums on the KPU, the rest on the CPU."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.global_mean import global_means_as_sums, levels

rng = np.random.default_rng(5)


def _classifier(c=64, h=8, w=8, reduce=False, source="conv"):
    """x -> 1x1 conv relu6 (the last pointwise layer) -> global mean -> 1x1 head."""
    g = Graph()
    x = g.input(0, (1, 16, h, w))
    if source == "conv":
        y = g.add(O.Conv2D(act=(0.0, 6.0)), (x, g.constant(rng.uniform(-0.5, 0.5, (c, 16, 1, 1)).astype(np.float32)),
                                             g.constant(rng.uniform(0, 1, c).astype(np.float32))), "last")
    else:  # a CPU op's map
        y = g.add(O.Binary("add"), (x, x), "last")
        c = 16
    mean = O.Reduce("mean", (2, 3), True) if reduce else O.Pool2D("mean", (h, w), (h, w))
    m = g.add(mean, (y,), "gap")
    g.outputs = [g.add(O.Conv2D(), (m, g.constant(rng.uniform(-1, 1, (10, c, 1, 1)).astype(np.float32)),
                                    g.constant(np.zeros(10, np.float32))), "head")]
    return g


def test_levels_halve_the_map_while_the_kpu_takes_it():
    assert levels(64, 8, 8) == [(4, 4), (2, 2)]
    assert levels(64, 10, 8) == [(5, 4), (3, 2)]  # 5 rows: a gap pick for 64 channels (16 line groups at width 4)...
    assert levels(1280, 10, 10) == [(5, 5)]  # ...but not for 1280 (320 layers): the CPU averages 5x5
    assert levels(64, 7, 7) == [(4, 4), (2, 2)] and levels(1280, 7, 7) == []
    assert levels(64, 3, 3) == []


@pytest.mark.parametrize("h,w,reduce", [(8, 8, False), (6, 6, True), (10, 8, False), (7, 7, True)])
def test_the_block_sums_compute_the_same_mean(h, w, reduce):
    g = _classifier(h=h, w=w, reduce=reduce)
    samples = [[rng.uniform(-1, 1, (1, 16, h, w)).astype(np.float32)] for _ in range(2)]
    want = [run(g, s)[0] for s in samples]
    out, done = global_means_as_sums(g, CompileOptions())
    assert [name for name, _ in done] == ["gap"] and "block sums on the KPU" in done[0][1]
    sums = [n for n in out.nodes if isinstance(n.op, O.Conv2D) and n.op.stride == (2, 2)]
    assert [n.shape[2:] for n in sums] == levels(64, h, w)
    assert all(n.op.groups == 64 and n.op.padding == ((1, 1), (1, 1)) for n in sums)
    gap = next(n for n in out.nodes if n.name == "gap")
    assert gap.inputs[0] is sums[-1] and type(gap.op) is (O.Reduce if reduce else O.Pool2D)
    for s, y in zip(samples, want):
        np.testing.assert_allclose(run(out, s)[0], y, rtol=1e-5, atol=1e-5)


def test_a_mean_the_pool_unit_serves_or_of_a_cpu_map_stays():
    """A 4x4 pool is fused into the layer before it (the pool unit's mean_4_s4); a CPU op's map is
    copied out anyway; the CPU target and float inference have no KPU."""
    for g in (_classifier(h=4, w=4), _classifier(source="cpu"), _classifier(c=1280, h=7, w=7)):
        assert global_means_as_sums(g, CompileOptions())[1] == []
    assert global_means_as_sums(_classifier(), CompileOptions(target="cpu"))[1] == []
    assert global_means_as_sums(_classifier(), CompileOptions(inference_type="float"))[1] == []


def _legalized(reader="kpu", keepdims=False, act=O.NO_CLAMP, pool=False):
    """A KPU layer's 7x7 map -> its global mean -> (reshape) -> a KPU layer or a CPU op."""
    g = Graph()
    x = g.input(0, (1, 16, 7, 7))
    y = g.add(KO.FloatKpuConv(1, act=(0.0, 6.0)), (x, g.constant(rng.uniform(-1, 1, (32, 16, 1, 1)).astype(np.float32)),
                                                   g.constant(np.zeros(32, np.float32))), "last")
    mean = O.Pool2D("mean", (7, 7), (7, 7), act=act) if pool else O.Reduce("mean", (2, 3), keepdims)
    m = g.add(mean, (y,), "gap")
    if not keepdims and not pool:
        m = g.add(O.Reshape((1, 32, 1, 1)), (m,), "as_map")
    w, b = g.constant(rng.uniform(-1, 1, (10, 32, 1, 1)).astype(np.float32)), g.constant(np.zeros(10, np.float32))
    op = KO.FloatKpuConv(1) if reader == "kpu" else O.Conv2D()
    g.outputs = [g.add(op, (m, w, b), "head")]
    return g


def test_a_mean_the_kpu_reads_becomes_one_window_of_a_depthwise_conv():
    from kcc.passes.global_mean import means_as_convs

    for keepdims, pool in ((False, False), (True, False), (True, True)):
        g = _legalized(keepdims=keepdims, pool=pool)
        s = [rng.uniform(-1, 1, (1, 16, 7, 7)).astype(np.float32)]
        want = run(g, s)[0]
        out, done = means_as_convs(g)
        assert done == ["gap"]
        conv = next(n for n in out.nodes if isinstance(n.op, O.Conv2D))
        assert conv.op.groups == 32 and conv.inputs[1].shape == (32, 1, 7, 7)
        np.testing.assert_array_equal(conv.inputs[1].data, np.float32(1 / 49))
        np.testing.assert_allclose(run(out, s)[0], want, rtol=1e-5, atol=1e-6)
    # a CPU op reads the float mean unrounded; the pool unit's clamp is no window's
    assert means_as_convs(_legalized(reader="cpu"))[1] == []
    assert means_as_convs(_legalized(pool=True, keepdims=True, act=(0.0, 6.0)))[1] == []
