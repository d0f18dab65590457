"""Memory planning inside the compiler: buffer lifetimes from the node schedule, the header's
main_mem, the MemoryReport, the CLI lines, and byte-identical kmodels from repeated compiles."""

from pathlib import Path

import numpy as np

from kcc import kmodel
from kcc.alloc import plan_errors
from kcc.cli import main
from kcc.emit import emit
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.pipeline import compile_model

ROOT = Path(__file__).resolve().parents[2]
MOBILENET = ROOT / "datasets" / "mobilenet_v1_0.25_128" / "mobilenet_v1_0.25_128.tflite"


def _graph() -> Graph:
    """x -> exp -> reshape -> neg (output 0); exp also feeds reshape2 (output 1) and tanh (dead end)."""
    g = Graph()
    x = g.input(0, (1, 4, 4, 4))
    a = g.add(O.Unary("exp"), (x,), "a")
    r = g.add(O.Reshape((1, 64)), (a,), "r")
    b = g.add(O.Unary("neg"), (r,), "b")
    g.add(O.Unary("tanh"), (x,), "c")
    g.outputs = [b, g.add(O.Reshape((64,)), (a,), "r2")]
    return g


def test_lifetimes_aliases_inputs_and_outputs():
    em = emit(_graph())
    life = {b.name: (b.birth, b.death) for b in em.buffers}
    assert em.node_names == ["a", "b", "c"]
    last = len(em.node_names)
    assert life == {
        "input": (-1, 2),  # born before the first node, read by c at step 2
        "a": (0, last),  # read through the reshape r by b, and aliased by the output r2: lives to the end
        "b": (1, last),  # an output
        "c": (2, 2),  # written, never read
    }
    assert "r" not in life and "r2" not in life  # reshapes are aliases, not buffers
    mem = em.memory
    assert plan_errors(em.buffers, mem.main.plan, 8) == []
    assert em.model.main_mem == mem.main.peak == 4 * 256  # all four are alive at step 2
    ranges = {r.start for r in em.model.outputs}
    assert ranges == {mem.main.plan.offsets["b"], mem.main.plan.offsets["a"]}


def test_report_lines():
    em = emit(_graph())
    lines = em.memory.summary_lines(kmodel_bytes=1000)
    text = "\n".join(lines)
    const = len(em.model.constants)  # the blob as written: only the output record (kmodel/output_record.py)
    assert const == 48  # two outputs: 2 x 16 B of shape4 + 16 B of count, size and magic
    assert lines[0] == (f"Main memory: constants {const} B + working memory {em.model.main_mem} B"
                        f" = {const + em.model.main_mem} B")
    assert "optimal (lower bound" in text and "peak at step" in text
    assert lines[-1].startswith("Device RAM: kmodel 1000 B + working memory")
    assert "bare SDK (5.5 MiB) fits" in lines[-1] and "MaixPy (3.5 MiB) fits" in lines[-1]
    table = em.memory.table_lines()
    assert table[0].startswith("main memory buffers (align 8")
    assert [ln.split()[-1] for ln in table[2:]] == ["input", "a", "b", "c"]


def test_two_compiles_give_identical_kmodels_and_zero_budget_is_first_fit():
    opts = CompileOptions(inference_type="float")
    a = compile_model(MOBILENET, opts)
    b = compile_model(MOBILENET, opts)
    assert a.kmodel == b.kmodel
    assert kmodel.read(a.kmodel).main_mem == a.emitted.memory.main.peak == a.emitted.model.main_mem
    ff = compile_model(MOBILENET, CompileOptions(inference_type="float", max_allocator_solve_secs=0))
    assert ff.emitted.memory.main.method == "first fit"
    assert ff.emitted.model.main_mem == ff.emitted.memory.main.first_fit_peak >= a.emitted.model.main_mem


