"""A scalar KPU layer written straight from kpu_semantics.md §3, and tiny one-layer kmodels.

`reference_layer` loops over every output pixel with Python ints, independently of kpu_sim,
following the nncase simulator's C++ word for word (including its x86 shift behaviour for
shifts >= 32). Tests compare kpu_sim's vectorised kernel against it on random layers.
`kpu_address` is the §2 KPU RAM layout, element by element.
`layer_body` builds a `KpuConv2D` with consistent registers; `run_layer` runs it through
kmodel write -> read -> kpu_sim and returns the main-memory output (and optionally KPU RAM).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import kcc.kmodel as km
import kpu_sim

POOL_STRIDE = {0: 1, 1: 2, 2: 2, 3: 4, 4: 4, 5: 2, 6: 2, 7: 4, 8: 1, 9: 1}
POOL_WINDOW = {0: 1, 1: 2, 2: 2, 3: 4, 4: 4, 5: 2, 6: 2, 7: 4, 8: 2, 9: 2}
NEVER = 2**35 - 1  # x_start no value exceeds: the segment is never selected
ALWAYS = -(2**35)  # ncc's segment 0


@dataclass
class Layer:
    """Everything one KPU layer computes with (decoded values)."""

    in_shape: tuple[int, int, int, int]  # N, C, H, W
    out_c: int
    weights: np.ndarray  # uint8 (oc, ic, k, k) or (oc, k, k)
    k: int = 1
    depthwise: bool = False
    pool: int = 0
    pad_value: int = 0
    arg_x: int = 0
    shift_x: int = 0
    arg_w: int = 0
    shift_w: int = 0
    arg_add: int = 0
    bn: list[tuple[int, int, int]] = field(default_factory=list)  # (mul, shift, add) per output channel
    act: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x_start, mul, shift, bias) x 16


def identity_plus_one() -> list[tuple[int, int, int, int]]:
    """Segment 1 = (x_start -1, mul 1, shift 0, bias 0): out = clamp(y + 1) for y >= 0, else 0."""
    return [(ALWAYS, 0, 0, 0), (-1, 1, 0, 0)] + [(NEVER, 0, 0, 0)] * 14


def banker(v: int, s: int) -> int:
    """carry_shift<int64_t, true>, including the x86 masking of out-of-range shift counts."""
    s &= 0xFF
    if s == 0:
        return v
    s64 = s & 63
    integral = v >> s64
    fractional = (v & ((1 << 64) - 1)) & ((1 << s64) - 1)
    k = (s - 1) & 31
    half = (1 << 64) - (1 << 31) if k == 31 else 1 << k  # (int)1 << 31 is INT32_MIN, seen as uint64
    sign = -1 if v < 0 else 1
    if fractional < half:
        return integral
    if fractional > half:
        return integral + sign
    return integral + sign if integral & 1 else integral


def kpu_address(shape: tuple[int, int, int, int], n: int, c: int, y: int, x: int) -> int:
    """Byte offset of element (n, c, y, x) of an NCHW uint8 map in KPU RAM, from the map's first line
    (kpu_semantics.md §2): narrow maps pack 4 (W <= 16) or 2 (W <= 32) channels into one 64-byte line,
    wider ones take ceil(W/64) lines per row."""
    _, channels, h, w = shape
    if w <= 16:
        groups, row_len, pitch = 4, 1, 16
    elif w <= 32:
        groups, row_len, pitch = 2, 1, 32
    else:
        groups, row_len, pitch = 1, -(-w // 64), 64
    lines_per_batch = row_len * h * -(-channels // groups)
    return 64 * (n * lines_per_batch + (c // groups) * row_len * h + y * row_len) + (c % groups) * pitch + x


def _wrap64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def reference_layer(layer: Layer, x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, OC, H', W') uint8, pixel by pixel."""
    n, c, h, w = x.shape
    k, oc = layer.k, layer.out_c
    pad = 1 if k == 3 else 0
    g_ic = 1 if layer.depthwise else c
    stride, window = POOL_STRIDE[layer.pool], POOL_WINDOW[layer.pool]
    oh, ow = h // stride, w // stride
    out = np.zeros((n, oc, oh, ow), np.uint8)
    for b in range(n):
        act_map = np.zeros((oc, h, w), np.int64)
        for o in range(oc):
            wts = layer.weights[o].reshape(g_ic, k, k).astype(int)
            in_channels = [o] if layer.depthwise else list(range(c))
            sum_w = int(wts.sum())
            for y in range(h):
                for xx in range(w):
                    s = sum_x = 0
                    for gi, ic in enumerate(in_channels):
                        for ky in range(k):
                            for kx in range(k):
                                iy, ix = y - pad + ky, xx - pad + kx
                                v = layer.pad_value if not (0 <= iy < h and 0 <= ix < w) else int(x[b, ic, iy, ix])
                                s += v * int(wts[gi, ky, kx])
                                sum_x += v
                    acc = s + ((layer.arg_x * sum_x) >> layer.shift_x) + ((layer.arg_w * sum_w) >> layer.shift_w)
                    acc += layer.arg_add * g_ic
                    mul, shift, add = layer.bn[o]
                    yv = _wrap64(_wrap64(acc * mul) >> shift) + add
                    seg = max(i for i in range(16) if yv > layer.act[i][0])
                    start, amul, ashift, bias = layer.act[seg]
                    z = banker(_wrap64((yv - start) * amul), ashift) + bias
                    act_map[o, y, xx] = min(max(z, 0), 255)
        for o in range(oc):
            for y in range(oh):
                for xx in range(ow):
                    y0, x0 = y * stride, xx * stride
                    if layer.pool in (5, 7):
                        v = act_map[o, y0, x0]
                    elif layer.pool == 6:
                        v = act_map[o, y0, x0 + 1]
                    elif layer.pool == 0:
                        v = act_map[o, y, xx]
                    elif layer.pool in (1, 3, 9):  # max; taps outside read 0
                        v = max(int(act_map[o, y0 + i, x0 + j]) if y0 + i < h and x0 + j < w else 0
                                for i in range(window) for j in range(window))
                    else:  # mean; taps outside are clamped to the edge; floor
                        v = sum(int(act_map[o, min(y0 + i, h - 1), min(x0 + j, w - 1)])
                                for i in range(window) for j in range(window)) // (window * window)
                    out[b, o, y, xx] = v
    return out


