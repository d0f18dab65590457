"""The 5x5 depthwise forms whose shifted copies the KPU makes (kcc.passes.kernel_forms): `stack_kpu`
(9 unit-shift copies, a 3x3 combine) and `copies_kpu` (25 copies, chained for offset 2, a 1x1 combine).
Each copy equals its input's codes shifted, each KPU layer the scalar reference, the whole the float
graph (bars: measured + 5 %). The device RAM they may take: tests/e2e/test_device_ram_room.py.
"""


import numpy as np
import pytest
from kpu_checks import (
    RNG,
    const,
    dw5x5_then_1x1,
    kpu_layers_match_the_scalar_reference,
    layer_maps,
    max_steps,
    opcodes,
    shift_of,
)

import kpu_sim
from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import fan_copy, moves_codes
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import kernel_forms
from kcc.passes.decompose_kernels import Form, rewrite
from kcc.pipeline import compile_graph

rng = RNG



STACK_KPU_CASES = {  # (channels, width, source, residual, group): 4, 2 and 1 channels per 64-byte line
    "float_input_w10": (4, 10, None, False, 0),
    "kpu_input_w20": (6, 20, "conv", False, 0),
    "prelu_residual_w40": (4, 40, "prelu", True, 0),
    # channel groups sliced off a KPU layer's output: the copies of each group on that layer's grid
    "kpu_input_in_groups_w14": (12, 14, "conv", False, 4),
}


def _copy_form(name: str, combine: str, per_group: int):
    """STACK_KPU_CASES[name]'s 5x5 depthwise compiled as the CPU-view `stack` and as `combine` (the same
    weights and samples both times); checks shared by the KPU-made copy forms: each form exact in float,
    `combine`'s rms within 1.05x of the stack's (one rounding either way: the copies add none), every
    layer on the KPU, `per_group` copies per channel group (twice with the residual), one upload of x
    (and of its residual): channel groups of a KPU layer's output are read in place
    (kcc.ir.kpu_ops.KpuChannelView), no pad, concat or slice, concatenations in place.
    Returns (res, calib, want, copies, layers)."""
    c, w, source, residual, group = STACK_KPU_CASES[name]
    shape = (1, 4, 12, w)
    state = rng.bit_generator.state
    rms = {}
    for form in ("stack", combine):
        rng.bit_generator.state = state
        g = Graph()
        g.outputs = [dw5x5_then_1x1(g, g.input(0, shape), c, source)]
        calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
        want = [run(g, s)[0] for s in calib]
        rewrite(g, g.find("dw"), Form((1, 1), (0, 0), form, group, residual=residual))
        g.remove_dead()
        np.testing.assert_allclose(run(g, calib[0])[0], want[0], atol=1e-5)  # each form is exact in float
        res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        err = np.concatenate([(program.run(s)[0].reshape(v.shape) - v).ravel() for s, v in zip(calib, want)])
        rms[form] = float(np.sqrt(np.mean(err ** 2)))
    assert rms[combine] <= 1.05 * rms["stack"], rms
    assert all(p.on_kpu for p in res.placements), res.placements
    groups = c // group if group else 1
    copies = per_group * (2 if residual else 1) * groups
    names = opcodes(res.emitted.model)
    layers = copies + groups + 1 + (source == "conv")
    assert names.count("kpu_conv2d") == layers, names
    assert names.count("kpu_upload") == (2 if residual else 1), names
    assert not {"pad", "concat", "strided_slice"} & set(names), names
    assert all(p.on_kpu for p in res.placements if p.op == "concat"), res.placements  # all in place
    return res, calib, want, copies, layers