def test_cli_prints_memory_summary_and_table(tmp_path, capsys):
    out = tmp_path / "m.kmodel"
    assert main(["compile", str(MOBILENET), str(out), "--inference-type", "float", "--memory-report"]) == 0
    text = capsys.readouterr().out
    assert "Working memory usage: 393216 B" in text
    assert "Main memory: constants 0 B + working memory 393216 B = 393216 B" in text
    assert "peak at step 2 'MobilenetV1/MobilenetV1/Conv2d_1_pointwise/Relu6'" in text
    assert f"Device RAM: kmodel {out.stat().st_size} B + working memory 393216 B" in text
    assert "main memory buffers (align 8" in text
    assert "     131072    262144    393216       2..3  MobilenetV1/MobilenetV1/Conv2d_1_pointwise/Relu6" in text


def test_float_inputs_are_not_overwritten_before_they_are_read():
    """The plan keeps x alive until its last reader: running the kmodel gives the evaluator's values."""
    import kpu_sim
    from kcc.eval.interpreter import run

    g = _graph()
    x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    want = run(g, [x])
    got = kpu_sim.load(kmodel.write(emit(_graph()).model)).run([x])
    for w, o in zip(want, got):
        np.testing.assert_allclose(o.reshape(w.shape), w, rtol=1e-6)


def test_a_concatenation_is_computed_in_place():
    """x -> exp -> a, x -> neg -> b, concat(a, b) on channels -> tanh: a and b are written straight into
    the concatenation's two blocks (no concat node, no buffers of their own), and kpu_sim agrees with
    the float evaluator. A block read by anything else, or a concat over a non-leading axis, is copied."""
    import kpu_sim
    from kcc.eval.interpreter import run

    def graph(extra_reader: bool, axis: int = 1) -> Graph:
        g = Graph()
        x = g.input(0, (1, 3, 4, 5))
        a = g.add(O.Unary("exp"), (x,), "a")
        b = g.add(O.Unary("neg"), (x,), "b")
        c = g.add(O.Concat(axis), (a, b), "c")
        g.outputs = [g.add(O.Unary("tanh"), (c,), "t")] + ([g.add(O.Unary("abs"), (a,), "a2")] if extra_reader else [])
        return g

    xi = np.random.default_rng(3).uniform(-1, 1, (1, 3, 4, 5)).astype(np.float32)
    em = emit(graph(False))
    assert em.node_names == ["a", "b", "t"]
    life = {b.name: (b.birth, b.death) for b in em.buffers}
    assert "a" not in life and "b" not in life and life["c"] == (0, 2)  # born with its first block
    assert life["t"] == (2, 3)  # a unary op never writes over its input (restrict pointers)
    assert em.model.main_mem == 480 + 480  # c and t (the input's 240 B before)
    got = kpu_sim.load(kmodel.write(em.model)).run([xi])[0]
    np.testing.assert_allclose(got.reshape(1, 6, 4, 5), run(graph(False), [xi])[0], rtol=1e-5, atol=1e-7)
    assert "c" in emit(graph(True)).node_names  # a is also read by a2: copied
    assert "c" in emit(graph(False, axis=2)).node_names  # blocks interleave per channel: copied


