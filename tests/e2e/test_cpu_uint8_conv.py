"""A conv the KPU does not take runs on uint8 codes on the CPU (kcc.quant.cpu_conv): nncase's
quantized_conv2d, one node a run of channels whose weights share a grid, bit-exact against a numpy
reference of the runtime's integer loop (nncase v0.2 neutral_kernels.h, kpu_semantics.md §4.4)."""

import numpy as np
from kpu_checks import RNG
from kpu_checks import const as _const

import kcc.kmodel as km
import kpu_sim
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.kernel_cost import RUN_SPAN, channel_runs
from kcc.pipeline import compile_graph
from kcc.quant.params import range_param
from kcc.report import summary


def _reference(x: np.ndarray, body: km.QuantizedConv2D) -> np.ndarray:
    """The runtime's loop on x's codes [C, H, W] for a depthwise body, in numpy int64: taps outside
    the input add nothing; value * mul carried half up, shifted, offset, clamped."""
    c, (fh, fw) = body.in_shape.c, (body.filter_h, body.filter_w)
    (t, b), (lft, r) = body.padding_h, body.padding_w
    xv = np.pad(x.astype(np.int64) + body.input_offset, ((0, 0), (t, b), (lft, r)))
    w = body.weights.reshape(c, fh, fw).astype(np.int64) + body.filter_offset
    oh = (xv.shape[1] - fh) // body.stride_h + 1
    ow = (xv.shape[2] - fw) // body.stride_w + 1
    value = np.broadcast_to(body.bias.astype(np.int64)[:, None, None], (c, oh, ow)).copy()
    for ky in range(fh):
        for kx in range(fw):
            win = xv[:, ky:ky + oh * body.stride_h:body.stride_h, kx:kx + ow * body.stride_w:body.stride_w]
            value += w[:, ky, kx, None, None] * win
    scaled = (value * body.output_mul + (1 << (body.output_shift - 1))) >> body.output_shift
    return np.clip(scaled + body.output_offset, 0, 255).astype(np.uint8)


def _dw5_between_kpu_layers(stride: int = 1, big: float = 3.0):
    """pw (KPU) -> 5x5 depthwise (left on the CPU) -> head (KPU); channel 3's weights `big` times the
    others, channel 7's 1/10, so they need grids of their own."""
    g = Graph()
    x = g.input(0, (1, 8, 12, 12))
    y = g.add(O.Conv2D((1, 1), ((0, 0), (0, 0)), act=(0.0, 6.0)), (x, _const(g, (16, 8, 1, 1)), _const(g, (16,))), "pw")
    w = RNG.normal(0, 0.3, (16, 1, 5, 5)).astype(np.float32)
    w[3] *= big
    w[7] *= 0.1
    pad = ((2, 2), (2, 2)) if stride == 1 else ((1, 2), (1, 2))
    b = RNG.uniform(-1, 1, 16).astype(np.float32)
    y = g.add(O.Conv2D((stride, stride), pad, (1, 1), 16, (0.0, 6.0)), (y, g.constant(w), g.constant(b)), "dw5")
    g.outputs = [g.add(O.Conv2D(), (y, _const(g, (4, 16, 1, 1)), _const(g, (4,))), "head")]
    calib = [[RNG.uniform(-1, 1, (1, 8, 12, 12)).astype(np.float32)] for _ in range(4)]
    return g, calib, w, b


def _float_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: tuple) -> np.ndarray:
    """The float depthwise conv of real x [C, H, W], clamped to relu6."""
    (t, bo), (lft, r) = pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (t, bo), (lft, r)))
    fh, fw = w.shape[-2:]
    oh, ow = (xp.shape[1] - fh) // stride + 1, (xp.shape[2] - fw) // stride + 1
    y = np.broadcast_to(b.astype(np.float64)[:, None, None], (len(b), oh, ow)).copy()
    for ky in range(fh):
        for kx in range(fw):
            y += w[:, 0, ky, kx, None, None] * xp[:, ky:ky + oh * stride:stride, kx:kx + ow * stride:stride]
    return np.clip(y, 0.0, 6.0)


def test_channel_runs_share_a_grid_only_within_run_span():
    w = np.ones((6, 1, 3, 3), np.float32) * np.array([1, 1.5, 1.9, 5, 0.1, 0.12], np.float32)[:, None, None, None]
    w[:, 0, 0, 0] = -0.01  # every channel's range includes 0 and a little below
    runs = channel_runs(w)
    assert runs == [(0, 3), (3, 4), (4, 6)], runs
    for o0, o1 in runs:
        flat = w[o0:o1].reshape(o1 - o0, -1)
        span = flat.max() - min(flat.min(), 0)
        own = flat.max(axis=1) - np.minimum(flat.min(axis=1), 0)
        assert span <= RUN_SPAN * own.min() + 1e-6


