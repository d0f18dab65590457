"""Ops between KPU layers that stay on the CPU, on uint8 codes rather than dequantized (issue #16
item 3): binary ops the KPU does not take as nncase's quantized_binary (kcc.quant.cpu_binary), and a
nearest upsampling as data movement (kcc.quant.quantize.moves_values)."""

import numpy as np
import pytest
from kpu_checks import RNG, max_steps, rms_steps
from kpu_checks import const as _const

import kpu_sim
from kcc import latency
from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.kmodel import Opcode
from kcc.options import CompileOptions
from kcc.pipeline import compile_graph

rng = RNG


def _compile(g, shape):
    calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
    want = run(g, calib[0])[0]
    got = kpu_sim.load(res.kmodel).run(calib[0])[0].reshape(want.shape)
    return res, max_steps(got, want)


def _squeeze_excite(c=16, hw=(24, 20)):
    """1x1 conv -> x * sigmoid(fc(relu(fc(mean(x))))) -> 1x1 conv: MobileNetV3's block tail."""
    g = Graph()
    x = g.input(0, (1, 4, *hw))
    y = g.add(O.Conv2D(act=(0.0, 6.0)), (x, _const(g, (c, 4, 1, 1)), _const(g, (c,))))
    m = g.add(O.Reduce("mean", (2, 3), True), (y,))
    f = g.add(O.Conv2D(act=(0.0, np.inf)), (m, _const(g, (4, c, 1, 1)), _const(g, (4,))))
    f = g.add(O.Unary("logistic"), (g.add(O.Conv2D(), (f, _const(g, (c, 4, 1, 1)), _const(g, (c,)))),))
    gated = g.add(O.Binary("mul"), (y, f))
    g.outputs = [g.add(O.Conv2D(), (gated, _const(g, (6, c, 1, 1)), _const(g, (6,))))]
    return g


def test_a_squeeze_excite_gate_multiplies_the_codes():
    """The gate is quantized (16 values), repeated over the map by two concatenations and multiplied
    into the layer's codes by the same-shape loop; the product is uploaded to the next layer as it is.
    Measured: 1.92 output steps from float (+ 5 %), as the float form it replaces (dequantize, mul,
    quantize), whose maps are 4 bytes an element."""
    res, steps = _compile(_squeeze_excite(), (1, 4, 24, 20))
    nodes = res.emitted.model.nodes
    (qb,) = [n.body for n in nodes if n.opcode is Opcode.QUANTIZED_BINARY]
    assert tuple(qb.in_a_shape) == tuple(qb.in_b_shape) == (1, 16, 24, 20)
    assert not any(n.opcode is Opcode.BINARY for n in nodes)
    assert steps <= 2.02, steps


def test_an_add_of_two_branches_runs_on_codes():
    """Not a residual connection (residual_kpu's): two 3x3 layers over the same input, added, read by
    a 1x1 layer. Measured: 1.58 output steps from float (+ 5 %), as the float form."""
    g = Graph()
    x = g.input(0, (1, 4, 12, 10))
    a = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (x, _const(g, (8, 4, 3, 3)), _const(g, (8,))))
    b = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1))), (x, _const(g, (8, 4, 3, 3)), _const(g, (8,))))
    s = g.add(O.Binary("add", (0.0, np.inf)), (a, b))
    g.outputs = [g.add(O.Conv2D(), (s, _const(g, (6, 8, 1, 1)), _const(g, (6,))))]
    res, steps = _compile(g, (1, 4, 12, 10))
    names = [n.opcode for n in res.emitted.model.nodes]
    assert Opcode.QUANTIZED_BINARY in names and Opcode.BINARY not in names and Opcode.DEQUANTIZE in names
    assert steps <= 1.66, steps
    est = latency.estimate(res.emitted.model)
    assert "quantized_binary" in est.by_opcode()


