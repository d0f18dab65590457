"""nncase v0.2's quantization building blocks (kpu_semantics.md §4.1): C roundf, fixup_range,
get_quant_param and get_fixed_mul.

Two kinds of oracle: values worked out by hand from the rules in §4.1, and the fields of kmodels
written by the real ncc (tests/reference), which those functions must reproduce exactly: the input
quantizer of the iris model from its calibration rows, the multipliers of quantized_binary from the
quant params of its neighbours (§4.4), and every batch-norm and activation (mul, shift) pair (§4.3),
which get_fixed_mul must give back when handed the value the pair stands for.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import refkit

from kcc.errors import KmodelError
from kcc.kmodel.model import KModel, read_file
from kcc.kmodel.types import MemoryRange
from kcc.quant.params import FLT_MIN, QuantParam, get_fixed_mul, get_quant_param, get_range, round_half_away
from kcc.target.quant_rules import fixup_range

F32 = np.float32
KMODELS = refkit.SHIPPED / "ncc-outputs" / "kmodels"
IRIS_ROWS = refkit.SHIPPED / "ncc-outputs" / "datasets" / "iris_raw"


# --- round_half_away: C roundf, halves away from zero (§ notation: round() = C round/roundf) -----------

@pytest.mark.parametrize("v, want", [
    (0.5, 1), (1.5, 2), (2.5, 3), (126.5, 127), (-0.5, -1), (-1.5, -2), (-2.5, -3), (-126.5, -127),
    (0.25, 0), (0.75, 1), (-0.75, -1), (3.0, 3), (-0.0, 0), (8388609.0, 8388609),  # 2^23 + 1
])
def test_round_half_away_rounds_halves_away_from_zero(v, want):
    assert round_half_away(v) == want
    assert round_half_away(F32(v)) == want


def test_round_half_away_just_below_a_half_rounds_down():
    # the largest float32 below 0.5 (and below 2.5): in float32, 0.49999997 + 0.5 would round up to 1
    below_half = np.nextafter(F32(0.5), F32(0))
    below_2_5 = np.nextafter(F32(2.5), F32(0))
    assert round_half_away(below_half) == 0 and round_half_away(-below_half) == 0
    assert round_half_away(below_2_5) == 2 and round_half_away(-below_2_5) == -2


def test_round_half_away_works_elementwise():
    v = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 4.5, 5.5], F32)
    np.testing.assert_array_equal(round_half_away(v), [-3, -2, -1, 1, 2, 3, 5, 6])


def test_quantize_rounds_a_tie_away_from_zero_and_saturates():
    # q = clamp(roundf(x*s + z), 0, 255) (§4.1 quantize): x*1 + 128 = 126.5 -> 127, 129.5 -> 130
    q = QuantParam(128, 1.0).quantize(np.array([-1.5, 1.5, -500.0, 500.0], F32))
    np.testing.assert_array_equal(q, [127, 130, 0, 255])


# --- fixup_range: clamp to +-1000, minimum width (0.1 if empty, else 0.01), contains 0 -------------------

@pytest.mark.parametrize("lo, hi, want", [
    (-0.5, 0.5, (-0.5, 0.5)),  # nothing to fix
    (1.0, 5.0, (0.0, 5.0)),  # must contain 0: lo -> 0
    (-5.0, -1.0, (-5.0, 0.0)),  # hi -> 0
    (-2000.0, 1e9, (-1000.0, 1000.0)),  # clamped to +-1000
    (-0.02, -0.005, (-0.02, 0.0)),  # width 0.015 >= 0.01: kept, then hi -> 0
    (-0.004, 0.003, (-0.004, 0.006)),  # width 0.007 < 0.01: hi = lo + 0.01
    (-1e-4, 1e-4, (-1e-4, 0.0099)),  # width 2e-4 < 0.01
    (0.2, 0.205, (0.0, 0.21)),  # hi = 0.2 + 0.01 first, then lo -> 0
    (0.5, 0.5, (0.0, 0.6)),  # empty range: width 0.1, then lo -> 0
    (-3.0, -3.0, (-3.0, 0.0)),  # empty: hi = -2.9, then hi -> 0
    (0.0, 0.0, (0.0, 0.1)),
])
def test_fixup_range(lo, hi, want):
    got = fixup_range(lo, hi)
    # the arithmetic is float32 (§4.1), so the hand values hold to a float32 ulp
    assert got == pytest.approx(want, abs=1e-6)


def test_fixup_range_keeps_a_width_between_the_minimum_and_the_empty_width():
    # hi is recomputed as lo + (hi - lo) in float32 (§4.1), which may move it by an ulp
    assert fixup_range(-0.004, 0.008) == pytest.approx((-0.004, 0.008), abs=1e-8)


def test_get_range_starts_its_maximum_at_flt_min():
    # nncase's get_range starts max at FLT_MIN, so an all-negative tensor reports max = 1.2e-38 (§4.1)
    assert get_range(np.array([-3.0, -1.0, np.nan, -np.inf], F32)) == (-3.0, FLT_MIN)
    assert FLT_MIN == pytest.approx(1.17549435e-38, rel=1e-8)


# --- get_quant_param: s = 255 / (hi - lo), z = roundf(-lo * s) after fixup -----------------------------

def test_get_quant_param_rounds_a_half_zero_point_away_from_zero():
    # [-253, 257]: s = 255/510 = 0.5, -lo*s = 126.5 -> z = 127 (half to even would give 126)
    assert get_quant_param(-253.0, 257.0) == QuantParam(127, 0.5)


@pytest.mark.parametrize("lo, hi, want_z, want_s", [
    (-1.0, 1.0, 128, 127.5),  # -lo*s = 127.5 -> 128
    (0.0, 1.0, 0, 255.0),
    (-0.5, 0.5, 128, 255.0),
    (2.0, 6.0, 0, 42.5),  # fixed up to [0, 6]
    (-6.0, -2.0, 255, 42.5),  # fixed up to [-6, 0]
    (0.3, 0.3, 0, 637.5),  # fixed up to [0, 0.4]
])
def test_get_quant_param(lo, hi, want_z, want_s):
    p = get_quant_param(lo, hi)
    assert p.zero_point == want_z
    assert p.scale == pytest.approx(want_s, rel=1e-6)


# --- get_fixed_mul: v = m * 2^e (frexp), bits = max_bits - signed --------------------------------------

@pytest.mark.parametrize("v, max_bits, max_shift, signed, want_mul, want_shift", [
    (0.0, 22, 15, True, 0, 0),  # v == 0 -> (0, 0)
    (0.75, 16, 20, True, 24576, 15),  # |v| <= 1: t = min(20 + 0, 15) = 15, mul = 0.75 * 2^15
    (-0.75, 16, 20, True, -24576, 15),
    (0.75, 16, 20, False, 49152, 16),  # unsigned: all 16 bits
    (1.0, 16, 16, True, 16384, 14),  # v = 0.5 * 2^1 is not > 1: t = 15, shift = 15 - 1
    (2.0, 16, 16, True, 16384, 13),  # |v| > 1: shift = min(16, 15 - 2), mul = 0.5 * 2^15
    (100.0, 16, 16, True, 25600, 8),  # 0.78125 * 2^7: shift = 15 - 7
    (3.0, 32, 32, True, 1610612736, 29),  # 0.75 * 2^31
    (3.0, 22, 4, True, 48, 4),  # max_shift binds: shift = min(4, 21 - 2), mul = 0.75 * 2^6
    (0.001, 22, 15, True, 33, 15),  # 0.512 * 2^-9: t = min(15 - 9, 21) = 6, mul = 32.768
    (1e-6, 22, 15, True, 0, 15),  # 0.524288 * 2^-19: shift stays at max_shift, mul 0.0328 -> 0
    (2999872.0, 16, 16, True, 23437, -7),  # 0.7152 * 2^22: shift = 15 - 22 < 0, mul = 23436.5 -> 23437
])
def test_get_fixed_mul_by_hand(v, max_bits, max_shift, signed, want_mul, want_shift):
    fm = get_fixed_mul(v, max_bits, max_shift, signed)
    assert (fm.rounded_mul, fm.shift) == (want_mul, want_shift)


def test_get_fixed_mul_splits_a_value_exactly_within_its_ranges():
    """Over eleven decades: mul * 2^-shift is the float32 value exactly (only scaled by a power of
    two), the shift never exceeds max_shift, |mul| < 2^bits, and mul uses all its bits (>= 2^(bits-1))
    whenever the shift was not clamped."""
    rng = np.random.default_rng(20)
    values = (rng.uniform(0.5, 1.0, 400) * 10.0 ** rng.uniform(-6, 5, 400)).astype(F32)
    values[::3] *= -1
    for max_bits, max_shift, signed in [(22, 15, True), (16, 20, True), (32, 32, True), (22, 255, True),
                                        (16, 16, False)]:
        bits = max_bits - 1 if signed else max_bits
        for v in values:
            fm = get_fixed_mul(float(v), max_bits, max_shift, signed)
            assert fm.shift <= max_shift
            assert abs(fm.mul) < 2.0 ** bits and abs(fm.rounded_mul) <= 2 ** bits
            assert np.ldexp(np.float64(fm.mul), -fm.shift) == np.float64(v)
            if fm.shift < max_shift:
                assert abs(fm.mul) >= 2.0 ** (bits - 1)


# --- pinned to the fields of ncc's own kmodels (tests/reference) ---------------------------------------

@cache
def _shipped_kmodels() -> tuple[tuple[str, KModel], ...]:
    """Every kmodel v4 under tests/reference (the v3 iris of nncase v0.1 is rejected and left out)."""
    out = []
    for path in sorted(refkit.SHIPPED.rglob("*.kmodel")):
        try:
            out.append((str(path.relative_to(refkit.SHIPPED)), read_file(path)))
        except KmodelError:
            continue
    return tuple(out)


@pytest.mark.parametrize("run", ["iris_u8_no_clip_ff", "iris_u8_no_clip"])
def test_iris_input_quantizer_is_get_quant_param_of_the_calibration_rows(run):
    """ncc compiled iris with no_clip on the 12 rows of datasets/iris_raw and no --input-mean/std, so
    the graph input's range is the union of the rows' ranges (§4.2), [0.2, 7.1], fixed up to [0, 7.1]
    (it must contain 0), and its param is what the uint8 input's dequantize node carries."""
    rows = np.concatenate([np.fromfile(p, F32) for p in sorted(Path(IRIS_ROWS).glob("*.bin"))])
    assert rows.size == 48
    model = read_file(KMODELS / f"{run}.kmodel")
    first = model.nodes[0]
    assert first.name == "dequantize"
    want = first.body.quant_param
    got = get_quant_param(float(rows.min()), float(rows.max()))
    assert (got.zero_point, got.scale) == (want.zero_point, want.scale)


