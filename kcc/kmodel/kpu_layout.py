"""KPU RAM feature-map layout (kmodel_v4.md §7.3, kpu_semantics.md §2).

Every `mem_k210_kpu` tensor is stored in 64-byte lines. Narrow maps share a line between
channels (4 channels of 16 bytes for W <= 16, 2 of 32 bytes for W <= 32); wider rows take
ceil(W / 64) lines. The layout is part of the file format: it fixes `memory_range.size` of KPU
tensors and the `*_switch_addr` / `coef_group` / `wb_group` register fields.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from kcc.kmodel.spec import KPU_LINE_SIZE


class KpuRowLayout(NamedTuple):
    """How one row of width W is packed (`get_kpu_row_layout`)."""

    groups: int  # channels sharing one 64-byte line
    row_len: int  # 64-byte lines per row
    row_pitch: int  # bytes between the channels of a line


def kpu_row_layout(width: int) -> KpuRowLayout:
    """§7.3 table: W <= 16 -> (4, 1, 16), W <= 32 -> (2, 1, 32), else (1, ceil(W/64), 64)."""
    if width <= 16:
        return KpuRowLayout(4, 1, 16)
    if width <= 32:
        return KpuRowLayout(2, 1, 32)
    return KpuRowLayout(1, (width + 63) // 64, 64)


def kpu_rows(width: int, height: int, channels: int) -> int:
    """64-byte lines of one batch: row_len * H * ceil(C / min(C, groups))."""
    layout = kpu_row_layout(width)
    one_line_channels = min(channels, layout.groups)
    blocks = (channels + one_line_channels - 1) // one_line_channels
    return layout.row_len * height * blocks


def kpu_bytes(shape: Sequence[int]) -> int:
    """Size in KPU RAM of an NCHW map: 64 * rows * N (the `size` of its memory range)."""
    n, c, h, w = (int(d) for d in shape)
    return kpu_rows(w, h, c) * KPU_LINE_SIZE * n


def kpu_offsets(shape: Sequence[int]) -> np.ndarray:
    """Byte offset, relative to the map's start, of every element of an NCHW map.

    Returns an int64 array of the map's shape. Element (n, c, y, x) sits at
    `n*64*rows + (c // groups)*row_len*H*64 + (c % groups)*row_pitch + y*row_len*64 + x`;
    bytes not covered (row tails, unused channel slots) are padding the upload never writes.
    """
    n, c, h, w = (int(d) for d in shape)
    layout = kpu_row_layout(w)
    batch_stride = kpu_rows(w, h, c) * KPU_LINE_SIZE
    line_stride = layout.row_len * KPU_LINE_SIZE
    ch = np.arange(c, dtype=np.int64)
    ch_off = (ch // layout.groups) * line_stride * h + (ch % layout.groups) * layout.row_pitch
    return (
        np.arange(n, dtype=np.int64)[:, None, None, None] * batch_stride
        + ch_off[None, :, None, None]
        + np.arange(h, dtype=np.int64)[None, None, :, None] * line_stride
        + np.arange(w, dtype=np.int64)[None, None, None, :]
    )


def kpu_channel_offset(width: int, height: int, channel: int) -> int | None:
    """Byte offset, from a map's start, of the 64-byte line where `channel` begins, when it begins
    one: (channel // groups) * row_len * H * 64 for a channel that is a multiple of `groups`, else
    None (it shares its line with the channels before it). The channels from there on are laid out
    as a map of their own starting at that line, so a KPU layer writing them there fills exactly
    their slots of the larger map (an in-place concatenation, kcc.ir.kpu_ops.KpuConcat)."""
    layout = kpu_row_layout(width)
    if channel % layout.groups:
        return None
    return (channel // layout.groups) * layout.row_len * height * KPU_LINE_SIZE
