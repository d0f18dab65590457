"""kpu_conv2d (kpu_sim/kernels/kpu_conv.py) on layers chosen to take each of its code paths, against
the scalar reference `reference_layer` (kpu_reference.py: one Python loop per output pixel, written
from kpu_semantics.md §3):

* row blocks and channel chunks: `_BLOCK` and `_CHUNK` are shrunk so that small maps run through
  several blocks of output rows (and a shorter last one) and several channel chunks, with every pool
  type. The pick pools (bypass, left_top, right_top) convolve only the kept pixels, so a block of
  output rows starts at input row stride * first row (§3 step 5).
* the float32 exactness limit: S = sum x*w' runs in float32 only when every partial sum is provably
  below 2^24, else in float64. Wide layers (64-1024 channels) with saturated inputs sit on both sides
  of that limit; past it float32 rounds odd sums, which a saw-tooth activation turns into wrong bytes.
* the three §2 row layouts of KPU RAM (4 or 2 channels per 64-byte line, or ceil(W/64) lines per
  row), on the input and the output side, read and written around the kernel.
* every pad_value.
"""

from __future__ import annotations

import numpy as np
import pytest
from kpu_reference import (
    ALWAYS,
    NEVER,
    POOL_STRIDE,
    Layer,
    kpu_address,
    layer_body,
    reference_layer,
    run_layer,
)

import kcc.kmodel as km
import kpu_sim
from kpu_sim.kernels import kpu_conv
from kpu_sim.kernels.kpu_layer import decode

# out = clamp(y + 128): monotone, so the step lookup and the fused batch-norm path apply (kpu_post.py)
SHIFTED_RELU = [(ALWAYS, 0, 0, 0), (-128, 1, 0, 0)] + [(NEVER, 0, 0, 0)] * 14
# negative slopes (biased rounding, §3 step 4): no step lookup, every value through the formula
FALLING = [(ALWAYS, 0, 0, 0), (-128, -1, 1, 200), (0, 3, 2, 60), (90, -5, 3, 255)] + [(NEVER, 0, 0, 0)] * 12
# out = y - x_start of the segment holding y, 15 teeth of 255 over (-2000, 1825]: an error of 1 in
# acc changes the output byte anywhere in that window
SAW_TOOTH = [(ALWAYS, 0, 0, 0)] + [(-2000 + 255 * i, 1, 0, 0) for i in range(15)]


def _zero_point_layer(r: np.random.Generator, shape, out_c: int, k: int, depthwise: bool, pool: int,
                      shift_x: int, table, mixed_bn_shifts: bool) -> Layer:
    """A layer whose acc is about sum (x - z_x)(w - z_w) (§3 step 2), scaled by the batch-norm to
    spread y over about +-60, so every pool sees varied bytes.

    shift_x = 0 is ncc's form (arg_x folds into the weights); shift_x > 0 takes the separate sum_x
    term, with arg_x ~ -z_w * 2^shift_x and arg_w ~ -z_x * 2^shift_w so acc keeps its magnitude.
    `mixed_bn_shifts` gives neighbouring channels equivalent (mul, shift) pairs with different shifts,
    which rules out the fused batch-norm path (one shift per chunk of channels) for chunks of 2+."""
    _, c, _, _ = shape
    # zero points near the middle of the uniform x and w: acc's mean taps*(127.5-z_x)(127.5-z_w) stays
    # within about one standard deviation (74*74*sqrt(taps)), so few outputs saturate
    zx, zw = int(r.integers(96, 160)), int(r.integers(96, 160))
    weights = r.integers(0, 256, (out_c, k, k) if depthwise else (out_c, c, k, k)).astype(np.uint8)
    taps = k * k * (1 if depthwise else c)
    shift_w = 2 if shift_x else 0
    arg_x = -zw << shift_x
    arg_w = -zx << shift_w
    if shift_x:  # not a multiple of 2^shift: the floor of each product matters
        arg_x += int(r.integers(-(1 << (shift_x - 1)), 1 << (shift_x - 1)))
        arg_w += int(r.integers(-(1 << (shift_w - 1)), 1 << (shift_w - 1)))
    mul = max(1, round(2**13 * 60 / (74 * 74 * taps**0.5)))
    extra = np.arange(out_c) % 3 if mixed_bn_shifts else np.zeros(out_c, int)  # neighbours differ
    bn = [(mul << int(d), 13 + int(d), int(r.integers(-20, 21))) for d in extra]  # bn_shift <= 15 (§3)
    return Layer(shape, out_c, weights, k=k, depthwise=depthwise, pool=pool, pad_value=zx, arg_x=arg_x,
                 shift_x=shift_x, arg_w=arg_w, shift_w=shift_w, arg_add=k * k * zw * zx,
                 bn=bn, act=table)  # fmt: skip


def _blocks_spy(monkeypatch) -> list[range]:
    """Record the output rows of every block `run_layer` hands to `_conv_sums`."""
    seen: list[range] = []
    real = kpu_conv._conv_sums

    def spy(src, layer, prep, pick, rows, ow):
        seen.append(rows)
        return real(src, layer, prep, pick, rows, ow)

    monkeypatch.setattr(kpu_conv, "_conv_sums", spy)
    return seen