def layer_body(layer: Layer, src_line: int = 0, dst_line: int | None = None, main_out: km.MemoryRange | None = None
               ) -> km.KpuConv2D:
    """A kpu_conv2d body for `layer` with ncc-consistent register fields."""
    n, c, h, w = layer.in_shape
    stride = POOL_STRIDE[layer.pool]
    oh, ow = h // stride, w // stride
    in_lay, out_lay = km.kpu_row_layout(w), km.kpu_row_layout(ow)
    if dst_line is None:
        dst_line = src_line + km.kpu_bytes(layer.in_shape) // 64
    f = layer.k
    per_load = layer.out_c if layer.depthwise else max(1, min(layer.out_c, 30720 // (f * f * c)))
    lay = km.KpuLayerArgument(
        depth_wise_layer=int(layer.depthwise), image_src_addr=src_line, image_dst_addr=dst_line,
        i_ch_num=c - 1, o_ch_num=layer.out_c - 1, o_ch_num_coef=per_load - 1,
        i_row_wid=w - 1, i_col_high=h - 1, o_row_wid=ow - 1, o_col_high=oh - 1,
        kernel_type=km.KpuFilterType.FILTER_3X3 if f == 3 else km.KpuFilterType.FILTER_1X1,
        pool_type=km.KpuPoolType(layer.pool), pad_value=layer.pad_value,
        load_time=-(-layer.out_c // per_load) - 1, para_size=per_load * f * f * (1 if layer.depthwise else c),
        channel_switch_addr=in_lay.row_len * h, row_switch_addr=in_lay.row_len, coef_group=in_lay.groups,
        wb_channel_switch_addr=out_lay.row_len * oh, wb_row_switch_addr=out_lay.row_len, wb_group=out_lay.groups,
        shr_w=layer.shift_w, shr_x=layer.shift_x, arg_w=layer.arg_w, arg_x=layer.arg_x, arg_add=layer.arg_add,
        send_data_out=int(main_out is not None), channel_byte_num=ow * oh - 1, dma_total_byte=ow * oh * layer.out_c - 1,
    )  # fmt: skip
    return km.KpuConv2D(
        main_mem_output=main_out or km.ABSENT_RANGE,
        batches=n,
        layer=lay,
        batch_norm=km.KpuBatchNormTable.of([(m, a, s) for m, s, a in layer.bn]),  # (mul, add, shift) order
        activation=km.KpuActivationTable([km.KpuActivationSegment(s, m, st, b) for st, m, s, b in layer.act]),
        weights=layer.weights.reshape(-1),
    )


def layer_model(layer: Layer) -> tuple[km.KModel, km.MemoryRange]:
    """A kmodel: KPU input at line 0 -> the layer -> main-memory output (uint8 NCHW); also the
    layer's KPU output range."""
    n, _c, h, w = layer.in_shape
    stride = POOL_STRIDE[layer.pool]
    out_shape = (n, layer.out_c, h // stride, w // stride)
    kin = km.MemoryRange(km.MemoryType.K210_KPU, km.DataType.UINT8, 0, km.kpu_bytes(layer.in_shape))
    main = km.MemoryRange(km.MemoryType.MAIN, km.DataType.UINT8, 0, int(np.prod(out_shape)))
    body = layer_body(layer, main_out=main)
    model = km.KModel(main_mem=-(-main.size // 8) * 8, inputs=[kin], input_shapes=[layer.in_shape], outputs=[main],
                      nodes=[body])
    return model, body.kpu_output()


def run_layer(layer: Layer, x: np.ndarray, kpu_bytes: bool = False):
    """Run through write -> read -> kpu_sim; returns the (N, OC, H', W') output (and the raw
    bytes of the layer's output map in KPU RAM if `kpu_bytes`)."""
    model, kout = layer_model(layer)
    program = kpu_sim.load(km.write(model))
    (out,) = program.run([x])
    n, _, h, w = layer.in_shape
    stride = POOL_STRIDE[layer.pool]
    out = out.reshape(n, layer.out_c, h // stride, w // stride)
    if kpu_bytes:
        return out, program.memory.kpu[kout.start : kout.end].copy()
    return out
