"""kernel_terms: a k x k convolution as a sum of 3-tap-per-axis terms over views of its input.

The algebra kcc.passes.decompose_kernels builds on: which kernel taps each 3x3 term takes and which
window (view) of the input it reads.

## One spatial axis (in 2-D a term is the product of an H term and a W term)

A conv with K taps, stride s and p zero rows before reads (x = 0 outside [0, H))

    y[i] = sum_{k<K} w[k] x[s*i + k - p]

Pick a split step q (1, or q = s) and write k = q*t + r, phase r < q, t < A_r = ceil((K - r)/q).
With r - p = q*e_r + phi_r (0 <= phi_r < q) the input index is q*(i*s/q + t + e_r) + phi_r, so

    y[i] = sum_r sum_t w[q*t + r] X_r[(s/q)*i + t + e_r],        X_r[j] = x[q*j + phi_r]

Group t into blocks of three: t = 3b + a - z (a < 3, b < ceil(A_r/3), z zero taps put first):

    y[i] = sum_{r,b} sum_{a<3} w_rb[a] X_r[(s/q)*i + a + o_rb],  w_rb[a] = w[q*(3b + a - z) + r] (0 off the kernel)
                                                                  o_rb = 3b - z + e_r

Each (r, b) is a 3-tap conv with stride s/q of the view X_r starting at o_rb: a `term`. A negative
o is zero padding before, a positive one a crop; the view is cut so that the term yields exactly
the output rows. q = 1 is the spatial block split (the terms inherit the stride, legalize picks or
slices); q = s is the polyphase split (the phases of the input, every term at stride 1, so a
stride-2 conv runs on quarter-size maps). Terms reading only padding are dropped.

The forms whose views KPU layers make take their own terms: `shift_terms` (a stride-1 conv over
copies shifted by at most one), `copy_offsets` (copies shifted by each tap's offset) and `phase_terms`
(a stride-2 conv over its input's stride phases, each picked by a KPU layer).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisTerm:
    """One axis of a term: conv taps `taps` (kernel indices, -1 = zero) over the view
    X[j] = x[step*j + phase], first read at view index `offset`, with stride `stride`."""

    taps: tuple[int, int, int]
    phase: int
    step: int
    offset: int
    stride: int


def axis_terms(k: int, s: int, pad_before: int, q: int, z: int) -> list[AxisTerm]:
    """The terms of one axis (module docstring), split step q in {1, s}, z zero taps first."""
    terms = []
    for r in range(q):
        a_r = -(-(k - r) // q)
        if a_r <= 0:
            continue
        m = -(-a_r // 3)
        zr = min(z, 3 * m - a_r)
        phi = (r - pad_before) % q
        e = (r - pad_before - phi) // q
        for b in range(m):
            taps = tuple(q * (3 * b + a - zr) + r if 0 <= 3 * b + a - zr < a_r else -1 for a in range(3))
            terms.append(AxisTerm(taps, phi, q, 3 * b - zr + e, s // q))
    return terms


def max_zero_taps(k: int, q: int) -> int:
    """The most zero taps any phase's blocks carry (so z in 0..max_zero_taps covers every placement)."""
    out = 0
    for r in range(min(q, k)):
        a_r = -(-(k - r) // q)
        out = max(out, 3 * -(-a_r // 3) - a_r)
    return out


@dataclass(frozen=True)
class Window:
    """Where one axis term reads: view indices [lo, hi) of X, plus conv zero padding."""

    begin: int  # input index of view element lo
    end: int  # one past the input index of view element hi - 1
    step: int
    pad_before: int
    pad_after: int
    stride: int


def window(t: AxisTerm, size: int, out: int) -> Window | None:
    length = len(range(t.phase, size, t.step))
    end = t.offset + t.stride * (out - 1) + 3
    lo, hi = max(0, t.offset), min(length, end)
    if hi <= lo:
        return None  # the term reads padding only
    return Window(t.phase + t.step * lo, t.phase + t.step * (hi - 1) + 1, t.step,
                   max(0, -t.offset), max(0, end - length), t.stride)


def conv_terms(w: np.ndarray, stride: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]],
               in_hw: tuple[int, int], out_hw: tuple[int, int], split: tuple[int, int],
               z: tuple[int, int]) -> list[tuple[np.ndarray, Window, Window]] | None:
    """(3x3 kernel, H window, W window) of every term of weights w [OC, C, kh, kw] that reads any
    input, for split steps `split` and zero placements `z`; None if there is none."""
    out = []
    for th in axis_terms(w.shape[2], stride[0], padding[0][0], split[0], z[0]):
        wh = window(th, in_hw[0], out_hw[0])
        if wh is None:
            continue
        for tw in axis_terms(w.shape[3], stride[1], padding[1][0], split[1], z[1]):
            ww = window(tw, in_hw[1], out_hw[1])
            if ww is None:
                continue
            k = np.zeros((*w.shape[:2], 3, 3), np.float32)
            for a, ka in enumerate(th.taps):
                for c, kc in enumerate(tw.taps):
                    if ka >= 0 and kc >= 0:
                        k[:, :, a, c] = w[:, :, ka, kc]
            out.append((k, wh, ww))
    return out or None


# -------------------------------------------------------------------------- shifted copies (stack_kpu)
#: per window shift c of one axis, the offsets d = k - pad_before of the kernel taps it takes. A copy
#: v[i] = x[i + c] (0 outside) on x's own grid loses x's last row for c = -1 (first for c = +1), so a
#: "same" 3x3 conv of v may not take the tap reading past v's edge (v[i + 1] for c = -1): d in {-2, -1}
#: for c = -1, the unshifted x all of -1..1 (its zero padding is the conv's). Each offset is taken
#: once: the shifted copies take only the outer offsets +-2, which nothing else reaches.
SHIFT_OFFSETS = {-1: (-2,), 0: (-1, 0, 1), 1: (2,)}


def shift_terms(w: np.ndarray, stride: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]],
                in_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """(3x3 kernel, (cy, cx)) of every term of a stride-1 conv of weights w [OC, C, kh, kw] whose output
    grid is its input's ("same"), each a "same" 3x3 conv of the copy v[i, j] = x[i + cy, j + cx] (0
    outside x) with |cy|, |cx| <= 1: a 3x3 KPU layer whose one tap of 1 is at (1 + cy, 1 + cx) makes
    that copy, on x's grid. y[i] = sum_d w[d + p] x[i + d] = sum_c sum_{d in SHIFT_OFFSETS[c]} w[d + p]
    v_c[i + (d - c)], tap a = d - c + 1. Kernels up to 5x5 (offsets -2..2); None otherwise. A 5x5
    takes nine terms (the centre one x itself: offsets -1..1 of both axes; a corner term one tap)."""
    if tuple(stride) != (1, 1) or tuple(in_hw) != tuple(out_hw):
        return None
    axes = []
    for size, (before, after) in zip(w.shape[2:], padding):
        if before + after != size - 1:
            return None
        offsets = range(-before, size - before)
        if min(offsets) < -2 or max(offsets) > 2:
            return None
        axes.append([(c, [d for d in SHIFT_OFFSETS[c] if d in offsets], before) for c in (-1, 0, 1)])
        axes[-1] = [t for t in axes[-1] if t[1]]
    out = []
    for cy, dys, py in axes[0]:
        for cx, dxs, px in axes[1]:
            k = np.zeros((*w.shape[:2], 3, 3), np.float32)
            for dy in dys:
                for dx in dxs:
                    k[:, :, dy - cy + 1, dx - cx + 1] = w[:, :, dy + py, dx + px]
            out.append((k, (cy, cx)))
    return out