def test_element_wise_ops_write_over_an_input_read_for_the_last_time():
    """prelu as nncase runs it: pos = max(x, 0), neg = min(x, 0), scaled = neg * a, out = pos + scaled.
    neg reads x last (so writes over it), scaled over neg, out over pos: two maps at the peak, not
    three; an input read later (x by pos) or a graph input is never overwritten."""
    import kpu_sim
    from kcc.eval.interpreter import run

    g = Graph()
    x0 = g.input(0, (1, 2, 3, 4))
    x = g.add(O.Unary("neg"), (x0,), "x")
    zero = g.constant(np.zeros((), np.float32), "zero")
    pos = g.add(O.Binary("max"), (x, zero), "pos")
    neg = g.add(O.Binary("min"), (x, zero), "neg")
    scaled = g.add(O.Binary("mul"), (neg, g.constant(np.full((1, 2, 1, 1), -0.5, np.float32), "a")), "scaled")
    g.outputs = [g.add(O.Binary("add"), (pos, scaled), "out")]
    xi = np.random.default_rng(4).uniform(-2, 1, (1, 2, 3, 4)).astype(np.float32)
    want = run(g, [xi])[0]
    em = emit(g)
    assert em.node_names == ["x", "pos", "neg", "scaled", "out"]
    assert {b.name for b in em.buffers} == {"input", "x", "pos"}  # neg/scaled over x, out over pos
    assert em.model.main_mem == 2 * 96  # x and pos (without writing in place: x, pos and neg)
    assert (xi < 0).any() and (xi > 0).any()  # both branches of the prelu
    got = kpu_sim.load(kmodel.write(em.model)).run([xi])[0]
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_a_depthwise_1x1_conv_writes_over_an_input_read_for_the_last_time(monkeypatch):
    """A float per-channel conv (groups = channels, 1x1, stride 1, no padding: lower_to_neutral's form
    of a per-channel PReLU/binary/clamp) writes over its input when it reads it last: nncase's float
    conv2d kernel reads in[i] just before it writes out[i] and has no `restrict` pointers. kpu_sim gives
    the same bits as the kmodel without it, and main_mem shrinks; an input read later is kept, and a
    conv that mixes elements (3x3) never writes in place."""
    import kpu_sim
    from kcc.emit import storage
    from kcc.eval.interpreter import run

    rng = np.random.default_rng(5)
    wd = rng.uniform(-2, 2, (3, 1, 1, 1)).astype(np.float32)
    w3 = rng.uniform(-1, 1, (3, 1, 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, 3).astype(np.float32)

    def graph(kernel: np.ndarray = wd, later_reader: bool = False) -> Graph:
        g = Graph()
        x0 = g.input(0, (1, 3, 5, 4))
        x = g.add(O.Unary("neg"), (x0,), "x")
        pad = ((1, 1), (1, 1)) if kernel.shape[2] == 3 else ((0, 0), (0, 0))
        y = g.add(O.Conv2D(groups=3, padding=pad, act=(-1.5, 1.5)),
                  (x, g.constant(kernel, "w"), g.constant(b, "b")), "y")
        g.outputs = [g.add(O.Binary("add"), (y, x if later_reader else x0), "out")]
        return g

    xi = rng.uniform(-2, 2, (1, 3, 5, 4)).astype(np.float32)
    em = emit(graph())
    assert {bf.name for bf in em.buffers} == {"input", "x"}  # y over x, out over y
    assert em.model.main_mem == 2 * 240  # the input and x (without: input, x and y)
    got = kpu_sim.load(kmodel.write(em.model)).run([xi])[0]
    with monkeypatch.context() as m:
        m.setattr(storage, "_pointwise_conv", lambda n: False)
        separate = emit(graph())
    assert {bf.name for bf in separate.buffers} == {"input", "x", "y"}
    assert separate.model.main_mem == 3 * 240
    np.testing.assert_array_equal(got, kpu_sim.load(kmodel.write(separate.model)).run([xi])[0])
    want = run(graph(), [xi])[0]
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-6, atol=1e-7)
    assert (np.abs(-xi * wd.reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1)) > 1.5).any()  # the clamp acts
    assert "y" in {bf.name for bf in emit(graph(later_reader=True)).buffers}  # x is read by out too
    assert "y" in {bf.name for bf in emit(graph(w3)).buffers}  # a 3x3 window reads neighbours