# -- row blocks and channel chunks, every pool -----------------------------------------------------

# Per pool a normal and a depthwise layer. Over the 20 cases every combination of {normal, depthwise}
# x {1x1, 3x3} x {shift_x 0 (ncc: arg_x folded into the weights), shift_x 3 (separate sum_x term)}
# occurs, and normal and depthwise layers each meet each post-processing: "relu" (SHIFTED_RELU, fused
# batch-norm + step lookup), "falling" (FALLING, the formula), "mixed" (bn shifts differ, unfused). The
# map width cycles through the three row layouts (12, 26, 70 bytes; after a 2-stride pool 6, 13, 35).
_WIDTHS = (12, 26, 70)
_POST = ("relu", "falling", "mixed")
ROW_CASES = [
    (pool, depthwise, 3 if (pool + depthwise) % 2 == 0 else 1, 3 if (pool // 2 + depthwise) % 2 else 0,
     _WIDTHS[(2 * pool + depthwise) % 3], _POST[(pool + 2 * depthwise) % 3])
    for pool in range(10)
    for depthwise in (False, True)
]  # fmt: skip


@pytest.mark.parametrize("pool, depthwise, k, shift_x, width, post", ROW_CASES,
                         ids=[f"pool{p}-{'dw' if d else 'conv'}{k}x{k}-sx{s}-w{w}-{post}"
                              for p, d, k, s, w, post in ROW_CASES])  # fmt: skip
def test_several_row_blocks_match_the_reference(monkeypatch, pool, depthwise, k, shift_x, width, post
                                                ) -> None:
    r = np.random.default_rng(1000 + 10 * pool + depthwise)
    c, h = 5, 9
    n = 1 if width > 32 else 2
    table = FALLING if post == "falling" else SHIFTED_RELU
    layer = _zero_point_layer(r, (n, c, h, width), c if depthwise else 4, k, depthwise, pool, shift_x, table,
                              mixed_bn_shifts=post == "mixed")  # fmt: skip
    x = r.integers(0, 256, layer.in_shape).astype(np.uint8)
    stride = POOL_STRIDE[pool]
    picks = pool in (0, 5, 6, 7)  # the kernel convolves only the pixels these pools keep (kpu_conv.py)
    oh, ow = (h // stride, width // stride) if picks else (h, width)
    rows = 1 if oh <= 3 else 2  # blocks of `rows` output rows, the last one shorter when oh is odd
    # the kernel gathers c * (k*k + 1) tap values per output pixel (c = C_in, or C_out for depthwise)
    monkeypatch.setattr(kpu_conv, "_BLOCK", rows * c * (k * k + 1) * ow)
    monkeypatch.setattr(kpu_conv, "_CHUNK", 2 * rows * ow)  # two output channels per post-processing step
    blocks = _blocks_spy(monkeypatch)
    got = run_layer(layer, x)
    assert [len(b) for b in blocks[: len(blocks) // n]] == [min(rows, oh - r0) for r0 in range(0, oh, rows)]
    np.testing.assert_array_equal(got, reference_layer(layer, x), err_msg=str(layer))


# -- the float32 exactness limit ------------------------------------------------------------------


def _saturated_layer(r: np.random.Generator, in_c: int, out_c: int, k: int, depthwise: bool, arg_x: int
                     ) -> tuple[Layer, np.ndarray]:
    """Inputs and pad_value 255, weights up to 255 (one weight exactly 255, which sets the bound):
    S sits near the static bound taps * 255 * max|w'| that picks the matmul's float type.

    A normal conv's input channel 0 varies (0-255) with weights 0/1, so acc varies by at most
    k*k*255 between pixels. The batch-norm add moves each channel's all-255 acc to a y inside
    SAW_TOOTH's window, where every unit of acc is a different byte. `arg_x` (shift_x 0) folds into w'."""
    h = w = 4
    weights = r.integers(200, 256, (out_c, k, k) if depthwise else (out_c, in_c, k, k)).astype(np.uint8)
    x = np.full((1, in_c, h, w), 255, np.uint8)
    if depthwise:  # every pixel of a channel has the same acc: vary the target between channels
        target = r.integers(-1990, 1820, out_c)
    else:
        weights[:, 0] = r.integers(0, 2, (out_c, k, k))
        x[0, 0] = r.integers(0, 256, (h, w))
        target = r.integers(300, 1800, out_c)  # y in [target - k*k*255, target], inside the saw-tooth
    weights.flat[-1] = 255
    folded = weights.reshape(out_c, -1).astype(np.int64) + arg_x
    centre = 255 * folded.sum(axis=1)  # acc when every tap, padding included, reads 255
    bn = [(1, 0, int(t) - int(a)) for t, a in zip(target, centre)]
    layer = Layer(x.shape, out_c, weights, k=k, depthwise=depthwise, pad_value=255, arg_x=arg_x, bn=bn,
                  act=SAW_TOOTH)  # fmt: skip
    return layer, x


# (in_c, out_c, k, depthwise, arg_x, matmul type): bound = taps * 255 * (255 + arg_x)
WIDE_CASES = [
    (258, 3, 1, False, 0, np.float32),  # 258 * 255^2 = 16,776,450 < 2^24: float32 is exact
    (259, 3, 1, False, 0, np.float64),  # 16,841,475 > 2^24
    (64, 4, 3, False, 0, np.float64),  # 576 * 255^2 ~ 2^25.2
    (1024, 3, 1, False, 0, np.float64),  # 1024 * 255^2 ~ 2^26
    (64, 64, 3, True, 30000, np.float64),  # 9 * 255 * 30255 ~ 2^26 (arg_x folded into the weights)
]


@pytest.mark.parametrize("in_c, out_c, k, depthwise, arg_x, dtype", WIDE_CASES,
                         ids=[f"{'dw' if c[3] else 'conv'}{c[2]}x{c[2]}-{c[0]}ch" for c in WIDE_CASES])
def test_wide_saturated_layers_at_the_float32_limit(in_c, out_c, k, depthwise, arg_x, dtype) -> None:
    layer, x = _saturated_layer(np.random.default_rng(in_c + k), in_c, out_c, k, depthwise, arg_x)
    # the layer sits on the intended side of the limit (else this case would not test the limit)
    assert kpu_conv._prepare(decode(layer_body(layer))).dtype == dtype
    expected = reference_layer(layer, x)
    assert len(np.unique(expected)) > 4  # the saw-tooth resolves acc
    np.testing.assert_array_equal(run_layer(layer, x), expected)


# -- KPU RAM row layouts --------------------------------------------------------------------------

# (input width, pool): the input and output widths each fall in one of the three layouts of §2
LAYOUT_CASES = [(12, 0), (26, 5), (26, 8), (70, 6), (130, 1), (40, 2)]


@pytest.mark.parametrize("width, pool", LAYOUT_CASES, ids=[f"w{w}-pool{p}" for w, p in LAYOUT_CASES])
def test_the_kernel_reads_and_writes_the_kpu_ram_layout(width, pool) -> None:
    """Input bytes placed at the §2 addresses (computed in kpu_reference.py, not with kcc's
    kpu_offsets), the output read back from them; every other byte of KPU RAM keeps its value."""
    r = np.random.default_rng(width + pool)
    layer = _zero_point_layer(r, (2, 5, 3, width), 6, 3, False, pool, 0, SHIFTED_RELU, False)
    x = r.integers(0, 256, layer.in_shape).astype(np.uint8)
    expected = reference_layer(layer, x)
    src_line = 3
    dst_line = src_line + km.kpu_bytes(layer.in_shape) // 64 + 2
    main = km.MemoryRange(km.MemoryType.MAIN, km.DataType.UINT8, 8, expected.size)
    body = layer_body(layer, src_line=src_line, dst_line=dst_line, main_out=main)
    mem = kpu_sim.Memory(main.end + 8, b"")
    mem.kpu[:] = 0xA5
    want = mem.kpu.copy()
    for index in np.ndindex(x.shape):
        mem.kpu[64 * src_line + kpu_address(x.shape, *index)] = x[index]
    for index in np.ndindex(expected.shape):
        want[64 * dst_line + kpu_address(expected.shape, *index)] = expected[index]
    want[64 * src_line : 64 * dst_line] = mem.kpu[64 * src_line : 64 * dst_line]  # the input stays as written
    kpu_conv.kpu_conv2d(mem, body)
    np.testing.assert_array_equal(mem.kpu, want)
    np.testing.assert_array_equal(mem.main[main.start : main.end], expected.reshape(-1))  # packed NCHW


# -- pad_value ------------------------------------------------------------------------------------


def test_every_pad_value() -> None:
    """A 3x3 conv over a 2x3 map: each output pixel has 3 to 5 padded taps, which read pad_value in
    S and in sum_x (§3 step 2, trap 5). One layer per pad_value 0-255, with zero points z_x, z_w
    unrelated to it: acc = sum (x - z_x)(w - z_w), padded taps contributing (pad_value - z_x)(w - z_w)."""
    r = np.random.default_rng(7)
    for pad in range(256):
        x = r.integers(0, 256, (1, 2, 2, 3)).astype(np.uint8)
        weights = r.integers(0, 256, (2, 2, 3, 3)).astype(np.uint8)
        zx, zw = int(r.integers(96, 160)), int(r.integers(96, 160))
        layer = Layer(x.shape, 2, weights, k=3, pad_value=pad, arg_x=-zw, arg_w=-zx, arg_add=9 * zw * zx,
                      bn=[(84, 15, 0), (84, 15, 0)], act=SHIFTED_RELU)  # fmt: skip
        np.testing.assert_array_equal(run_layer(layer, x), reference_layer(layer, x), err_msg=f"pad {pad}")