# --------------------------------------------------------------------- whole-offset copies (copies_kpu)
def copy_offsets(w: np.ndarray, stride: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]],
                 in_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """(1x1 kernel [OC, C, 1, 1], (dy, dx)) of every tap of a stride-1 "same" conv of weights w [OC, C,
    kh, kw] with offsets |dy|, |dx| <= 2: y[i, j] = sum_(dy, dx) w[dy + py, dx + px] v_(dy, dx)[i, j], where
    v_(dy, dx)[i, j] = x[i + dy, j + dx] (0 outside x) is the copy of x shifted by the tap's whole offset.
    Such a copy is exact at the border too when made by unit shifts (`unit_steps`): a unit copy of a
    unit copy is x[i + 2] where i + 2 is inside x and 0 elsewhere, as the first copy already is 0
    wherever i + 1 is outside. A 5x5 takes 25 copies, the centre one x itself; None for other convs."""
    if tuple(stride) != (1, 1) or tuple(in_hw) != tuple(out_hw):
        return None
    for size, (before, after) in zip(w.shape[2:], padding):
        if before + after != size - 1 or before > 2 or after > 2:
            return None
    (py, _), (px, _) = padding
    return [(w[:, :, a:a + 1, b:b + 1], (a - py, b - px)) for a in range(w.shape[2]) for b in range(w.shape[3])]