def test_no_quantized_binary_keeps_the_float_op():
    """ncc's --no-quantized-binary: the gate multiplies dequantized values, as before kcc.quant.cpu_binary."""
    calib = [[rng.uniform(-1, 1, (1, 4, 24, 20)).astype(np.float32)] for _ in range(4)]
    res = compile_graph(_squeeze_excite(), CompileOptions(input_type="float", no_quantized_binary=True), samples=calib)
    names = [n.opcode for n in res.emitted.model.nodes]
    assert Opcode.BINARY in names and Opcode.QUANTIZED_BINARY not in names


@pytest.mark.parametrize("act", [(0.0, 6.0), O.NO_CLAMP])
def test_an_fpn_upsampling_moves_codes_into_the_concatenation(act):
    """FPN / YOLOv3-tiny: a stride-2 layer's map, through a 1x1 layer, upsampled x2 (nearest) and
    concatenated with the lateral map (which the stride-2 layer reads too) for a 1x1 layer. The
    upsampling repeats the codes (two concatenations of copies, no resize_image, no dequantize). With
    ReLU6 on both sides the concatenation's grid is the lateral layer's, which writes it in KPU RAM,
    the upsampled map uploaded into it; a linear 1x1 layer's map is 5x as wide, which would cost the
    stride-2 layer reading the lateral map 2 bits (kcc.quant.policy.SHARED_GRID_WIDENING): the
    concatenation stays on the CPU, as before. Measured: 2.85 and 2.48 output steps from float
    (+ 5 %), both what the float resize and CPU concatenation gave before."""
    g = Graph()
    x = g.input(0, (1, 4, 16, 12))
    a = g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=(0.0, 6.0)), (x, _const(g, (8, 4, 3, 3)), _const(g, (8,))))
    c = g.add(O.Conv2D((2, 2), ((0, 1), (0, 1)), act=(0.0, 6.0)), (a, _const(g, (8, 8, 3, 3)), _const(g, (8,))))
    p = g.add(O.Conv2D(act=act), (c, _const(g, (8, 8, 1, 1)), _const(g, (8,))))
    y = g.add(O.Concat(1), (g.add(O.Resize("nearest", (16, 12), False, False), (p,)), a))
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (6, 16, 1, 1)), _const(g, (6,))))]
    res, steps = _compile(g, (1, 4, 16, 12))
    names = [n.opcode for n in res.emitted.model.nodes]
    assert Opcode.RESIZE_IMAGE not in names and names.count(Opcode.CONCAT) == 2 + (act == O.NO_CLAMP)
    (concat,) = [p for p in res.placements if p.op == "concat"]
    assert concat.on_kpu == (act != O.NO_CLAMP), concat
    assert steps <= (2.99 if act != O.NO_CLAMP else 2.61), steps



def _prelu_block(hw, slopes, reader="skip"):
    """A float add of the CPU (x + tanh(x) here; BlazePalm's: a projection and its float skip) through a
    per-channel PReLU: the PReLU stays on the CPU. The channels' ranges differ (the input's channels
    are scaled apart by _SCALES), as a residual stream's do. Its `reader`: "skip", a 1x1 layer and a
    float add of its output to the PReLU (a residual stream's next block); "layer", a 1x1 layer alone;
    "groups", a 5x5 depthwise (kcc.passes.decompose_kernels' channel groups) and its 1x1 projection,
    added to the PReLU in float (BlazePalm's blocks)."""
    c = len(slopes)
    g = Graph()
    x = g.input(0, (1, c, *hw))
    a = g.add(O.Binary("add"), (x, g.add(O.Unary("tanh"), (x,))), "add")
    alpha = g.constant(np.asarray(slopes, np.float32).reshape(1, -1, 1, 1), "alpha")
    y = g.add(O.PRelu(), (a, alpha), "prelu")
    if reader == "groups":
        h = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=c, act=(0.0, 6.0)), (y, _const(g, (c, 1, 5, 5)),
                                                                                  _const(g, (c,))), "dw")
        y = g.add(O.Binary("add"), (y, g.add(O.Conv2D(), (h, _const(g, (c, c, 1, 1)), _const(g, (c,))))), "skip_add")
    elif reader == "skip":
        y = g.add(O.Binary("add"), (y, g.add(O.Conv2D(), (y, _const(g, (c, c, 1, 1)), _const(g, (c,))))), "skip_add")
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (6, c, 1, 1)), _const(g, (6,))))]
    return g