@pytest.mark.parametrize("name", sorted(STACK_KPU_CASES))
def test_stack_kpu_shift_copies_are_exact_in_kpu_ram(name):
    """`stack_kpu`: a 5x5 depthwise as nine 3x3 depthwise KPU layers copying x shifted by (cy, cx) in
    {-1, 0, 1}^2, written side by side into one KPU RAM buffer, then one 3x3 KPU layer over the copies.
    Each copy equals the shifted input codes exactly, its border the input's zero point (pad value),
    on random weights and inputs spanning the whole range; each layer equals the scalar reference;
    no CPU pad, slice or concatenation; one upload per KPU input (x, and its residual), none when a
    KPU layer makes x; and the result agrees with the float graph as the CPU-view `stack` does."""
    c, w, source, residual, group = STACK_KPU_CASES[name]
    res, calib, want, copies, layers = _copy_form(name, "stack_kpu", 9)
    for sample in calib[:3]:
        assert kpu_layers_match_the_scalar_reference(res.kmodel, sample[0]) == layers
        shifted, levels = [], []
        for body, x_map, out in layer_maps(res.kmodel, sample[0]):
            shift = shift_of(body)
            if shift is None:
                continue
            pad = body.layer.pad_value
            padded = np.pad(x_map, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad)
            h, wd = x_map.shape[2:]
            np.testing.assert_array_equal(out, padded[:, :, 1 + shift[0]:1 + shift[0] + h, 1 + shift[1]:1 + shift[1] + wd])
            levels.append(len(np.unique(x_map)))
            shifted.append(shift)
        assert max(levels) > 100, levels  # x's codes span the range (a residual's, z +- gain/2)
        assert sorted(shifted) == sorted([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)] * (copies // 9))
    # the copies' grid is their input's (kcc.quant.policy.copy_grids): x's quantize or producing layer;
    # the residual's codes (quantized at gain x the resolution) hold gain x residual on that grid too
    layers_q = [n for n in res.graph.nodes if type(n.op).__name__ == "QuantKpuLayer" and "/shift" in n.name]
    assert len(layers_q) == copies and len({n.op.out_q for n in layers_q}) == 1, [n.op.out_q for n in layers_q]
    src = next(n for n in layers_q if "/residual" not in n.name).inputs[0]
    while type(src.op).__name__ in ("KpuUpload", "StridedSlice", "KpuDownload", "KpuChannelView", "Concat"):
        src = src.inputs[0]
    grid = src.op.out_q if source == "conv" else (src.op.zero_point, src.op.scale)
    assert layers_q[0].op.out_q == tuple(grid), (layers_q[0].op.out_q, grid)
    program = kpu_sim.load(res.kmodel)
    steps = max(max_steps(program.run(s)[0].reshape(v.shape), v) for s, v in zip(calib, want))
    assert steps <= STACK_KPU_MAX_STEPS[name][0], f"{name}: max error {steps:.2f} steps"


STACK_KPU_MAX_STEPS = {"float_input_w10": (1.60, 1.52), "kpu_input_w20": (2.52, 2.40), "prelu_residual_w40": (1.54, 1.46),
                       "kpu_input_in_groups_w14": (2.50, 2.39)}


@pytest.mark.parametrize("name", sorted(n for n, case in STACK_KPU_CASES.items() if not case[3]))
def test_fan_kpu_makes_a_groups_nine_copies_with_one_layer_exactly(name):
    """`fan_kpu`: a 5x5 depthwise as, per channel group, one 3x3 KPU layer (not depthwise) from the
    group's g channels to 9g, output channel j*g + i input channel i shifted by the j-th unit shift
    (kcc.ir.code_moves.fan_copy), then the 3x3 KPU layer over them. Every fan output channel equals its
    input channel's codes shifted, the border the input's zero point, on random weights and inputs
    spanning the whole range; each layer equals the scalar reference; the fan's grid is its input's
    (kcc.quant.policy.copy_grids); no CPU pad, slice or concatenation, channel groups of a KPU
    layer's output read in place; the result agrees with the float graph as the CPU-view `stack`
    does (one rounding, the combine's)."""
    c, w, source, residual, group = STACK_KPU_CASES[name]
    res, calib, want, fans, layers = _copy_form(name, "fan_kpu", 1)
    shifts = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    for sample in calib[:3]:
        assert kpu_layers_match_the_scalar_reference(res.kmodel, sample[0]) == layers
        seen = 0
        for body, x_map, out in layer_maps(res.kmodel, sample[0]):
            lay = body.layer
            if lay.depth_wise_layer or lay.out_channels != 9 * lay.in_channels:
                continue
            seen += 1
            g = lay.in_channels
            assert len(np.unique(x_map)) > 100  # x's codes span the range
            padded = np.pad(x_map, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=lay.pad_value)
            h, wd = x_map.shape[2:]
            for j, (cy, cx) in enumerate(shifts):  # kernel_terms.shift_terms' order
                np.testing.assert_array_equal(out[:, j * g:(j + 1) * g],
                                              padded[:, :, 1 + cy:1 + cy + h, 1 + cx:1 + cx + wd])
        assert seen == fans
    fan_q = [n for n in res.graph.nodes if type(n.op).__name__ == "QuantKpuLayer" and n.name.split("/")[-1].startswith("fan")]
    assert len(fan_q) == fans and len({n.op.out_q for n in fan_q}) == 1
    program = kpu_sim.load(res.kmodel)
    steps = max(max_steps(program.run(s)[0].reshape(v.shape), v) for s, v in zip(calib, want))
    assert steps <= FAN_KPU_MAX_STEPS[name][0], f"{name}: max error {steps:.2f} steps"


# (bar, measured): the rms is the stack's (`_copy_form`); the worst output step differs either way from
# stack_kpu's (STACK_KPU_MAX_STEPS, the same layers but for the copies): the weights' rounding moves with
# the inputs' moments, here of one fan buffer rather than nine copies
FAN_KPU_MAX_STEPS = {"float_input_w10": (1.97, 1.88), "kpu_input_w20": (2.21, 2.11), "kpu_input_in_groups_w14": (2.53, 2.41)}


def test_fan_copy_recognizes_only_a_fan():
    """kcc.ir.code_moves.fan_copy: a 3x3 layer (not depthwise) whose every output channel has one weight
    of exactly 1 copies codes (`moves_codes`); any other weight, a bias or a clamp does not."""
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))
    shifts = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    w = kernel_forms.fan_weights(4, shifts)

    def layer(weights, bias=None, act=O.NO_CLAMP):
        b = np.zeros(weights.shape[0], np.float32) if bias is None else bias
        return g.add(KO.FloatKpuConv(3, act=act), (x, g.constant(weights), g.constant(b)))

    fan = layer(w)
    assert fan_copy(fan) == [(i, s) for s in shifts for i in range(4)] and moves_codes(fan)
    twice = w.copy()
    twice[0, 1, 1, 1] = 1.0
    halved = w * np.float32(0.5)
    assert fan_copy(layer(twice)) is None and fan_copy(layer(halved)) is None
    assert fan_copy(layer(w, np.ones(36, np.float32))) is None and fan_copy(layer(w, act=(0.0, 6.0))) is None


