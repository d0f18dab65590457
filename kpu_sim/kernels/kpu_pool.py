"""The KPU's fixed pooling unit on the uint8 activation output (kpu_semantics.md §3 step 5).

nncase `kpu_pool2d`: output size floor(in / stride); windows start at (stride*oy, stride*ox)
without left/top padding. Max pools start from 0 and read 0 for taps outside the map; mean
pools sum in uint32 and floor-divide by the window size, clamping tap indices to the map (edge
replication, only reachable by mean_2_s1); the pick pools (5, 6, 7) copy one tap.
"""

from __future__ import annotations

import numpy as np

from kcc.kmodel import KpuPoolType

P = KpuPoolType

# pool -> (window, stride, pick offset (y, x) or None)
_POOLS: dict[KpuPoolType, tuple[int, int, tuple[int, int] | None]] = {
    P.BYPASS: (1, 1, (0, 0)),
    P.MAX_2_S2: (2, 2, None),
    P.MEAN_2_S2: (2, 2, None),
    P.MAX_4_S4: (4, 4, None),
    P.MEAN_4_S4: (4, 4, None),
    P.LEFT_TOP_2_S2: (2, 2, (0, 0)),
    P.RIGHT_TOP_2_S2: (2, 2, (0, 1)),
    P.LEFT_TOP_4_S4: (4, 4, (0, 0)),
    P.MEAN_2_S1: (2, 1, None),
    P.MAX_2_S1: (2, 1, None),
}
_MEAN = {P.MEAN_2_S2, P.MEAN_4_S4, P.MEAN_2_S1}


def pool_output_size(size: int, pool: KpuPoolType) -> int:
    """`get_kpu_pool_output_size`: in / stride (integer division)."""
    return size // _POOLS[pool][1]


def pick_offset(pool: KpuPoolType) -> tuple[int, int, int] | None:
    """(stride, dy, dx) if the pool just selects one pixel per window (bypass included), else None.

    For these pools the conv and activation only need to be computed at the selected pixels.
    """
    _, stride, offset = _POOLS[pool]
    return None if offset is None else (stride, *offset)


def pool(x: np.ndarray, pool_type: KpuPoolType) -> np.ndarray:
    """Pool a (..., H, W) uint8 array; returns (..., H // stride, W // stride) uint8."""
    window, stride, offset = _POOLS[pool_type]
    h, w = x.shape[-2:]
    oh, ow = h // stride, w // stride
    if offset is not None:
        dy, dx = offset
        return np.ascontiguousarray(x[..., dy : dy + stride * oh : stride, dx : dx + stride * ow : stride])
    if stride == 1:  # 2x2 window at every pixel, reaching one past the bottom/right edge
        if pool_type is P.MEAN_2_S1:
            padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, 1), (0, 1)], mode="edge").astype(np.uint32)
        else:
            padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, 1), (0, 1)], mode="constant")
        taps = [padded[..., ky : ky + h, kx : kx + w] for ky in (0, 1) for kx in (0, 1)]
    else:
        # Non-overlapping windows inside the map: rows/columns past stride*out are never read.
        cropped = x[..., : stride * oh, : stride * ow]
        blocks = cropped.reshape(*x.shape[:-2], oh, stride, ow, stride)
        taps = [blocks[..., :, ky, :, kx] for ky in range(window) for kx in range(window)]
    if pool_type in _MEAN:
        total = np.zeros(taps[0].shape, dtype=np.uint32)
        for t in taps:
            total += t
        return (total // np.uint32(window * window)).astype(np.uint8)
    out = taps[0].copy()
    for t in taps[1:]:
        np.maximum(out, t, out=out)
    return out.astype(np.uint8, copy=False)