SLOPES = [0.25, -0.3, 1.8, 0.6, 0.05, 1.2, 0.9, 2.5]
_SCALES = np.array([1, 10, 0.1, 3, 0.5, 30, 2, 0.02], np.float32).reshape(1, 8, 1, 1)


def _scaled_compile(g, shape, state, **options):
    rng.bit_generator.state = state
    calib = [[(rng.uniform(-1, 1, shape) * _SCALES).astype(np.float32)] for _ in range(8)]
    res = compile_graph(g, CompileOptions(input_type="float", **options), samples=calib)
    return res, rms_steps(g, res.kmodel, calib)


def _tables_match_their_grids(model, slopes, out_grids=None):
    """Each table_lookup1d's 256 bytes in the kmodel are the PReLU of its channel's slope from the grid
    the quantize before it writes to the grid the dequantize after it reads (kcc.quant.cpu_table), or
    to `out_grids[k]` (kcc.quant.params.QuantParam), the grid the KPU layer reading the codes reads."""
    from kcc.kmodel import QuantParam as KQ
    from kcc.quant.cpu_table import prelu_table
    from kcc.quant.params import QuantParam
    nodes = [n.body for n in model.nodes]
    key = lambda r: (r.memory_type, r.start, r.size)  # noqa: E731
    at = [i for i, n in enumerate(model.nodes) if n.opcode is Opcode.TABLE_LOOKUP1D]
    assert len(at) == len(slopes)
    for k, i in enumerate(at):  # buffers are reused: the last writer before, the first reader after
        t = nodes[i]
        q = [b.quant_param for b in nodes[:i] if hasattr(b, "quant_param") and key(b.output) == key(t.input)][-1]
        if out_grids is None:
            d = [b.quant_param for b in nodes[i + 1:] if hasattr(b, "quant_param") and key(b.input) == key(t.output)][0]
        else:
            d = out_grids[k]
        assert isinstance(q, KQ)
        lut = np.frombuffer(model.constants[t.table.start:t.table.start + t.table.size], np.uint8)
        want = prelu_table(slopes[k], QuantParam(q.zero_point, q.scale), QuantParam(d.zero_point, d.scale))
        assert np.array_equal(lut, want)


def test_a_float_prelu_runs_as_a_table_a_channel(monkeypatch):
    """kcc.passes.prelu_tables: each channel of the add quantized on a grid of its own, looked up,
    dequantized; no float conv2d or max/min left of the PReLU. Its rms error in output steps is near
    the float form's (measured 0.603 against 0.582), its estimate lower (~41 cycles an element and 3
    nodes a channel against ~96 an element). The add being a quantized_binary candidate, its whole
    map was a calibration point that put every channel's view on one grid (kcc.quant.policy
    `share_view_grids`; the channel ranges' check below caught it)."""
    g = _prelu_block((24, 24), SLOPES)
    state = rng.bit_generator.state
    res, rms = _scaled_compile(g, (1, 8, 24, 24), state)
    ops = [n.opcode for n in res.emitted.model.nodes]
    assert ops.count(Opcode.TABLE_LOOKUP1D) == 8 and ops.count(Opcode.QUANTIZE) >= 8
    assert Opcode.CONV2D not in ops
    lows = {res.ranges[f"prelu/channel{k}"][0] for k in range(8)}
    assert len(lows) == 8  # a grid a channel
    _tables_match_their_grids(res.emitted.model, SLOPES)
    import kcc.passes.prelu_tables as pt
    monkeypatch.setattr(pt, "MIN_CYCLES_PER_BYTE", float("inf"))
    float_res, float_rms = _scaled_compile(g, (1, 8, 24, 24), state)
    float_ops = [n.opcode for n in float_res.emitted.model.nodes]
    assert Opcode.TABLE_LOOKUP1D not in float_ops and Opcode.CONV2D in float_ops
    saved = latency.estimate(float_res.emitted.model).cpu_ms - latency.estimate(res.emitted.model).cpu_ms
    assert saved > 0.4, saved  # of the float PReLU's ~1.1 ms (4608 elements at 400 MHz)
    assert rms <= 1.1 * float_rms, (rms, float_rms)


