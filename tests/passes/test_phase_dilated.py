"""phase_dilated: regions of dilated convs run per phase compute the same floats as the full map."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.passes.dilated_conv import eliminate_dilated_conv
from kcc.passes.phase_dilated import phase_dilated
from kcc.passes.phase_space import classes, dilation_of

rng = np.random.default_rng(16)
RELU6 = (0.0, 6.0)


def _const(g, shape, name):
    return g.constant(rng.uniform(-1, 1, shape).astype(np.float32), name)


def _conv(g, x, oc, name, k=1, d=1, groups=1, act=RELU6):
    c = x.shape[1]
    p = d * (k // 2)
    w = _const(g, (oc, c // groups, k, k), name + "/w")
    b = _const(g, (oc,), name + "/b")
    return g.add(O.Conv2D((1, 1), ((p, p), (p, p)), (d, d), groups, act), (x, w, b), name)


def _block(g, x, d, name, expand=3, residual=True):
    """An inverted residual block with a dilated depthwise conv (MobileNetV2 / deeplab)."""
    c = x.shape[1]
    e = _conv(g, x, c * expand, name + "/expand")
    dw = _conv(g, e, c * expand, name + "/dw", k=3, d=d, groups=c * expand)
    p = _conv(g, dw, c, name + "/project", act=O.NO_CLAMP)
    return g.add(O.Binary("add"), (p, x), name + "/add") if residual else p


def _deeplab_like(h, w, c=4):
    """d=2 blocks, then d=4 blocks, then an ASPP-like head: global mean -> 1x1 conv -> broadcast,
    concatenated with a 1x1 conv of the map, projected to logits; a 3x3 plain conv before the region."""
    g = Graph()
    x = g.input(0, (1, c, h, w))
    y = _conv(g, x, c, "stem", k=3)
    for k in range(2):
        y = _block(g, y, 2, f"b{k}")
    y = _block(g, y, 2, "b2", residual=False)
    for k in range(3, 5):
        y = _block(g, y, 4, f"b{k}")
    pooled = g.add(O.Pool2D("mean", (h, w), (h, w)), (y,), "pool")
    img = _conv(g, pooled, 6, "image_pooling", act=(0.0, float("inf")))
    up = g.add(O.Resize("bilinear", (h, w), align_corners=True), (img,), "broadcast")
    aspp = _conv(g, y, 6, "aspp0", act=(0.0, float("inf")))
    cat = g.add(O.Concat(1), (up, aspp), "concat")
    proj = _conv(g, cat, 6, "proj", act=(0.0, float("inf")))
    logits = _conv(g, proj, 3, "logits", act=O.NO_CLAMP)
    g.outputs = [g.add(O.Resize("bilinear", (2 * h, 2 * w), align_corners=True), (logits,), "resize")]
    return g


def _dilated(g):
    return [n for n in g.nodes if isinstance(n.op, O.Conv2D) and n.op.dilation != (1, 1)]


def _check(g, shapes):
    inputs = [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]
    want = run(g, inputs)
    names = [o.name for o in g.outputs]
    out = phase_dilated(g)
    out.verify("phase_dilated")
    assert [o.name for o in out.outputs] == names
    got = run(out, inputs)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    return out


@pytest.mark.parametrize("h,w", [(33, 33), (16, 16), (17, 14), (12, 19)])
def test_deeplab_like_regions_are_exact(h, w):
    g = _check(_deeplab_like(h, w), [(1, 4, h, w)])
    assert not _dilated(g)  # every dilated conv became a plain one on its phases
    # split once into the d=2 phases (4 slices), once more for d=4 (16 slices); merged once: one
    # transpose (the logits)
    slices = [n for n in g.nodes if isinstance(n.op, O.StridedSlice) and n.op.strides[2] > 1]
    assert len(slices) == 4 + 16
    assert g.find("logits").op.kind in ("reshape", "strided_slice")  # the merge, under the output's name
    sizes = classes(h, w, 4)
    for name in ("b3/expand", "b4/dw"):  # one conv per phase size
        assert sum(n.op.kind == "conv2d" and n.name.startswith(name + "/ph4") for n in g.nodes) == len(sizes)
    # the head after the last dilated conv runs once on the packed map where a phase size holds several
    # phases: its concatenation of batched phases would cross to the CPU and back (KPU RAM holds
    # whole maps per batch); otherwise once per phase size
    packed = len(sizes) > 1 and any(len(ps) > 1 for *_, ps in sizes)
    assert packed == ((h, w) != (16, 16))
    for name in ("aspp0", "proj", "logits"):
        kinds = [n.name for n in g.nodes if n.op.kind == "conv2d" and n.name.startswith(name + "/")]
        assert kinds == [f"{name}/pack4"] if packed else len(kinds) == len(sizes), kinds
    # the interleave of the merge (packing and unpacking are concatenations)
    assert sum(isinstance(n.op, O.Transpose) for n in g.nodes) == 1


@pytest.mark.parametrize("h,w", [(9, 9), (9, 10)])
def test_a_long_pointwise_tail_runs_once_on_a_packed_map(h, w):
    """After the last dilated conv, six 1x1 convs on a small map: packing the phases of all sizes into
    one tensor (a pixel permutation) costs less than 6 layers per extra size, so each runs once; a
    global mean over the packed map is the mean."""
    g = Graph()
    x = g.input(0, (1, 4, h, w))
    y = _conv(g, x, 4, "dil0", k=3, d=2, groups=4)
    y = _conv(g, y, 4, "dil", k=3, d=2, groups=4)
    for k in range(6):
        y = _conv(g, y, 4, f"tail{k}")
    mean = g.add(O.Pool2D("mean", (h, w), (h, w)), (y,), "mean")
    g.outputs = [y, mean]
    out = _check(g, [(1, 4, h, w)])
    sizes = len(classes(h, w, 2))
    assert sizes > 1
    assert sum(n.op.kind == "conv2d" and n.name.startswith("dil/") for n in out.nodes) == sizes
    for k in range(6):
        assert sum(n.op.kind == "conv2d" and n.name.startswith(f"tail{k}/") for n in out.nodes) == 1
    assert out.find("mean").inputs[0].name == "tail5/pack2"


@pytest.mark.parametrize("d", [2, 3, 4])
def test_single_region_with_concat_and_odd_padding(d):
    """Two dilated convs of the same dilation feeding a concat and an add; the region ends at a
    plain 3x3 conv (not pointwise), which reads the merged map."""
    g = Graph()
    x = g.input(0, (1, 4, 13, 10))
    a = _conv(g, x, 4, "a", k=3, d=d, groups=4)
    b = _conv(g, x, 4, "b", k=3, d=d)
    s = g.add(O.Binary("add"), (a, b), "sum")
    c = g.add(O.Concat(1), (a, s), "cat")
    m = g.add(O.Binary("mul"), (c, g.constant(np.float32([0.5]).reshape(1, 1, 1, 1), "half")), "half_cat")
    t = g.add(O.Clamp(0.0, 1.0), (m,), "clamp")
    g.outputs = [_conv(g, t, 2, "head", k=3)]
    out = _check(g, [(1, 4, 13, 10)])
    assert not _dilated(out)


def test_global_mean_as_reduce_without_keepdims_ends_a_region():
    g = Graph()
    x = g.input(0, (1, 4, 9, 11))
    a = _conv(g, x, 4, "a", k=3, d=2, groups=4)
    b = _conv(g, a, 4, "b", k=3, d=2, groups=4)
    c = _conv(g, b, 4, "c", k=3, d=2, groups=4)
    g.outputs = [g.add(O.Reduce("mean", (2, 3), keepdims=False), (c,), "mean")]
    out = _check(g, [(1, 4, 9, 11)])
    assert not _dilated(out) and out.outputs[0].shape == (1, 4)


def test_a_small_lone_dilated_conv_keeps_space_to_batch():
    """A d=4 conv on a 5x5 map: 16 slices and 3 more KPU layers (4 sizes of phases) cost more than
    eliminate_dilated_conv's form (kcc.target.k210's costs), so the graph is left to it, unchanged."""
    g = Graph()
    x = g.input(0, (1, 2, 5, 5))
    y = _conv(g, x, 2, "pre", k=3)
    y = _conv(g, y, 2, "dil", k=3, d=4, groups=2)
    g.outputs = [_conv(g, y, 2, "post", k=3)]
    before = [n.name for n in g.nodes]
    out = phase_dilated(g)
    assert [n.name for n in out.nodes] == before
    assert not _dilated(eliminate_dilated_conv(out))


def test_region_ends_before_a_widening_pointwise_conv():
    """dilated 4 ch -> 1x1 conv to 64 ch -> plain 3x3 conv: merging the 4 channels is cheaper than
    merging the 64, so the 1x1 conv runs on the full map."""
    g = Graph()
    x = g.input(0, (1, 4, 24, 24))
    y = _conv(g, x, 4, "dil", k=3, d=2, groups=4)
    y = _conv(g, y, 64, "wide")
    g.outputs = [_conv(g, y, 4, "post", k=3)]
    out = _check(g, [(1, 4, 24, 24)])
    assert not _dilated(out)
    assert out.find("wide").inputs[0] is out.find("dil")  # the merged map, named as the conv
    assert out.find("dil").op.kind == "reshape"  # 24 = 2 * 12: no crop


def test_what_does_not_fit_is_left_alone():
    """A dilated conv with stride 2, or a map smaller than the factor, keeps its dilation here."""
    g = Graph()
    x = g.input(0, (1, 2, 3, 3))
    y = _conv(g, x, 2, "tiny", k=3, d=4, groups=2)
    g.outputs = [y]
    assert dilation_of(y) == 4
    out = phase_dilated(g)
    assert _dilated(out)


def test_branches_of_different_dilations_meet_on_full_maps():
    """An RFB-style module: branches of dilation 2 and 3 concatenated, projected, added to a
    shortcut. 2 and 3 do not nest, so the concat reads merged maps (no phases of 6)."""
    g = Graph()
    x = g.input(0, (1, 8, 20, 18))
    b2 = _conv(g, _conv(g, x, 8, "b2/in"), 8, "b2/dil", k=3, d=2)
    b3 = _conv(g, _conv(g, x, 8, "b3/in"), 8, "b3/dil", k=3, d=3)
    cat = g.add(O.Concat(1), (b2, b3), "cat")
    proj = _conv(g, cat, 8, "proj", act=O.NO_CLAMP)
    g.outputs = [g.add(O.Binary("add"), (proj, x), "add")]
    out = _check(g, [(1, 8, 20, 18)])
    assert not any("ph6" in n.name for n in out.nodes)
    assert out.find("cat").inputs[0] is out.find("b2/dil") or _dilated(eliminate_dilated_conv(out)) == []


def test_asymmetric_padding_in_multiples_of_the_dilation():
    """Padding (2, 2) rows and (0, 4) columns at dilation 2: the output keeps the input's size and
    the leading pads divide by 2, so each phase is a plain conv padded (1, 1) and (0, 2)."""
    g = Graph()
    x = g.input(0, (1, 4, 11, 9))
    w = _const(g, (4, 4, 3, 3), "w")
    b = _const(g, (4,), "b")
    y = g.add(O.Conv2D((1, 1), ((2, 2), (0, 4)), (2, 2), 1, RELU6), (x, w, b), "conv")
    y = g.add(O.Conv2D((1, 1), ((2, 2), (0, 4)), (2, 2), 1, RELU6), (y, w, b), "conv2")
    g.outputs = [y]
    out = _check(g, [(1, 4, 11, 9)])
    assert not _dilated(out)
    assert {n.op.padding for n in out.nodes if n.op.kind == "conv2d"} == {((1, 1), (0, 2))}