def unit_steps(offset: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first, second) unit shifts whose chain makes the copy at `offset` (|dy|, |dx| <= 2): the first
    is the offset clipped to [-1, 1] (itself a copy a 5x5 takes), the second what remains."""
    first = tuple(max(-1, min(1, d)) for d in offset)
    return first, (offset[0] - first[0], offset[1] - first[1])


# --------------------------------------------------------------- stride phases made by the KPU (phases_kpu)
def phase_axis(k: int, pad_before: int, size: int, out: int) -> list[tuple[int, list[tuple[int, int]]]] | None:
    """One axis of a stride-2 conv (k taps, pad_before, input `size`, `out` outputs) as taps of phase
    maps P_a[j] = x[2j + a] (0 outside x), a in {-1, 0, 1}, j < out = size // 2: [(a, [(t, tap)])],
    where tap k reads x[2i + d] = P_a[i + t] (d = k - pad_before = 2t + a, |t| <= 1, a 3x3 "same" conv
    of P_a at stride 1). P_a is what a 3x3 depthwise KPU layer with one tap of 1 at 1 + a makes of x,
    picked (`left_top_2_s2`): out = size // 2 rows, so the conv must have that many outputs. The
    stacked conv reads its padding, real 0, at j = -1 and j = out; that is exact only when x is 0
    there too (2j + a outside x): t = -1 needs d < 0, t = +1 needs 2 * out + d - 2 >= size. The fewest
    phases that take every tap; None if no set does (offsets beyond -3..3, an odd size whose last
    output reads x's last row through j = out, a conv with another number of outputs). The phases
    come in the order of their first tap."""
    if out != size // 2 or out < 1:
        return None
    offsets = [kk - pad_before for kk in range(k)]

    def ways(d: int) -> list[tuple[int, int]]:  # (a, t) reading tap d exactly
        found = []
        for a in (0, 1, -1):
            t, odd = divmod(d - a, 2)
            if odd or abs(t) > 1 or (t == -1 and d >= 0) or (t == 1 and 2 * out + d - 2 < size):
                continue
            found.append((a, t))
        return found

    options = {d: ways(d) for d in offsets}
    if not all(options.values()):
        return None
    for n_phases in (1, 2, 3):
        for phases in itertools.combinations((0, 1, -1), n_phases):
            if all(any(a in phases for a, _ in options[d]) for d in offsets):
                taken: dict[int, list[tuple[int, int]]] = {a: [] for a in phases}
                for d in offsets:
                    a, t = next(way for way in options[d] if way[0] in phases)
                    taken[a].append((t, d + pad_before))
                # in the order of the polyphase split's terms (`axis_terms`: the phase of tap 0 first), the
                # taps at the same places: the stacked layer is the CPU-view `stack`'s (z zero taps first)
                return sorted(((a, taken[a]) for a in phases if taken[a]), key=lambda p: min(tap for _, tap in p[1]))
    return None


def phase_terms(w: np.ndarray, stride: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]],
                in_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """(3x3 kernel, (a, b)) of every term of a stride-2 conv of weights w [OC, C, kh, kw] as "same" 3x3
    convs at stride 1 of the phase maps P_(a, b)[i, j] = x[2i + a, 2j + b] (`phase_axis`, both axes):
    y[i, j] = sum_(a, b) sum_(t, u) k_(a, b)[1 + t, 1 + u] P_(a, b)[i + t, j + u]. A 5x5 with TFLite SAME
    padding on an even size (pads (1, 2)) takes the phases a, b in {0, 1}: four terms, the (1, 1) one
    all nine taps, the (0, 0) one four. None when an axis has no such phases."""
    if tuple(stride) != (2, 2):
        return None
    axes = [phase_axis(k, before, size, out)
            for k, (before, _), size, out in zip(w.shape[2:], padding, in_hw, out_hw)]
    if None in axes:
        return None
    out = []
    for a, rows in axes[0]:
        for b, cols in axes[1]:
            k = np.zeros((*w.shape[:2], 3, 3), np.float32)
            for t, ky in rows:
                for u, kx in cols:
                    k[:, :, 1 + t, 1 + u] = w[:, :, ky, kx]
            out.append((k, (a, b)))
    return out