def test_a_layer_reading_the_whole_map_reads_the_tables_codes(monkeypatch):
    """A PReLU read by a KPU layer alone (BlazePalm's last, read by its heads): its tables write the
    layer's one grid (kcc.quant.policy `share_table_grids`), which the layer reads as they are: no
    dequantize of a channel and quantize of the map between them, one rounding fewer; the computed
    values as close to the float graph as with a grid a channel and a quantize after (rms 0.505
    against 0.506 output steps; bar 1.05 x), the CPU's estimate 3.05 -> 2.61 ms."""
    g = _prelu_block((24, 24), SLOPES, reader="layer")
    state = rng.bit_generator.state
    res, rms = _scaled_compile(g, (1, 8, 24, 24), state)
    ops = [n.opcode for n in res.emitted.model.nodes]
    assert ops.count(Opcode.TABLE_LOOKUP1D) == 8
    assert ops.count(Opcode.DEQUANTIZE) == 1  # the output's
    assert len({res.ranges[f"prelu/table{k}"] for k in range(8)}) == 1
    from kcc.quant.params import range_param
    _tables_match_their_grids(res.emitted.model, SLOPES, [range_param(res.ranges[f"prelu/table{k}"]) for k in range(8)])
    from kcc.quant import policy
    monkeypatch.setattr(policy, "share_table_grids", lambda g, ranges: None)
    apart, apart_rms = _scaled_compile(g, (1, 8, 24, 24), state)
    assert [n.opcode for n in apart.emitted.model.nodes].count(Opcode.DEQUANTIZE) == 9
    assert latency.estimate(res.emitted.model).cpu_ms < latency.estimate(apart.emitted.model).cpu_ms
    assert rms <= 1.05 * apart_rms, (rms, apart_rms)


def test_channel_groups_read_their_tables_codes(monkeypatch):
    """A 5x5 depthwise read in channel groups as 8-bit codes (decompose "fast") from a PReLU that runs
    a table a channel: each group is the concatenation of its channels' table codes, on one grid
    (kcc.passes.prelu_tables, kcc.quant.policy `share_table_grids`), not a slice of the dequantized
    map quantized again; the float add dequantizes the same codes. The CPU's estimate 4.63 -> 4.33 ms,
    the computed values about as close to the float graph as with a grid a channel and each group
    quantized (rms 0.822 against 0.812 output steps; bar 1.05 x)."""
    g = _prelu_block((24, 24), SLOPES, reader="groups")
    state = rng.bit_generator.state
    res, rms = _scaled_compile(g, (1, 8, 24, 24), state, decompose="fast")
    groups = [n for n in res.float_graph.nodes if isinstance(n.op, O.Concat) and n.name != "prelu"
              and all(p.name.startswith("prelu/table") for p in n.inputs)]
    assert len(groups) == 4  # fan_kpu's groups of 2 channels
    for n in groups:
        assert len({res.ranges[p.name] for p in n.inputs}) == 1, n.name
    read = {n.inputs[0].name for n in res.graph.nodes if isinstance(n.op, KO.Quantize)}
    assert not read & {n.name for n in groups}
    from kcc.quant import policy
    monkeypatch.setattr(policy, "share_table_grids", lambda g, ranges: None)
    apart, apart_rms = _scaled_compile(g, (1, 8, 24, 24), state, decompose="fast")
    ops, apart_ops = ([n.opcode for n in r.emitted.model.nodes] for r in (res, apart))
    assert ops.count(Opcode.QUANTIZE) < apart_ops.count(Opcode.QUANTIZE)
    assert latency.estimate(res.emitted.model).cpu_ms < latency.estimate(apart.emitted.model).cpu_ms
    assert rms <= 1.05 * apart_rms, (rms, apart_rms)