# width -> (channels, group): 4, 2 and 1 channels per 64-byte line, every group on a line of its own
def _shifted(x_map: np.ndarray, offset: tuple[int, int], pad: int) -> np.ndarray:
    """x_map [N, C, H, W] shifted by offset (|dy|, |dx| <= 2): out[i, j] = x[i + dy, j + dx], `pad` outside."""
    h, w = x_map.shape[2:]
    padded = np.pad(x_map, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=pad)
    return padded[:, :, 2 + offset[0]:2 + offset[0] + h, 2 + offset[1]:2 + offset[1] + w]


@pytest.mark.parametrize("name", sorted(STACK_KPU_CASES))
def test_copies_kpu_shifts_by_whole_offsets_exactly_in_kpu_ram(name):
    """`copies_kpu`: a 5x5 depthwise as 25 copies of x shifted by each tap's offset (dy, dx) in -2..2,
    a unit shift by one 3x3 depthwise KPU layer, a shift by 2 by a second one reading a unit copy in
    place in the stack's KPU RAM buffer, then one 1x1 KPU layer over the copies. Every copy equals the
    input codes shifted by its whole offset, the border the input's zero point (a chain of two shifts
    too), on random weights and inputs spanning the whole range; each layer equals the scalar
    reference; no CPU pad, slice or concatenation; and the result agrees with the float graph as the
    CPU-view `stack` does (one rounding, the combine's)."""
    c, w, source, residual, group = STACK_KPU_CASES[name]
    res, calib, want, copies, layers = _copy_form(name, "copies_kpu", 25)
    program = kpu_sim.load(res.kmodel)
    for sample in calib[:3]:
        assert kpu_layers_match_the_scalar_reference(res.kmodel, sample[0]) == layers
        maps = [(body, x_map, out) for body, x_map, out in layer_maps(res.kmodel, sample[0]) if shift_of(body)]
        pad = {body.layer.pad_value for body, _, _ in maps}
        assert len(pad) == 1, pad  # one grid: x's (and its residual's codes on it)
        pad = pad.pop()
        # the sources: what the (0, 0) copies copy (x's channel groups, and their residuals)
        sources = [x_map for body, x_map, _ in maps if shift_of(body) == (0, 0)]
        assert len(sources) == copies // 25
        assert max(len(np.unique(s)) for s in sources) > 100  # x's codes span the range
        found = []
        for _, _, out in maps:
            hits = [(i, (dy, dx)) for i, s in enumerate(sources) for dy in range(-2, 3) for dx in range(-2, 3)
                    if s.shape == out.shape and np.array_equal(out, _shifted(s, (dy, dx), pad))]
            assert hits, "a copy is no shift of its source"
            found.append(hits[0])
        # each source copied once by each offset: 16 of them by a chain of two unit shifts
        assert sorted(found) == sorted((i, (dy, dx)) for i in range(len(sources))
                                       for dy in range(-2, 3) for dx in range(-2, 3))
    steps = max(max_steps(program.run(s)[0].reshape(v.shape), v) for s, v in zip(calib, want))
    assert steps <= COPIES_KPU_MAX_STEPS[name][0], f"{name}: max error {steps:.2f} steps"


