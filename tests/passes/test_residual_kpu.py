"""residual_kpu: a residual add of two KPU layers' outputs as a 1x1 KPU layer over both, side by side
in KPU RAM; fused with a 1x1 projection where its weights keep their precision, else after it."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.residual_kpu import residual_to_kpu

rng = np.random.default_rng(3)


def _const(g, shape, s=0.5):
    return g.constant(rng.uniform(-s, s, shape).astype(np.float32))


def _block(c=8, e=16, hw=16, proj_kernel=1, act=O.NO_CLAMP, skip_on_kpu=True, x_scale=0.5, w_scale=0.5):
    """x (a KPU layer, or the CPU input) -> expand -> depthwise relu6 -> projection -> add x."""
    g = Graph()
    inp = g.input(0, (1, c, hw, hw))
    x = g.add(KO.FloatKpuConv(3), (inp, _const(g, (c, c, 3, 3), x_scale), _const(g, (c,))), "x") \
        if skip_on_kpu else inp
    h = g.add(KO.FloatKpuConv(1, act=(0.0, 6.0)), (x, _const(g, (e, c, 1, 1)), _const(g, (e,))), "expand")
    h = g.add(KO.FloatKpuConv(3, True, act=(0.0, 6.0)), (h, _const(g, (e, 1, 3, 3)), _const(g, (e,))), "dw")
    k = proj_kernel
    p = g.add(KO.FloatKpuConv(k), (h, _const(g, (c, e, k, k), w_scale), _const(g, (c,))), "project")
    y = g.add(O.Binary("add", act), (p, x), "add")
    g.outputs = [g.add(KO.FloatKpuConv(1), (y, _const(g, (4, c, 1, 1)), _const(g, (4,))), "head")]
    return g


def _samples(g, n=4):
    return [[rng.uniform(-1, 1, g.inputs[0].shape).astype(np.float32)] for _ in range(n)]


@pytest.mark.parametrize("w_scale,form", [(8.0, "fused"), (0.5, "pair")])
def test_the_add_becomes_one_layer_with_the_same_float_values(w_scale, form):
    """Projection weights large against the skip's weight d = s_h/s_x (~2.7 here): the fused layer
    keeps their precision; small ones would get a few codes next to the skip weight's 127, so the add
    is a layer of its own after the projection."""
    g = _block(w_scale=w_scale)
    out, done, kept = residual_to_kpu(g, CompileOptions(), _samples(g))
    assert done == [("add", form)] and kept == []
    assert not any(isinstance(n.op, O.Binary) for n in out.nodes)
    stacks = [n for n in out.nodes if isinstance(n.op, KO.KpuStack)]
    assert [[p.name for p in s.inputs] for s in stacks] == [["x", "dw" if form == "fused" else "project"]]
    layers = sum(isinstance(n.op, KO.FloatKpuConv) for n in out.nodes)
    assert layers == (5 if form == "fused" else 6)
    for s in _samples(g, 2):
        np.testing.assert_allclose(run(out, s)[0], run(g, s)[0], rtol=1e-5, atol=1e-5)


def test_a_fused_relu_is_the_layers_clamp_and_a_3x3_projection_pairs():
    g = _block(proj_kernel=3, act=(0.0, np.inf))
    out, done, _ = residual_to_kpu(g, CompileOptions(), _samples(g))
    assert done == [("add", "pair")]
    add = next(n for n in out.nodes if n.name == "add")
    assert isinstance(add.op, KO.FloatKpuConv) and add.op.act == (0.0, np.inf) and add.op.kernel == 1
    s = _samples(g, 1)[0]
    np.testing.assert_allclose(run(out, s)[0], run(g, s)[0], rtol=1e-5, atol=1e-5)


def test_the_add_stays_on_the_cpu_and_says_why():
    g = _block(skip_on_kpu=False)  # the skip is the graph input (CPU)
    out, done, kept = residual_to_kpu(g, CompileOptions(), _samples(g))
    assert done == [] and kept == [("add", "its operand 'input' is a CPU input, not a KPU layer's output")]
    g = _block(c=6, hw=16)  # 6 channels at width 16: the second part would share a line (4 per line)
    out, done, kept = residual_to_kpu(g, CompileOptions(), _samples(g))
    assert done == [] and "not a multiple of 4" in kept[0][1]
    assert residual_to_kpu(_block(), CompileOptions(target="cpu"))[1] == []


@pytest.mark.parametrize("hw,on_kpu", [(80, True), (160, False)])
def test_a_skip_that_would_not_fit_beside_the_block_stays_on_the_cpu(hw, on_kpu):
    """MobileNetV2 0.5 at 320x320: the stack holds the skip in KPU RAM from its layer to the add. At
    160x160 the expansion and the depthwise layer (0.94 MiB each) leave no room for it (0.94 MiB more
    with the projection's part): the add stays on the CPU and says so, instead of a KPU RAM overflow
    at emit. At 80x80 everything fits and the add is a KPU layer."""
    g = _block(c=16, e=32, hw=hw)
    out, done, kept = residual_to_kpu(g, CompileOptions(), _samples(g, 1))
    if on_kpu:
        assert [a for a, _ in done] == ["add"] and kept == []
    else:
        assert done == [] and kept[0][0] == "add"
        # the stack, the expansion and the depthwise output, 983040 B each, at the depthwise step
        assert kept == [("add", "KPU RAM: the skip 'x' would stay in KPU RAM through the block, 2949120 B "
                                "alive at once > 2097152 B")]


def test_a_sum_read_in_float_stays_on_the_cpu():
    """A graph output (or a CPU conv) reads the float sum: on the KPU it would be rounded once more."""
    g = _block()
    g.outputs = [g.outputs[0].inputs[0]]
    g.remove_dead()
    out, done, kept = residual_to_kpu(g, CompileOptions(), _samples(g))
    assert done == [] and kept == [("add", "its sum is read in float by 'add' (binary): a KPU layer would "
                                           "round it to 8 bits")]


def _stage(blocks=3, c=8, e=16, hw=16, pooled_skip=False, w_scale=0.5, phase_skip=False):
    """A MobileNetV2 stage: each block's sum read by the next block's expansion and by the next add
    (no transition layer between them), the last sum by a head layer. With `pooled_skip`, the first
    block's skip is the max pool of its input layer c, a twin KPU layer reading c's input (as
    legalize_kpu makes hand_landmark_lite_224's max_pooling2d), and its depthwise layer picks
    every other pixel. With `phase_skip`, the stage reads a phase (odd rows, even columns) of a
    KPU layer twice its size, cut by a CPU strided slice."""
    g = Graph()
    size = 2 * hw if phase_skip else hw
    inp = g.input(0, (1, c, size, size))
    x = g.add(KO.FloatKpuConv(3), (inp, _const(g, (c, c, 3, 3)), _const(g, (c,))), "x")
    if phase_skip:
        x = g.add(O.StridedSlice((0, 0, 1, 0), (1, c, size, size), (1, 1, 2, 2)), (x,), "phase")
    adds = []
    for k in range(blocks):
        src = x
        if pooled_skip and k == 0:
            w, b = _const(g, (c, c, 1, 1)), _const(g, (c,))
            src = g.add(KO.FloatKpuConv(1), (x, w, b), "c")
            x = g.add(KO.FloatKpuConv(1, pool="max_2_s2"), (x, w, b), "c/pooled")
        h = g.add(KO.FloatKpuConv(1, act=(0.0, 6.0)), (src, _const(g, (e, c, 1, 1)), _const(g, (e,))), f"expand{k}")
        pool = "left_top_2_s2" if pooled_skip and k == 0 else "bypass"
        h = g.add(KO.FloatKpuConv(3, True, pool=pool, act=(0.0, 6.0)), (h, _const(g, (e, 1, 3, 3)), _const(g, (e,))),
                  f"dw{k}")
        p = g.add(KO.FloatKpuConv(1), (h, _const(g, (c, e, 1, 1), w_scale), _const(g, (c,))), f"project{k}")
        x = g.add(O.Binary("add"), (p, x), f"add{k}")
        adds.append(x)
    g.outputs = [g.add(KO.FloatKpuConv(1), (x, _const(g, (4, c, 1, 1)), _const(g, (4,))), "head")]
    return g


PAIRS, FUSED_FIRST = ["pair"] * 3, ["fused", "pair", "pair"]  # a wider stream later: a coarser skip grid


@pytest.mark.parametrize("pooled_skip,w_scale,forms", [(False, 0.5, PAIRS), (True, 0.5, PAIRS), (False, 8.0, FUSED_FIRST)])
def test_a_chain_of_adds_goes_to_the_kpu_together(pooled_skip, w_scale, forms):
    """add0's sum is an operand of add1 and add1's of add2: decided one at a time, add0 would stay
    on the CPU for its float reader add1, and add1 for its CPU operand add0. Together, each reads
    the other's 8-bit output in KPU RAM, in either form; the float values are the same. A
    max-pooled skip (a stride-2 block's) is a residual connection too."""
    g = _stage(pooled_skip=pooled_skip, w_scale=w_scale)
    out, done, kept = residual_to_kpu(g, CompileOptions(), _samples(g))
    assert done == [(f"add{k}", form) for k, form in enumerate(forms)] and kept == []
    assert not any(isinstance(n.op, O.Binary) for n in out.nodes)
    stacks = [[p.name for p in n.inputs] for n in out.nodes if isinstance(n.op, KO.KpuStack)]
    first = "c/pooled" if pooled_skip else "x"
    parts = [("dw" if form == "fused" else "project") + str(k) for k, form in enumerate(forms)]
    assert stacks == [[skip, part] for skip, part in zip([first, "add0", "add1"], parts)]  # each sum the next skip
    for s in _samples(g, 2):  # float32 sums in another order, of outputs up to ~100 with large weights
        want = run(g, s)[0]
        np.testing.assert_allclose(run(out, s)[0], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_a_chain_read_in_float_at_its_end_stays_on_the_cpu_and_says_why():
    """The last sum is a graph output: add2 stays on the CPU, so add1 has a float reader, and so
    add0; each add says why, naming the add it depends on."""
    g = _stage()
    g.outputs = [g.outputs[0].inputs[0]]
    g.remove_dead()
    out, done, kept = residual_to_kpu(g, CompileOptions(), _samples(g))
    assert done == []
    assert kept == [(f"add{k}", f"its sum is read in float by '{reader}' (binary): a KPU layer would round it "
                                f"to 8 bits") for k, reader in ((0, "add1"), (1, "add2"), (2, "add2"))]


def test_a_sum_of_siblings_is_no_residual_connection():
    """Two layers over one input added (a decomposed conv's terms, kcc.passes.decompose_kernels) are
    no residual connection, even with a picked one among them: only a max pool is a pooled skip."""
    for pool in ("bypass", "left_top_2_s2"):
        g = Graph()
        inp = g.input(0, (1, 8, 16, 16))
        x = g.add(KO.FloatKpuConv(3), (inp, _const(g, (8, 8, 3, 3)), _const(g, (8,))), "x")
        a = g.add(KO.FloatKpuConv(1, pool=pool), (x, _const(g, (8, 8, 1, 1)), _const(g, (8,))), "a")
        b = g.add(KO.FloatKpuConv(3, pool=pool), (x, _const(g, (8, 8, 3, 3)), _const(g, (8,))), "b")
        y = g.add(O.Binary("add"), (a, b), "sum")
        g.outputs = [g.add(KO.FloatKpuConv(1), (y, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
        assert residual_to_kpu(g, CompileOptions(), _samples(g))[1:] == ([], [])



def test_a_skip_the_cpu_makes_is_uploaded_and_the_chain_after_it_stays_on_the_kpu():
    """deeplabv3's dilated blocks in phase space: the region's first skip is a phase of a KPU layer's
    output, cut by a CPU strided slice. A 1x1 identity layer uploads it into the first add's buffer;
    every later add then reads KPU layers (the chain of `_stage`)."""
    g = _stage(blocks=2, phase_skip=True)
    out, done, kept = residual_to_kpu(g, CompileOptions(), _samples(g))
    assert [name for name, _ in done] == ["add0", "add1"] and kept == []
    upload = next(n for n in out.nodes if n.name == "add0/upload")
    assert isinstance(upload.op, KO.FloatKpuConv) and upload.inputs[0].name == "phase"
    assert any(isinstance(n.op, KO.KpuStack) and n.inputs[0] is upload for n in out.nodes)
    for s in _samples(g, 2):
        np.testing.assert_allclose(run(out, s)[0], run(g, s)[0], rtol=1e-5, atol=1e-5)
