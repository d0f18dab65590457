"""kcc.passes.table_stream: a BlazeBlock's residual add as KPU layers over [the skip's channel groups;
the projection], their sums read by the next PReLU's tables as codes (issue #16 item 3)."""

import collections

import numpy as np
import pytest
from kpu_checks import RNG, rms_steps
from kpu_checks import const as _const

from kcc import latency
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.kmodel import Opcode
from kcc.options import CompileOptions
from kcc.passes import table_stream
from kcc.pipeline import compile_graph

rng = RNG
SLOPES = np.array([0.25, -0.3, 1.8, 0.6, 0.05, 1.2, 0.9, 2.5], np.float32)
_SCALES = np.array([1, 10, 0.1, 3, 0.5, 30, 2, 0.02], np.float32).reshape(1, 8, 1, 1)


def _blocks(n=2, c=8, hw=(24, 24), first_prelu=True):
    """A float add of the CPU through a per-channel PReLU (x + tanh(x): the tables quantize it), then
    n BlazeBlocks: a 5x5 depthwise (decomposed in channel groups read as codes), its 1x1 projection
    added to the block's input, a PReLU; a 1x1 layer reads the last. Channels' ranges 1500x apart."""
    g = Graph()
    x = g.input(0, (1, c, *hw))
    a = g.add(O.Binary("add"), (x, g.add(O.Unary("tanh"), (x,))), "add")
    y = g.add(O.PRelu(), (a, g.constant(SLOPES.reshape(1, -1, 1, 1), "alpha")), "prelu") if first_prelu else a
    for k in range(1, n + 1):
        h = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=c, act=(0.0, 6.0)),
                  (y, _const(g, (c, 1, 5, 5)), _const(g, (c,))), f"dw{k}")
        p = g.add(O.Conv2D(), (h, _const(g, (c, c, 1, 1)), _const(g, (c,))), f"proj{k}")
        a = g.add(O.Binary("add"), (y, p), f"add{k}")
        y = g.add(O.PRelu(), (a, g.constant((SLOPES * (1 + 0.1 * k)).reshape(1, -1, 1, 1), f"alpha{k}")), f"prelu{k}")
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (6, c, 1, 1)), _const(g, (6,))), "out")]
    return g


def _compile(state, monkeypatch, taken=True, **blocks):
    import kcc.passes.blaze_blocks as bb
    monkeypatch.setattr(bb, "STREAM_BLOCK_BYTES", 0)  # prelu_stream's relu pairs would take blocks this small
    if not taken:
        monkeypatch.setattr(table_stream, "MIN_CYCLES_PER_BYTE", float("inf"))
    rng.bit_generator.state = state
    calib = [[(rng.uniform(-1, 1, (1, 8, 24, 24)) * _SCALES).astype(np.float32)] for _ in range(8)]
    g = _blocks(**blocks)
    res = compile_graph(g, CompileOptions(input_type="float", decompose="fast"), samples=calib)
    return res, rms_steps(g, res.kmodel, calib)


@pytest.fixture(scope="module")
def state():
    return rng.bit_generator.state


def test_the_blocks_add_on_the_kpu_and_the_tables_read_the_sums(state, monkeypatch):
    """Both blocks' adds become layers over a stack; the kmodel keeps one float add (the first,
    x + tanh(x)), the first PReLU's quantize a channel only (8 of 24), no dequantize a channel for the
    adds, no more uploads: the stack's skip part is the upload of the 5x5's channel groups. Measured:
    CPU 6.35 -> 4.39 ms; rms 0.959 -> 0.982 output steps against the float graph (bar 1.05 x the CPU
    form's): a layer's grid is at most twice as coarse as each of its channels' own."""
    res, rms = _compile(state, monkeypatch)
    stacks = [n for n in res.float_graph.nodes if isinstance(n.op, KO.KpuStack)]
    assert sorted(s.name for s in stacks) == ["add1/stack", "add2/stack"]
    for s in stacks:  # the skip's channel groups (the tables' codes), then the projection
        assert [p.shape[1] for p in s.inputs] == [2, 2, 2, 2, 8], s.name
    adds = {p.node: p for p in res.placements if p.op == "add"}
    assert adds["add1"].on_kpu and adds["add2"].on_kpu and adds["add1"].reason == table_stream.TABLE_STREAM_FORM
    ops = collections.Counter(n.opcode for n in res.emitted.model.nodes)
    monkeypatch.undo()
    cpu, cpu_rms = _compile(state, monkeypatch, taken=False)
    cpu_ops = collections.Counter(n.opcode for n in cpu.emitted.model.nodes)
    assert not any(isinstance(n.op, KO.KpuStack) for n in cpu.float_graph.nodes)
    assert ops[Opcode.BINARY] == 1 and cpu_ops[Opcode.BINARY] == 3
    assert ops[Opcode.QUANTIZE] == 8 and cpu_ops[Opcode.QUANTIZE] == 24
    assert ops[Opcode.DEQUANTIZE] == 1 and ops[Opcode.TABLE_LOOKUP1D] == 24
    assert ops[Opcode.KPU_UPLOAD] == cpu_ops[Opcode.KPU_UPLOAD]
    saved = latency.estimate(cpu.emitted.model).cpu_ms - latency.estimate(res.emitted.model).cpu_ms
    assert saved > 1.5, saved
    assert rms <= 1.05 * cpu_rms, (rms, cpu_rms)