def test_a_contiguous_slice_is_a_view_of_its_input():
    """x -> neg -> y [1, 4, 3, 5]; s = y[:, 1:3] (channels 1-2: one contiguous range of y's bytes) is a
    view of y at byte offset 1 * 15 * 4: no strided_slice node, no buffer of its own, and y lives until
    s's last reader. y + 1 reads y for the last time *before* s's reader, so it must not write over
    y in place (the view's reader counts as y's). y[:, :, 1:] (rows: a range per channel) stays a node.
    kpu_sim gives the evaluator's values."""
    import kpu_sim
    from kcc.eval.interpreter import run

    def graph(begin: tuple, end: tuple) -> Graph:
        g = Graph()
        x = g.input(0, (1, 4, 3, 5))
        y = g.add(O.Unary("neg"), (x,), "y")
        s = g.add(O.StridedSlice(begin, end, (1, 1, 1, 1)), (y,), "s")
        z = g.add(O.Binary("add"), (y, g.constant(np.ones((), np.float32), "one")), "z")
        g.outputs = [z, g.add(O.Unary("abs"), (s,), "t")]
        return g

    xi = np.random.default_rng(6).uniform(-1, 1, (1, 4, 3, 5)).astype(np.float32)
    em = emit(graph((0, 1, 0, 0), (1, 3, 3, 5)))
    assert em.node_names == ["y", "z", "t"], em.node_names
    life = {b.name: (b.birth, b.death) for b in em.buffers}
    assert "s" not in life and life["y"] == (0, 2)  # read through the view by t at step 2
    assert "z" in life  # not written over y: the view is read after z
    t_in = [n.body for n in em.model.nodes if isinstance(n.body, kmodel.Unary)][-1]  # abs
    assert t_in.input.start == em.memory.main.plan.offsets["y"] + 15 * 4 and t_in.input.size == 2 * 15 * 4
    for begin, end in (((0, 1, 0, 0), (1, 3, 3, 5)), ((0, 0, 1, 0), (1, 4, 3, 5))):
        g = graph(begin, end)
        want = run(g, [xi])
        got = kpu_sim.load(kmodel.write(emit(graph(begin, end)).model)).run([xi])
        for w, o in zip(want, got):
            np.testing.assert_array_equal(o.reshape(w.shape), w)
    assert "s" in emit(graph((0, 0, 1, 0), (1, 4, 3, 5))).node_names  # rows 1-2 of every channel: copied


def test_a_reshaped_view_reads_at_the_views_offset():
    """[A, B, h, w] -> [B, A, h, w] as kcc.passes.phase_dilated swaps the outer axes of a map's phase
    classes: a concatenation along axis 1 of each slice t[a] (a view at byte offset a * B*h*w*4)
    reshaped to [B, 1, h, w]. Each concat input starts at its own view's offset (a reshape of a view
    keeps the offset), and kpu_sim gives the transpose's values."""
    import kpu_sim
    from kcc.eval.interpreter import run

    a, b, h, w = 3, 2, 2, 5
    g = Graph()
    x = g.input(0, (a, b, h, w))
    t = g.add(O.Unary("neg"), (x,), "t")
    views = [g.add(O.Reshape((b, 1, h, w)), (g.add(O.StridedSlice((i, 0, 0, 0), (i + 1, b, h, w), (1, 1, 1, 1)),
                                                    (t,), f"t{i}"),), f"t{i}/as") for i in range(a)]
    g.outputs = [g.add(O.Concat(1), views, "swapped")]
    em = emit(g)
    assert em.node_names == ["t", "swapped"], em.node_names
    cat = next(n.body for n in em.model.nodes if isinstance(n.body, kmodel.Concat))
    base = em.memory.main.plan.offsets["t"]
    assert [r.start for r in cat.inputs] == [base + i * b * h * w * 4 for i in range(a)]
    xi = np.random.default_rng(7).uniform(-1, 1, (a, b, h, w)).astype(np.float32)
    got = kpu_sim.load(kmodel.write(em.model)).run([xi])[0]
    np.testing.assert_array_equal(got.reshape(b, a, h, w), -xi.transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(got.reshape(b, a, h, w), run(g, [xi])[0])
