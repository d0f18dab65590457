"""Checks the end-to-end K210 tests share: every KPU layer of a kmodel against the scalar reference
(tests/kpu_sim/kpu_reference.py), the maps a layer read and wrote, an error in output steps; and the
random source of their weights and samples, RNG, which tests/e2e/conftest.py reseeds from each test's
name (a test's data depend on its name only, not on the tests that ran before)."""

import importlib.util
import sys
import zlib
from pathlib import Path

import numpy as np

import kcc.kmodel as km
import kpu_sim
from kcc.ir import ops as O

RNG = np.random.default_rng(5)


def reseed(name: str) -> None:
    """RNG's state for the test `name` (tests/e2e/conftest.py, before every test)."""
    RNG.bit_generator.state = np.random.default_rng(zlib.crc32(name.encode())).bit_generator.state


def const(g, shape, lo=-1.0, hi=1.0):
    """A constant of graph g, uniform in [lo, hi) from RNG."""
    return g.constant(RNG.uniform(lo, hi, shape).astype(np.float32))


def max_steps(got, want):
    return float(np.abs(got - want).max() / ((want.max() - min(want.min(), 0)) / 255))


def rms_steps(g, kmodel: bytes, samples) -> float:
    """kpu_sim's rms error against the float graph g, in steps of the output's range (0 included) over
    255, the mean over the samples (each a list of input arrays)."""
    from kcc.eval.interpreter import run
    program = kpu_sim.load(kmodel)
    errs = []
    for s in samples:
        want = run(g, s)[0]
        got = program.run(s)[0].reshape(want.shape)
        errs.append(np.sqrt(np.mean((got - want) ** 2)) / ((want.max() - min(want.min(), 0)) / 255))
    return float(np.mean(errs))


def scalar_reference():
    """tests/kpu_sim/kpu_reference.py (kpu_semantics.md §3 in Python ints, no code shared with
    kpu_sim), loaded by path: only tests/support is on sys.path."""
    path = Path(__file__).resolve().parents[1] / "kpu_sim" / "kpu_reference.py"
    spec = importlib.util.spec_from_file_location("kpu_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("kpu_reference", module)
    spec.loader.exec_module(module)
    return module


def kpu_layers_match_the_scalar_reference(kmodel: bytes, x: np.ndarray) -> int:
    """Run the kmodel on kpu_sim; every kpu_conv2d's output map, read from KPU RAM, must equal the
    scalar reference layer run on the input map it read. Returns the number of layers checked."""
    ref = scalar_reference()
    program = kpu_sim.load(kmodel)
    nodes = program.model.nodes
    pending, checked = {}, []

    def shape(body, side):
        lay = body.layer
        if side == "in":
            return body.batches, lay.in_channels, lay.in_height, lay.in_width
        return body.batches, lay.out_channels, lay.out_height, lay.out_width

    def trace(index, opcode, body, _outs):
        if opcode is km.Opcode.KPU_CONV2D:
            lay, src = body.layer, pending.pop(index)
            k, dw = lay.filter_size, bool(lay.depth_wise_layer)
            per_channel = (k, k) if dw else (lay.in_channels, k, k)
            w = np.asarray(body.weights, np.uint8).reshape(lay.out_channels, *per_channel)
            bn = body.batch_norm
            layer = ref.Layer(src.shape, lay.out_channels, w, k=k, depthwise=dw, pool=int(lay.pool_type),
                              pad_value=lay.pad_value, arg_x=lay.arg_x, shift_x=lay.shr_x, arg_w=lay.arg_w,
                              shift_w=lay.shr_w, arg_add=lay.arg_add,
                              bn=[(int(bn.norm_mul[o]), int(bn.norm_shift[o]), int(bn.norm_add[o]))
                                  for o in range(lay.out_channels)],
                              act=[(s.x_start, s.y_mul, s.shift_number, s.bias)
                                   for s in body.activation.segments])
            got = program.memory.download(body.kpu_output(), shape(body, "out"))
            np.testing.assert_array_equal(got, ref.reference_layer(layer, src), err_msg=f"node {index}")
            checked.append(index)
        if index + 1 < len(nodes) and nodes[index + 1].opcode is km.Opcode.KPU_CONV2D:
            nxt = nodes[index + 1].body
            pending[index + 1] = program.memory.download(nxt.kpu_input(), shape(nxt, "in"))

    program.run([x], trace=trace)
    return len(checked)


def layer_maps(kmodel: bytes, x: np.ndarray) -> list[tuple[km.KpuConv2D, np.ndarray, np.ndarray]]:
    """(body, input map, output map) of every kpu_conv2d, both read from KPU RAM right after it ran."""
    program = kpu_sim.load(kmodel)
    maps = []

    def trace(index, opcode, body, _outs):
        if opcode is km.Opcode.KPU_CONV2D:
            lay = body.layer
            shape_in = (body.batches, lay.in_channels, lay.in_height, lay.in_width)
            shape_out = (body.batches, lay.out_channels, lay.out_height, lay.out_width)
            maps.append((body, program.memory.download(body.kpu_input(), shape_in),
                         program.memory.download(body.kpu_output(), shape_out)))

    program.run([x], trace=trace)
    return maps


def dw5x5_then_1x1(g, x, c, source=None):
    """A 5x5 depthwise (relu6) read by a 1x1 KPU layer; `source` "prelu" puts a PReLU (a float tensor
    of the CPU) before it, "conv" a 1x1 KPU layer (its input is then uint8 codes in KPU RAM)."""
    if source == "prelu":
        x = g.add(O.PRelu(), (x, g.constant(RNG.uniform(0.05, 0.3, (1, c, 1, 1)).astype(np.float32))))
    elif source == "conv":
        x = g.add(O.Conv2D(), (x, const(g, (c, x.shape[1], 1, 1)), const(g, (c,))))
    y = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=c, act=(0.0, 6.0)), (x, const(g, (c, 1, 5, 5)), const(g, (c,))),
              "dw")
    return g.add(O.Conv2D(), (y, const(g, (6, c, 1, 1)), const(g, (6,))))


def shift_of(body) -> tuple[int, int] | None:
    """(cy, cx) of a kpu_conv2d that copies its input shifted: depthwise 3x3 whose weight codes are its
    zero point (-arg_x) but for one tap per channel, the same tap in every channel."""
    lay = body.layer
    if not lay.depth_wise_layer or lay.filter_size != 3:
        return None
    w = np.asarray(body.weights, np.int64).reshape(lay.out_channels, 3, 3) + lay.arg_x
    taps = {tuple(map(tuple, np.argwhere(ch != 0))) for ch in w}
    if len(taps) != 1 or len(next(iter(taps))) != 1:
        return None
    a, b = next(iter(taps))[0]
    return a - 1, b - 1


def opcodes(model: km.KModel) -> list[str]:
    """The kmodel's node opcodes, with a kpu_upload's row padding for DMA (kcc.quant.kpu_ram.upload:
    a concat right before the upload, whose output is the upload's input, of a width a multiple of 64)
    counted as part of that upload."""
    nodes, names = model.nodes, []
    for i, n in enumerate(nodes):
        nxt = nodes[i + 1] if i + 1 < len(nodes) else None
        if (n.opcode is km.Opcode.CONCAT and nxt is not None and nxt.opcode is km.Opcode.KPU_UPLOAD
                and nxt.body.input == n.body.output and nxt.body.in_shape[3] % 64 == 0):
            continue
        names.append(n.opcode.kmodel_name)
    return names