def test_a_5x5_depthwise_left_on_the_cpu_is_bit_exact_uint8_convs():
    """Issue #16: never a float round trip. No float conv2d, no dequantize / quantize around it: the
    KPU layer's codes go to quantized_conv2d nodes (channel 3 and channel 7 each in a run of their
    own) whose outputs the next KPU layer uploads; each node's output equals the integer loop on the
    codes it read, and is within a code of the float conv of those codes on the output's grid."""
    for stride in (1, 2):
        g, calib, w, b = _dw5_between_kpu_layers(stride)
        res = compile_graph(g, CompileOptions(input_type="float", decompose="off"), samples=calib)
        nodes = res.emitted.model.nodes
        names = [n.opcode.kmodel_name for n in nodes]
        assert "conv2d" not in names and names.count("dequantize") == 1, names
        convs = [n.body for n in nodes if n.opcode is km.Opcode.QUANTIZED_CONV2D]
        runs = [(b.input.start, b.in_shape.c) for b in convs]
        assert len(convs) >= 3 and sum(c for _, c in runs) == 16, runs
        starts = sorted(runs)
        assert all(s1 == s0 + c0 * 144 for (s0, c0), (s1, _) in zip(starts, starts[1:])), starts  # in place
        assert sum(b.in_shape.c == 1 for b in convs) >= 2, runs  # channels 3 and 7 alone
        program = kpu_sim.load(res.kmodel)
        seen = []

        def trace(index, opcode, body, _outs, seen=seen, program=program):
            if opcode is km.Opcode.QUANTIZED_CONV2D:
                c = body.in_shape.c
                x = program.memory.read(body.input, np.uint8, c * 144).reshape(c, 12, 12)
                out = program.memory.read(body.output, np.uint8, body.output.size).reshape(c, 12 // stride, -1)
                seen.append((x, body, out))

        program.run(calib[0], trace=trace)
        assert len(seen) == len(convs)
        x_q, y_q = range_param(res.ranges["pw"]), range_param(res.ranges["dw5"])
        pad = ((2, 2), (2, 2)) if stride == 1 else ((1, 2), (1, 2))
        worst = 0
        for x, body, out in seen:
            np.testing.assert_array_equal(out, _reference(x, body))
            c0 = sum(b.in_shape.c for _, b, _ in seen if b.input.start < body.input.start)
            c1 = c0 + body.in_shape.c
            y = y_q.quantize(_float_conv(x_q.dequantize(x), w[c0:c1], b[c0:c1], stride, pad))
            worst = max(worst, int(np.abs(out.astype(int) - y.astype(int)).max()))
        assert worst <= 1, f"stride {stride}: {worst} codes from the float conv"  # measured: 1


def test_the_placement_says_the_conv_runs_on_uint8_codes():
    g, calib, _, _ = _dw5_between_kpu_layers()
    res = compile_graph(g, CompileOptions(input_type="float", decompose="off"), samples=calib)
    (p,) = [p for p in summary.placements(res, res.latency) if p.node == "dw5"]
    assert not p.on_kpu and "runs on uint8 codes (nncase's quantized_conv2d" in p.reason, p.reason


def test_weights_too_large_for_the_output_grid_keep_the_float_conv():
    """A channel whose weights are 30x the others' (the output grid is the others'): its 8-bit weights
    would move its outputs by whole steps (11 codes, measured), more error than the output's own
    rounding (the calibration's moments say so), so the conv stays float. At stride 2 (no moments)
    only the range estimate's backstop decides: at 1000x."""
    for stride, big in ((1, 30.0), (2, 1000.0)):
        g, calib, _, _ = _dw5_between_kpu_layers(stride, big=big)
        res = compile_graph(g, CompileOptions(input_type="float", decompose="off"), samples=calib)
        names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
        assert "conv2d" in names and "quantized_conv2d" not in names, (stride, names)


def test_a_float_input_keeps_the_float_conv():
    """A conv whose input is computed in float on the CPU (a PReLU) reads it unrounded; quantizing it
    for a uint8 conv would round it: it stays the float conv."""
    g = Graph()
    x = g.input(0, (1, 8, 12, 12))
    a = g.add(O.PRelu(), (x, g.constant(RNG.uniform(0.05, 0.3, (1, 8, 1, 1)).astype(np.float32))))
    y = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), (1, 1), 8), (a, _const(g, (8, 1, 5, 5)), _const(g, (8,))), "dw5")
    g.outputs = [g.add(O.Conv2D(act=(0.0, 6.0)), (y, _const(g, (4, 8, 1, 1)), _const(g, (4,))), "head")]
    calib = [[RNG.uniform(-1, 1, (1, 8, 12, 12)).astype(np.float32)] for _ in range(4)]
    res = compile_graph(g, CompileOptions(input_type="float", decompose="off"), samples=calib)
    names = [n.opcode.kmodel_name for n in res.emitted.model.nodes]
    assert "conv2d" in names and "quantized_conv2d" not in names, names