def _same_range(a: MemoryRange, b: MemoryRange) -> bool:
    return (a.memory_type, a.start, a.size) == (b.memory_type, b.start, b.size)


def _param_read(nodes, index: int, r: MemoryRange) -> QuantParam | None:
    """The quant param of the uint8 tensor in `r` as node `index` reads it: a quantize node that wrote
    it, or a dequantize node that reads what the last writer (e.g. table_lookup1d) left there."""
    for j in range(index - 1, -1, -1):
        body = nodes[j].body
        if getattr(body, "output", None) is not None and _same_range(body.output, r):
            if nodes[j].name == "quantize":
                return body.quant_param
            return _param_of_output(nodes, j, r)
    return None


def _param_of_output(nodes, index: int, r: MemoryRange) -> QuantParam | None:
    """The param of the tensor node `index` writes to `r`, from a dequantize that reads it before
    anything overwrites it."""
    for k in range(index + 1, len(nodes)):
        body = nodes[k].body
        if nodes[k].name == "dequantize" and _same_range(body.input, r):
            return body.quant_param
        if getattr(body, "output", None) is not None and _same_range(body.output, r):
            return None
    return None


def test_quantized_binary_multipliers_follow_from_the_neighbouring_quant_params():
    """§4.4 quantized_binary: add/sub/min/max bring a to the common scale with get_fixed_mul(s_b, 16, 16)
    and b with get_fixed_mul(s_a, 16, 16); div does so for a only and leaves b as (1, 0); the output is
    get_fixed_mul(s_y / (s_a s_b), 32, 32), or s_y / s_a for div. Input offsets are -z, the output
    offset z."""
    checked_inputs = checked_outputs = 0
    for name, model in _shipped_kmodels():
        nodes = model.nodes
        for i, node in enumerate(nodes):
            if node.name != "quantized_binary":
                continue
            b = node.body
            pa, pb = _param_read(nodes, i, b.input_a), _param_read(nodes, i, b.input_b)
            py = _param_of_output(nodes, i, b.output)
            where = f"{name} node {i} ({b.binary_op.name.lower()})"
            if pa is None or pb is None:
                continue
            div = b.binary_op.name == "DIV"
            fa = get_fixed_mul(pb.scale, 16, 16, True)
            fb = get_fixed_mul(pa.scale, 16, 16, True)
            b_mul = (1, 0) if div else (fb.rounded_mul, fb.shift)
            want_a = (-pa.zero_point, fa.rounded_mul, fa.shift)
            assert (b.input_a_offset, b.input_a_mul, b.input_a_shift) == want_a, where
            assert (b.input_b_offset, b.input_b_mul, b.input_b_shift) == (-pb.zero_point, *b_mul), where
            checked_inputs += 1
            if py is None:
                continue
            s_common = F32(pa.scale) if div else F32(F32(pa.scale) * F32(pb.scale))
            fy = get_fixed_mul(float(F32(F32(py.scale) / s_common)), 32, 32, True)
            want = (py.zero_point, fy.rounded_mul, fy.shift)
            assert (b.output_offset, b.output_mul, b.output_shift) == want, where
            checked_outputs += 1
    # slim-320, RFB-320 and ultra_face (both builds of each): one sub and one div per softmax
    assert checked_inputs >= 10 and checked_outputs >= 8