# (bar, measured): the same rms as the stack's (above), a worst output step that differs either way from
# stack_kpu's (STACK_KPU_MAX_STEPS), the 1x1 combine's weights rounded on another grid than the 3x3's
COPIES_KPU_MAX_STEPS = {"float_input_w10": (2.17, 2.07), "kpu_input_w20": (1.99, 1.89),
                        "prelu_residual_w40": (1.51, 1.44), "kpu_input_in_groups_w14": (2.96, 2.82)}


PHASES_KPU_CASES = {  # (channels, out channels, H, W, padding, source, residual, group, depthwise)
    "same_even_w40": (4, 4, 12, 40, ((1, 2), (1, 2)), "conv", False, 0, True),
    "prelu_residual_w20": (4, 4, 12, 20, ((1, 2), (1, 2)), "prelu", True, 0, True),
    # channel groups read in place off a KPU layer's output, the phases (8 wide) 4 channels a line
    "groups_w16": (12, 12, 16, 16, ((1, 2), (1, 2)), "conv", False, 4, True),
    "dense_stem_w20": (4, 8, 12, 20, ((1, 2), (1, 2)), None, False, 0, False),
    "explicit_2_w12": (4, 4, 12, 12, ((2, 2), (2, 1)), "conv", False, 0, True),
    "explicit_odd_13x11": (4, 4, 13, 11, ((3, 0), (3, 0)), "conv", False, 0, True),  # 9 phases
    "wide_w132": (4, 4, 8, 132, ((1, 2), (1, 2)), "conv", False, 0, True),
}
#: the zero placement of the CPU-view polyphase `stack` whose layer phases_kpu's stacked one is (its terms'
#: taps in the same places, in the same order: kernel_terms.phase_axis), where it has the same phases and
#: reads them on the same grid (the CPU stack's channel groups of a KPU layer's output are quantized
#: again, each on its own range: groups_w16's zero points 127, 110, 156 against x's 131)
SAME_STACK = {"same_even_w40": (1, 1), "prelu_residual_w20": (1, 1), "dense_stem_w20": (1, 1),
              "explicit_2_w12": (0, 0), "wide_w132": (1, 1)}


def _stride2_5x5(g, x, c, oc, pad, source, depthwise):
    """A stride-2 5x5 (relu6) read by a 1x1 KPU layer, after `source` as in kpu_checks.dw5x5_then_1x1."""
    if source == "prelu":
        x = g.add(O.PRelu(), (x, g.constant(rng.uniform(0.05, 0.3, (1, x.shape[1], 1, 1)).astype(np.float32))))
    elif source == "conv":
        x = g.add(O.Conv2D(), (x, const(g, (c, x.shape[1], 1, 1)), const(g, (c,))))
    y = g.add(O.Conv2D((2, 2), pad, groups=c if depthwise else 1, act=(0.0, 6.0)),
              (x, const(g, (oc, 1 if depthwise else c, 5, 5)), const(g, (oc,))), "dw")
    return g.add(O.Conv2D(), (y, const(g, (6, oc, 1, 1)), const(g, (6,))))