def test_a_layer_holds_channels_of_like_ranges():
    """At most STREAM_CHUNK channels a layer, in the order of their widths, a layer's widest at most
    STREAM_WIDTHS times its narrowest."""
    widths = np.array([1.0, 30.0, 0.1, 3.0, 0.5, 31.0, 2.0, 0.02] + [5.0] * 20)
    layers = table_stream.chunks(widths)
    assert sorted(np.concatenate(layers).tolist()) == list(range(len(widths)))
    for rows in layers:
        assert len(rows) <= table_stream.STREAM_CHUNK
        assert widths[rows].max() <= table_stream.STREAM_WIDTHS * widths[rows].min()
    assert [len(r) for r in layers] == [1, 1, 2, 2, 16, 4, 2]  # 0.02; 0.1; 0.5, 1; 2, 3; 5 x 16; 5 x 4; 30, 31


def test_the_skip_groups_own_uploads_write_into_the_stack(state, monkeypatch):
    """With a fan a channel group (not the batches of one), each group is uploaded for its own copy
    layer; those uploads are the stack's skip part, written where the copy layers read them: no
    upload more than the CPU form's, and kpu_sim's outputs as close to the float graph (bar 1.05 x
    the CPU form's rms; measured 0.904 -> 0.931)."""
    from kcc.passes import kernel_forms
    monkeypatch.setattr(kernel_forms, "batchable_fan", lambda *args: False)
    res, rms = _compile(state, monkeypatch)
    assert not any(isinstance(n.op, KO.KpuBatchStack) for n in res.float_graph.nodes)
    stacks = [n for n in res.graph.nodes if isinstance(n.op, KO.KpuConcat) and n.name.startswith("add")]
    assert len(stacks) == 2 and all([isinstance(p.op, KO.KpuUpload) for p in s.inputs] == [True] * 4 + [False]
                                    for s in stacks)
    fans = [n for n in res.graph.nodes if isinstance(n.op, KO.QuantKpuLayer) and isinstance(n.inputs[0].op, KO.KpuUpload)]
    assert {id(p) for s in stacks for p in s.inputs[:4]} <= {id(f.inputs[0]) for f in fans}  # what the copy layers read
    monkeypatch.setattr(table_stream, "MIN_CYCLES_PER_BYTE", float("inf"))
    cpu, cpu_rms = _compile(state, monkeypatch)
    ups = [[n.opcode for n in r.emitted.model.nodes].count(Opcode.KPU_UPLOAD) for r in (res, cpu)]
    assert ups[0] == ups[1], ups
    assert rms <= 1.05 * cpu_rms, (rms, cpu_rms)


def test_a_float_skip_is_read_in_the_groups_the_5x5_uploads(state, monkeypatch):
    """The first block's skip is a float add of the CPU, not tables (BlazePalm's FPN sum before its
    last 24x24 blocks): the stack's skip part is the channel ranges of it that the 5x5's groups
    quantize and upload anyway, each on its grid; no upload more than the CPU form's. Measured: rms
    0.924 -> 0.947 output steps against the float graph (bar 1.05 x the CPU form's)."""
    res, rms = _compile(state, monkeypatch, first_prelu=False)
    (stack,) = [n for n in res.float_graph.nodes if n.name == "add1/stack"]
    assert all(isinstance(p.op, O.StridedSlice) and p.inputs[0].name == "add" for p in stack.inputs[:-1])
    monkeypatch.setattr(table_stream, "MIN_CYCLES_PER_BYTE", float("inf"))
    cpu, cpu_rms = _compile(state, monkeypatch, first_prelu=False)
    ups = [[n.opcode for n in r.emitted.model.nodes].count(Opcode.KPU_UPLOAD) for r in (res, cpu)]
    assert ups[0] == ups[1], ups
    assert rms <= 1.05 * cpu_rms, (rms, cpu_rms)
