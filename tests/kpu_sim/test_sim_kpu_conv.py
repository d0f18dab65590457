"""kpu_conv2d (0x2002): the traps of kpu_semantics.md §11, each with a hand-computed expectation,
then random layers against the scalar reference in kpu_reference.py.

Most tests use a 1x1 conv over one channel with weight 1 and no register extras, so acc = x,
and the activation `identity_plus_one` (out = y + 1 for y >= 0): the expected numbers can be
followed on paper from the input bytes.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from kpu_reference import (
    ALWAYS,
    NEVER,
    Layer,
    identity_plus_one,
    layer_model,
    reference_layer,
    run_layer,
)

import kcc.kmodel as km
import kpu_sim
from kcc.errors import SimulatorError

rng = np.random.default_rng(11)


def _row(values) -> np.ndarray:
    """A (1, 1, 1, W) uint8 input."""
    return np.array(values, np.uint8).reshape(1, 1, 1, -1)


def _passthrough(values, act, bn=(1, 0, 0), arg_add=0) -> np.ndarray:
    """1x1 conv, 1 channel, weight 1: acc = x + arg_add; y = ((acc * m) >> s) + a; then `act`."""
    x = _row(values)
    layer = Layer(x.shape, 1, np.ones((1, 1, 1, 1), np.uint8), bn=[bn], act=act, arg_add=arg_add)
    return run_layer(layer, x).reshape(-1)


# -- trap 1: activation rounding -------------------------------------------------------------


def test_trap1_positive_products_round_half_to_even() -> None:
    # segment 1 = (x_start 0, mul 1, shift 2, bias 0): out = round(y / 4), ties to even
    act = [(ALWAYS, 0, 0, 0), (0, 1, 2, 0)] + [(NEVER, 0, 0, 0)] * 14
    # y = 5 -> 1.25 -> 1; 6 -> 1.5 -> 2; 7 -> 1.75 -> 2; 10 -> 2.5 -> 2 (even); 14 -> 3.5 -> 4 (even)
    # y = 0 is not > 0: segment 0 (mul 0, bias 0) -> 0
    np.testing.assert_array_equal(_passthrough([5, 6, 7, 10, 14, 0], act), [1, 2, 2, 2, 4, 0])


def test_trap1_negative_products_get_the_floor_minus_one_bias() -> None:
    # segment 1 = (x_start 0, mul -1, shift 2, bias 100): v = -y, I = floor(v/4), F = v - 4I, half 2
    # y=1: v=-1, I=-1, F=3 > 2 -> I-1 = -2 -> 98 (true -0.25 would round to 0)
    # y=5: v=-5, I=-2, F=3 -> -3 -> 97;  y=6: v=-6, I=-2, F=2 tie, I even -> -2 -> 98
    # y=7: v=-7, I=-2, F=1 < 2 -> -2 -> 98;  y=10: v=-10, I=-3, F=2 tie, I odd -> -4 -> 96
    act = [(ALWAYS, 0, 0, 0), (0, -1, 2, 100)] + [(NEVER, 0, 0, 0)] * 14
    np.testing.assert_array_equal(_passthrough([1, 5, 6, 7, 10], act), [98, 97, 98, 98, 96])


def test_trap1_shift_zero_does_not_round_and_the_result_is_clamped() -> None:
    # segment 1 = (x_start 0, mul 3, shift 0, bias 10): out = clamp(3y + 10, 0, 255)
    act = [(ALWAYS, 0, 0, 0), (0, 3, 0, 10)] + [(NEVER, 0, 0, 0)] * 14
    np.testing.assert_array_equal(_passthrough([1, 2, 81, 82, 200], act), [13, 16, 253, 255, 255])


# -- trap 2: segment selection ---------------------------------------------------------------


def test_trap2_highest_matching_index_wins_in_an_unsorted_table_and_the_start_is_strict() -> None:
    # segment 1 starts at 10 (bias 50), segment 2 at 5 (bias 60): unsorted.
    # y=5: not > 5, not > 10 -> segment 0 -> 0;  y=6: only segment 2 -> 60
    # y=10: segment 2 (10 > 10 is false for segment 1) -> 60;  y=11: both match, highest index 2 -> 60
    # (a binary search over a sorted table would give 50 here)
    act = [(ALWAYS, 0, 0, 0), (10, 0, 0, 50), (5, 0, 0, 60)] + [(NEVER, 0, 0, 0)] * 13
    np.testing.assert_array_equal(_passthrough([5, 6, 10, 11], act), [0, 60, 60, 60])


def test_trap2_bias_is_an_unsigned_byte() -> None:
    act = [(ALWAYS, 0, 0, 200)] + [(NEVER, 0, 0, 0)] * 15  # bias byte 0xC8 = 200, not -56
    np.testing.assert_array_equal(_passthrough([0, 9], act), [200, 200])


def test_a_value_below_every_segment_start_is_a_simulator_error() -> None:
    act = [(0, 1, 0, 0)] + [(NEVER, 0, 0, 0)] * 15  # no catch-all segment: y = 0 is not > 0
    with pytest.raises(SimulatorError, match=r"node 0 \(kpu_conv2d\): activation: value 0 is not above any"):
        _passthrough([3, 0], act)


# -- trap 3: batch-norm ----------------------------------------------------------------------


def test_trap3_batch_norm_floors_the_shifted_product_then_adds() -> None:
    # acc = x - 10 (arg_add -10, g_ic 1), bn (mul 5, shift 2, add 10):
    # x=5: acc=-5, -25 >> 2 = floor(-6.25) = -7 (truncation would give -6), +10 = 3 -> out 4
    # x=12: acc=2, 10 >> 2 = 2 (2.5 floored), +10 = 12 -> out 13
    # x=0: acc=-10, -50 >> 2 = floor(-12.5) = -13, +10 = -3 -> below 0 -> out 0
    got = _passthrough([5, 12, 0], identity_plus_one(), bn=(5, 2, 10), arg_add=-10)
    np.testing.assert_array_equal(got, [4, 13, 0])


def test_trap3_per_channel_batch_norm() -> None:
    # two output channels of a 1x1 conv over one input channel, weights 1 and 2:
    # channel 0: acc = x, bn (3, 1, 0): y = 3x >> 1; channel 1: acc = 2x, bn (1, 0, -4): y = 2x - 4
    x = _row([1, 3, 4])
    layer = Layer(x.shape, 2, np.array([1, 2], np.uint8).reshape(2, 1, 1, 1),
                  bn=[(3, 1, 0), (1, 0, -4)], act=identity_plus_one())  # fmt: skip
    got = run_layer(layer, x)
    # channel 0: 3>>1=1, 9>>1=4, 12>>1=6 -> +1;  channel 1: -2 -> 0, 2 -> 3, 4 -> 5
    np.testing.assert_array_equal(got.reshape(2, 3), [[2, 5, 7], [0, 3, 5]])


# -- traps 4 and 5: conv extras, padding -------------------------------------------------------


def test_trap4_and_5_padded_taps_read_pad_value_and_count_in_sum_x() -> None:
    # 3x3 conv, one 3x3 input channel of zeros, all weights 1, pad_value 7, arg_x 1:
    # corner pixel: 5 of its 9 taps are padding: S = 5*7 = 35, sum_x = 35 -> acc = 70
    # edge pixel: 3 padded taps -> 21 + 21 = 42; centre: 0. The output stays 3x3 (stride 1, pad 1).
    x = np.zeros((1, 1, 3, 3), np.uint8)
    layer = Layer(x.shape, 1, np.ones((1, 1, 3, 3), np.uint8), k=3, pad_value=7, arg_x=1,
                  bn=[(1, 0, 0)], act=identity_plus_one())  # fmt: skip
    got = run_layer(layer, x)
    np.testing.assert_array_equal(got[0, 0], [[71, 43, 71], [43, 1, 43], [71, 43, 71]])


def test_trap4_the_two_register_products_are_floor_shifted_separately() -> None:
    # 1x1, x = 5, w = 1: S = 5; (arg_x -3 * sum_x 5) >> 1 = -15 >> 1 = -8; (arg_w -1 * sum_w 1) >> 1 = -1
    # acc = 5 - 8 - 1 = -4 (shifting the sum (-16) >> 1 = -8 would give -3); bn add 10 -> y = 6 -> out 7
    x = _row([5])
    layer = Layer(x.shape, 1, np.ones((1, 1, 1, 1), np.uint8), arg_x=-3, shift_x=1, arg_w=-1, shift_w=1,
                  bn=[(1, 0, 10)], act=identity_plus_one())  # fmt: skip
    assert run_layer(layer, x).reshape(-1).tolist() == [7]


def test_trap4_arg_add_is_multiplied_by_the_input_channels_of_the_group() -> None:
    # zero input and weights: acc = arg_add * g_ic = 5 * 3 = 15 -> out 16 (normal conv, 3 input channels)
    x = np.zeros((1, 3, 1, 2), np.uint8)
    normal = Layer(x.shape, 1, np.zeros((1, 3, 1, 1), np.uint8), arg_add=5, bn=[(1, 0, 0)], act=identity_plus_one())
    assert run_layer(normal, x).reshape(-1).tolist() == [16, 16]
    # depthwise: g_ic = 1 -> acc = 5 -> out 6 for each of the 3 channels
    dw = Layer(x.shape, 3, np.zeros((3, 1, 1), np.uint8), depthwise=True, arg_add=5, bn=[(1, 0, 0)] * 3,
               act=identity_plus_one())  # fmt: skip
    assert run_layer(dw, x).reshape(-1).tolist() == [6] * 6


def test_ncc_style_arguments_give_the_zero_point_corrected_product() -> None:
    # §3: arg_x = -z_w, arg_w = -z_x, arg_add = k*k*z_w*z_x, pad_value = z_x gives
    # acc = sum (x - z_x)(w - z_w), padded taps contributing 0. z_x = 3, z_w = 2, 1x1, one channel:
    # x = 10, w = 6: (10 - 3) * (6 - 2) = 28 -> out 29
    x = _row([10])
    layer = Layer(x.shape, 1, np.full((1, 1, 1, 1), 6, np.uint8), pad_value=3, arg_x=-2, arg_w=-3, arg_add=6,
                  bn=[(1, 0, 0)], act=identity_plus_one())  # fmt: skip
    assert run_layer(layer, x).reshape(-1).tolist() == [29]


# -- trap 6: pooling ---------------------------------------------------------------------------


def _pool(values: np.ndarray, pool: int) -> np.ndarray:
    """Pool an (H, W) map: the layer passes x through (out = x: identity segment x_start -1, bias 0,
    bn add -1 so that y = x - 1 and out = y + 1 = x)."""
    x = values.astype(np.uint8).reshape(1, 1, *values.shape)
    layer = Layer(x.shape, 1, np.ones((1, 1, 1, 1), np.uint8), pool=pool, bn=[(1, 0, -1)], act=identity_plus_one())
    return run_layer(layer, x)[0, 0]


def test_trap6_mean_pools_floor() -> None:
    m = np.array([[10, 11, 1, 2], [14, 15, 3, 3]])
    # mean_2_s2: (10+11+14+15)/4 = 12.5 -> 12; (1+2+3+3)/4 = 2.25 -> 2
    np.testing.assert_array_equal(_pool(m, 2), [[12, 2]])
    # mean_4_s4 over a 4x4 of 0..15: 120/16 = 7.5 -> 7
    np.testing.assert_array_equal(_pool(np.arange(16).reshape(4, 4), 4), [[7]])


def test_trap6_two_by_two_stride_one_pools_at_the_edges() -> None:
    m = np.array([[1, 2], [9, 4]])
    # mean_2_s1 replicates the edge: bottom-left (9 + 4 + 9 + 4)/4 = 6.5 -> 6, bottom-right 4*4/4 = 4,
    # top-right (2 + 2 + 4 + 4)/4 = 3, top-left (1+2+9+4)/4 = 4. Zero fill would give 3, 1, 1, 4.
    np.testing.assert_array_equal(_pool(m, 8), [[4, 3], [6, 4]])
    # max_2_s1 reads 0 outside: top-left max(1,2,9,4) = 9, top-right max(2,4,0,0) = 4, bottom row 9, 4
    np.testing.assert_array_equal(_pool(m, 9), [[9, 4], [9, 4]])


def test_trap6_pick_pools_output_size_and_max_pools() -> None:
    m = np.arange(1, 31).reshape(5, 6)  # 5x6 -> 2_s2 pools give floor(5/2) x floor(6/2) = 2x3
    np.testing.assert_array_equal(_pool(m, 5), [[1, 3, 5], [13, 15, 17]])  # left_top_2_s2: (2y, 2x)
    np.testing.assert_array_equal(_pool(m, 6), [[2, 4, 6], [14, 16, 18]])  # right_top_2_s2: (2y, 2x+1)
    np.testing.assert_array_equal(_pool(m, 1), [[8, 10, 12], [20, 22, 24]])  # max_2_s2
    m4 = np.arange(1, 41).reshape(5, 8)  # 4_s4 -> 1x2
    np.testing.assert_array_equal(_pool(m4, 7), [[1, 5]])  # left_top_4_s4: (4y, 4x)
    np.testing.assert_array_equal(_pool(m4, 3), [[28, 32]])  # max_4_s4
    np.testing.assert_array_equal(_pool(m4, 0), m4)  # bypass


# -- trap 7: register fields are sign-extended from the encoded words ------------------------


def _patch(model_bytes: bytes, offset: int, value: int, lsb: int, width: int) -> bytes:
    """Overwrite bits [lsb, lsb + width) of the u64 at `offset` with `value` (two's complement)."""
    word = struct.unpack_from("<Q", model_bytes, offset)[0]
    mask = ((1 << width) - 1) << lsb
    word = (word & ~mask) | ((value & ((1 << width) - 1)) << lsb)
    return model_bytes[:offset] + struct.pack("<Q", word) + model_bytes[offset + 8 :]


def test_trap7_fields_written_as_raw_bits_decode_sign_extended() -> None:
    x = _row([10])
    layer = Layer(x.shape, 1, np.ones((1, 1, 1, 1), np.uint8), bn=[(1, 0, 0)], act=identity_plus_one())
    model, _ = layer_model(layer)
    data = km.write(model)
    body = 40 + 32 + 16 + 8  # header, 1 input range + shape, 1 output range, 1 node header
    regs = body + 24
    # arg_add (conv_value2 bits 0-39) = 0xFFFFFFFFFB = -5 as s40: acc = 10 - 5 = 5 -> out 6
    patched = _patch(data, regs + 8 * 10, 0xFFFFFFFFFB, 0, 40)
    (out,) = kpu_sim.load(patched).run([x])
    assert out.tolist() == [6]
    # arg_x (conv_value bits 32-55) = 0xFFFFFE = -2 as s24: acc = 10 + (-2 * 10) = -10 -> 0;
    # read as unsigned it would be 16777214 * 10
    patched = _patch(data, regs + 8 * 9, 0xFFFFFE, 32, 24)
    (out,) = kpu_sim.load(patched).run([x])
    assert out.tolist() == [0]
    # norm_add (bits 24-55 of the batch-norm word) = 0xFFFFFFFC = -4 as s32: y = 10 - 4 = 6 -> out 7
    bn_word = regs + 96 + (struct.unpack_from("<Q", data, regs + 8 * 4)[0] >> 32)  # skip P1 = bwsx_base_addr
    patched = _patch(data, bn_word, 0xFFFFFFFC, 24, 32)
    (out,) = kpu_sim.load(patched).run([x])
    assert out.tolist() == [7]


def test_trap7_activation_fields_are_sign_extended() -> None:
    # y_mul 0xFFFF = -1 (s16), x_start 0xFFFFFFFF6 = -10 (s36): y = 10 -> v = (10 + 10) * -1 = -20,
    # shift 0 -> -20 + bias 30 = 10
    act = [(ALWAYS, 0, 0, 0), (-10, -1, 0, 30)] + [(NEVER, 0, 0, 0)] * 14
    table = km.KpuActivationTable([km.KpuActivationSegment(s, m, st, b) for st, m, s, b in act]).pack()
    word = struct.unpack_from("<Q", table, 8)[0]
    assert (word >> 8) & 0xFFFF == 0xFFFF and (word >> 24) & (2**36 - 1) == 2**36 - 10
    assert _passthrough([10], act).tolist() == [10]


# -- trap 8: KPU RAM layout, batches, main output ----------------------------------------------


@pytest.mark.parametrize("shape", [(1, 5, 3, 7), (2, 3, 2, 20), (1, 2, 2, 40), (2, 1, 3, 64), (1, 6, 1, 130)])
def test_trap8_upload_and_download_match_the_layout_formula(shape) -> None:
    x = rng.integers(0, 256, shape).astype(np.uint8)
    mem = kpu_sim.Memory(0, b"")
    r = km.MemoryRange(km.MemoryType.K210_KPU, km.DataType.UINT8, 128, km.kpu_bytes(shape))
    mem.kpu[:] = 0xEE  # padding bytes must keep this value
    mem.upload(r, x)
    expected = np.full(r.size, 0xEE, np.uint8)
    expected[km.kpu_offsets(shape).reshape(-1)] = x.reshape(-1)
    np.testing.assert_array_equal(mem.kpu[128 : 128 + r.size], expected)
    np.testing.assert_array_equal(mem.download(r, shape), x)


def test_trap8_layer_reads_and_writes_the_kpu_layout_for_each_batch() -> None:
    # 2 batches of a 1-channel 2x40 map (one channel per line, 1 line per row) -> left_top_2_s2 ->
    # 1x20 (two channels per line, 32-byte slots); output channel o = x * (o + 1) for o in 0..2
    x = rng.integers(0, 60, (2, 1, 2, 40)).astype(np.uint8)
    layer = Layer(x.shape, 3, np.array([1, 2, 3], np.uint8).reshape(3, 1, 1, 1), pool=5, bn=[(1, 0, -1)] * 3,
                  act=identity_plus_one())  # fmt: skip
    out, raw = run_layer(layer, x, kpu_bytes=True)
    expected = np.stack([x[:, 0, ::2, ::2] * (o + 1) for o in range(3)], axis=1)
    np.testing.assert_array_equal(out, expected)  # main_mem_output: packed NCHW, both batches
    # KPU output: per batch 2 blocks (channels 0-1, then 2) x 1 row = 2 lines; channel 1 at byte 32
    assert raw.size == 2 * 2 * 64
    np.testing.assert_array_equal(raw[64 * 2 + 32 : 64 * 2 + 52], expected[1, 1, 0])  # batch 1, channel 1
    np.testing.assert_array_equal(raw[km.kpu_offsets(expected.shape).reshape(-1)], expected.reshape(-1))


# -- random layers against the scalar reference ------------------------------------------------


def _random_layer(seed: int) -> tuple[Layer, np.ndarray]:
    r = np.random.default_rng(seed)
    depthwise = bool(r.integers(0, 3) == 0)
    k = int(r.choice([1, 3]))
    c = int(r.integers(1, 5))
    oc = c if depthwise else int(r.integers(1, 5))
    pool = int(r.integers(0, 10))
    h, w = int(r.integers(1, 7)), int(r.integers(1, 9))
    if pool in (1, 2, 5, 6):
        h, w = h + 2, w + 2
    if pool in (3, 4, 7):
        h, w = h + 4, w + 4
    n = int(r.integers(1, 3))
    weights = r.integers(0, 256, (oc, k, k) if depthwise else (oc, c, k, k)).astype(np.uint8)
    # |acc| < 2^26 and |bn mul| < 2^9 keep y above segment 0's start (-2^35), which nncase needs
    bn = [(int(r.integers(-2**9, 2**9)), int(r.integers(0, 16)), int(r.integers(-2**20, 2**20))) for _ in range(oc)]
    starts = r.integers(-2**25, 2**25, 15)
    if r.integers(0, 2):
        starts.sort()
    act = [(ALWAYS, 0, 0, int(r.integers(0, 256)))]
    act += [(int(s), int(r.integers(-2**15, 2**15)), int(r.choice([0, 1, 5, 20, 31, 32, 33, 40])),
             int(r.integers(0, 256))) for s in starts]  # fmt: skip
    layer = Layer((n, c, h, w), oc, weights, k=k, depthwise=depthwise, pool=pool,
                  pad_value=int(r.integers(0, 256)), arg_x=int(r.integers(-2**12, 2**12)), shift_x=int(r.integers(0, 16)),
                  arg_w=int(r.integers(-2**12, 2**12)), shift_w=int(r.integers(0, 16)),
                  arg_add=int(r.integers(-2**20, 2**20)), bn=bn, act=act)  # fmt: skip
    x = r.integers(0, 256, (n, c, h, w)).astype(np.uint8)
    return layer, x


@pytest.mark.parametrize("seed", range(24))
def test_random_layers_match_the_scalar_reference(seed) -> None:
    layer, x = _random_layer(seed)
    np.testing.assert_array_equal(run_layer(layer, x), reference_layer(layer, x), err_msg=f"{layer}")


def test_ncc_shaped_layers_match_the_reference() -> None:
    """ncc's arguments (shift 0, arg_add = k*k*z_w*z_x) and a relu-like sorted table with
    non-negative slopes: the step-lookup fast path of the activation is exercised here."""
    r = np.random.default_rng(99)
    for k, depthwise, pool in [(3, False, 0), (1, False, 5), (3, True, 0), (1, False, 1), (3, False, 8)]:
        c, oc = 3, 3 if depthwise else 4
        zx, zw = int(r.integers(0, 256)), int(r.integers(0, 256))
        weights = r.integers(0, 256, (oc, k, k) if depthwise else (oc, c, k, k)).astype(np.uint8)
        act = [(ALWAYS, 0, 0, 0)] + [(i * 40000, 256, 20, 8 * i) for i in range(15)]
        bn = [(int(r.integers(2**19, 2**21)), 15, int(r.integers(-2**16, 2**16))) for _ in range(oc)]
        layer = Layer((1, c, 6, 8), oc, weights, k=k, depthwise=depthwise, pool=pool, pad_value=zx, arg_x=-zw,
                      arg_w=-zx, arg_add=k * k * zw * zx, bn=bn, act=act)  # fmt: skip
        x = r.integers(0, 256, (1, c, 6, 8)).astype(np.uint8)
        np.testing.assert_array_equal(run_layer(layer, x), reference_layer(layer, x))