@pytest.mark.parametrize("name", sorted(PHASES_KPU_CASES))
def test_phases_kpu_picks_stride_phases_exactly_in_kpu_ram(name):
    """`phases_kpu`: a stride-2 5x5 as 3x3 depthwise KPU layers picking x's stride phases (one tap of 1
    at (1 + a, 1 + b), pool `left_top_2_s2`: P[i, j] = x[2i + a, 2j + b]), written side by side into one
    KPU RAM buffer, then one 3x3 KPU layer over them at stride 1 with the KPU's own padding. Each
    phase equals the picked input codes exactly, its border the input's zero point; each layer equals
    the scalar reference; no CPU pad, slice or concatenation, one upload per KPU input (none of a KPU
    layer's x); and the result is the CPU-view polyphase `stack`'s, code for code, where that stack has
    the same phases (else it agrees with the float graph as that stack does: one rounding)."""
    c, oc, h, w, pad, source, residual, group, depthwise = PHASES_KPU_CASES[name]
    shape = (1, c if source is None else 4, h, w)
    state = rng.bit_generator.state
    rms, outs = {}, {}
    for form in ("stack", "phases_kpu"):
        rng.bit_generator.state = state
        g = Graph()
        g.outputs = [_stride2_5x5(g, g.input(0, shape), c, oc, pad, source, depthwise)]
        calib = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(8)]
        want = [run(g, s)[0] for s in calib]
        split = (2, 2) if form == "stack" else (1, 1)
        rewrite(g, g.find("dw"), Form(split, SAME_STACK.get(name, (0, 0)) if form == "stack" else (0, 0), form, group,
                                      residual=residual))
        g.remove_dead()
        np.testing.assert_allclose(run(g, calib[0])[0], want[0], atol=1e-5)
        res = compile_graph(g, CompileOptions(input_type="float"), samples=calib)
        program = kpu_sim.load(res.kmodel)
        outs[form] = [program.run(s)[0].reshape(v.shape) for s, v in zip(calib, want)]
        err = np.concatenate([(o - v).ravel() for o, v in zip(outs[form], want)])
        rms[form] = float(np.sqrt(np.mean(err ** 2)))
    if name in SAME_STACK:
        for a, b in zip(outs["stack"], outs["phases_kpu"]):
            np.testing.assert_array_equal(a, b)
    assert rms["phases_kpu"] <= 1.05 * rms["stack"], rms
    assert all(p.on_kpu for p in res.placements), res.placements
    groups = c // group if group else 1
    phases = (9 if name.startswith("explicit_odd") else 4) * groups * (2 if residual else 1)
    names = opcodes(res.emitted.model)
    layers = phases + groups + 1 + (source == "conv")
    assert names.count("kpu_conv2d") == layers, names
    assert names.count("kpu_upload") == (2 if residual else 1), names
    assert not {"pad", "concat", "strided_slice"} & set(names), names
    for sample in calib[:3]:
        assert kpu_layers_match_the_scalar_reference(res.kmodel, sample[0]) == layers
        picked, levels = [], []
        for body, x_map, out in layer_maps(res.kmodel, sample[0]):
            shift = shift_of(body)
            if shift is None:
                continue
            assert body.layer.pool_type == 5  # left_top_2_s2
            padded = np.pad(x_map, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=body.layer.pad_value)
            oh, ow = out.shape[2:]
            want_map = padded[:, :, 1 + shift[0]::2, 1 + shift[1]::2][:, :, :oh, :ow]
            np.testing.assert_array_equal(out, want_map)
            assert (oh, ow) == (h // 2, w // 2)
            levels.append(len(np.unique(x_map)))
            picked.append(shift)
        assert len(picked) == phases and max(levels) > 100, levels  # x's codes span the range
    steps = max(max_steps(program.run(s)[0].reshape(v.shape), v) for s, v in zip(calib, want))
    assert steps <= PHASES_KPU_MAX_STEPS[name][0], f"{name}: max error {steps:.2f} steps"


# (bar, measured): the worst output step of the phases_kpu builds above (bars: measured + 5 %)
PHASES_KPU_MAX_STEPS = {"same_even_w40": (2.18, 2.08), "prelu_residual_w20": (1.38, 1.31), "groups_w16": (3.33, 3.17),
                        "dense_stem_w20": (1.82, 1.73), "explicit_2_w12": (2.13, 2.03), "explicit_odd_13x11": (1.58, 1.50),
                        "wide_w132": (2.64, 2.51)}