def test_a_layer_reading_one_channel_reads_that_tables_codes():
    """A KPU layer reading one channel of the PReLU (a channel slice) reads that channel's table codes as
    they are, on the table's own grid: no quantize of the slice, the table under its own name."""
    g = _prelu_block((24, 24), SLOPES)
    y = next(n for n in g.nodes if n.name == "prelu")
    one = g.add(O.StridedSlice((0, 3, 0, 0), (1, 4, 24, 24), (1, 1, 1, 1)), (y,), "one")
    g.outputs.append(g.add(O.Conv2D(), (one, _const(g, (4, 1, 1, 1)), _const(g, (4,))), "one_conv"))
    res, rms = _scaled_compile(g, (1, 8, 24, 24), rng.bit_generator.state)
    assert [n.opcode for n in res.emitted.model.nodes].count(Opcode.TABLE_LOOKUP1D) == 8
    conv = next(n for n in res.float_graph.nodes if n.name == "one_conv")
    assert conv.inputs[0].name == "prelu/table3"
    assert not any(isinstance(n.op, KO.Quantize) and "table3" in n.inputs[0].name for n in res.graph.nodes)
    assert rms < 1.0, rms  # the first output's, as test_a_float_prelu_runs_as_a_table_a_channel


def test_a_small_map_keeps_the_float_prelu():
    """At 6x6 three node dispatches a channel cost more than the float form saves: no table."""
    res, _ = _scaled_compile(_prelu_block((6, 6), SLOPES), (1, 8, 6, 6), rng.bit_generator.state)
    ops = [n.opcode for n in res.emitted.model.nodes]
    assert Opcode.TABLE_LOOKUP1D not in ops and Opcode.CONV2D in ops


def test_a_pyramid_reads_the_tables_codes_again_late(monkeypatch):
    """kcc.quant.skip_codes: the PReLU's map, read again by an add after the network went down to
    12x12 and back (an FPN's skip), is made again from its channels' codes right before the add: the
    same float32 values (outputs bit for bit), the float map not alive in between."""
    g = Graph()
    x = g.input(0, (1, 8, 24, 24))
    a = g.add(O.Binary("add"), (x, g.add(O.Unary("tanh"), (x,))), "add")
    alpha = g.constant(np.asarray(SLOPES, np.float32).reshape(1, -1, 1, 1), "alpha")
    y = g.add(O.PRelu(), (a, alpha), "prelu")
    down = g.add(O.Conv2D(), (y, _const(g, (16, 8, 1, 1)), _const(g, (16,))))
    down = g.add(O.Pool2D("max", (2, 2), (2, 2)), (down,))
    down = g.add(O.Conv2D(), (down, _const(g, (8, 16, 1, 1)), _const(g, (8,))))
    up = g.add(O.Resize("nearest", (24, 24)), (down,))
    s = g.add(O.Binary("add"), (y, up), "skip_add")
    g.outputs = [g.add(O.Conv2D(), (s, _const(g, (6, 8, 1, 1)), _const(g, (6,))))]
    state = rng.bit_generator.state
    res, _ = _scaled_compile(g, (1, 8, 24, 24), state)
    late = [n for n in res.graph.nodes if n.name.endswith("/late")]
    assert len(late) == 9  # 8 channels' dequantize and their concatenation
    import kcc.quant.quantize as qz
    monkeypatch.setattr(qz, "late_reads", lambda src, table: {})
    whole, _ = _scaled_compile(g, (1, 8, 24, 24), state)
    assert not any(n.name.endswith("/late") for n in whole.graph.nodes)
    rng.bit_generator.state = state
    sample = [(rng.uniform(-1, 1, (1, 8, 24, 24)) * _SCALES).astype(np.float32)]
    got = kpu_sim.load(res.kmodel).run(sample)[0]
    assert np.array_equal(got, kpu_sim.load(whole.kmodel).run(sample)[0])
    assert res.emitted.model.main_mem <= whole.emitted.model.main_mem