def _kpu_pairs() -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    bn: set[tuple[int, int]] = set()
    act: set[tuple[int, int]] = set()
    for _, model in _shipped_kmodels():
        for node in model.nodes:
            if node.name != "kpu_conv2d":
                continue
            table = node.body.batch_norm
            bn.update(zip(table.norm_mul.tolist(), table.norm_shift.tolist()))
            # segment 0 is the fixed "below the first knot" entry (§4.3 step 5), not a get_fixed_mul
            act.update((s.y_mul, s.shift_number) for s in node.body.activation.segments[1:])
    return bn, act


def test_every_ncc_batch_norm_and_activation_pair_is_a_fixed_point_of_get_fixed_mul():
    """§4.3: bn (mul, shift) = get_fixed_mul(v, 22, 15, signed) and activation (mul, shift) =
    get_fixed_mul(v, 16, 20, signed). The value a stored pair stands for, mul * 2^-shift, must come back
    as the same pair: that pins the normalisation (how many bits mul gets) and the shift clamping."""
    bn, act = _kpu_pairs()
    assert len(bn) > 5000 and len(act) > 20
    shifts_clamped = sum(1 for _, s in bn if s == 15)
    assert shifts_clamped > 0  # the clamped branch is exercised too
    for pairs, max_bits, max_shift in [(bn, 22, 15), (act, 16, 20)]:
        for mul, shift in sorted(pairs):
            fm = get_fixed_mul(float(np.ldexp(np.float64(mul), -shift)), max_bits, max_shift, True)
            assert (fm.rounded_mul, fm.shift) == (mul, shift), (max_bits, mul, shift)
