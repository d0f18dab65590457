"""float_prelu: a PReLU computed in float on the CPU, as kcc.passes.lower_to_neutral lowers it to
kmodel v4 neutral ops, and what that costs (`float_prelu_cycles`, which prelu_kpu and prelu_stream
weigh their KPU forms against).

    slopes a per channel, all <= 1 (or all >= 1)  x + clamp((a-1) x, 0, inf) (or (-inf, 0)): one 1x1
                                                  depthwise conv2d and one add
    slopes a per channel on both sides of 1       max(x, a x) where a <= 1, min(x, a x) where a > 1,
                                                  in runs of channels (`_max_min_runs`)
    one slope in [0, 1]                           max(x, a x)
    otherwise                                     max(x, 0) + a min(x, 0)
A binary op with a broadcast operand costs several conv taps an element (kcc.target.k210 CPU_CYCLES
"broadcast"): a per-channel product is a 1x1 depthwise conv2d instead (`depthwise`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Node, channel_values
from kcc.target.k210 import CPU_NODE_CYCLES, cpu_cycles

F32 = np.float32


class Builder(Protocol):
    """What lowering adds nodes with (kcc.passes.lower_to_neutral's builder)."""

    def add(self, op: O.Op, inputs, name: str, note: str = "") -> Node: ...

    def const(self, data: np.ndarray, name: str) -> Node: ...


def depthwise(b: Builder, x: Node, w: np.ndarray, act: tuple[float, float], name: str,
              bias: np.ndarray | None = None) -> Node:
    """y_c = clamp(bias_c + x_c * w_c): a 1x1 conv2d with one group per channel (kmodel_v4.md §8.3)."""
    c = x.shape[1]
    wn = b.const(np.asarray(w, F32).reshape(c, 1, 1, 1), name + "/w")
    bn = b.const(np.zeros(c, F32) if bias is None else np.asarray(bias, F32), name + "/b")
    return b.add(O.Conv2D(groups=c, act=act), (x, wn, bn), name)


def prelu(b: Builder, n: Node, x: Node, alpha: Node) -> Node:
    """PReLU n of x with slopes alpha, as kmodel v4 neutral ops (module docstring)."""
    slopes = channel_values(x, alpha)
    if slopes is not None:
        # x + (a-1)*min(x, 0) as 1x1 depthwise conv2d and same-shape adds: a binary with a broadcast
        # operand costs several conv taps per element (kcc.target.k210 CPU_CYCLES "broadcast"). The
        # conv's clamp folds min(x, 0) in: for a <= 1, (a-1)*x >= 0 exactly where x <= 0, so
        # max((a-1)*x, 0) = (a-1)*min(x, 0); for a >= 1, min((a-1)*x, 0) is.
        d = slopes - F32(1)
        if np.all(d <= 0) or np.all(d >= 0):
            act = (0.0, np.inf) if np.all(d <= 0) else (-np.inf, 0.0)
            scaled = depthwise(b, x, d, act, n.name + "/alpha_neg")
            return b.add(O.Binary("add"), (x, scaled), n.name)
        runs = _runs(x, slopes)
        if runs:
            return _max_min_runs(b, n, x, slopes, runs)
        # Mixed signs: min(x, 0) by a unit conv's clamp, then (a-1) times it: two convs and one add
        # (the a <= 1 and a > 1 channels each by a conv and an add cost one add more). Beside x, m
        # lives until the product is made: BlazePalm's working memory is the same (901152 B).
        m = depthwise(b, x, np.ones_like(d), (-np.inf, 0.0), n.name + "/negative")
        scaled = depthwise(b, m, d, O.NO_CLAMP, n.name + "/alpha_neg")
        return b.add(O.Binary("add"), (x, scaled), n.name)
    a = alpha.data if alpha.is_constant else None
    if a is not None and np.all((a >= 0) & (a <= 1)):
        ax = b.add(O.Binary("mul"), (x, alpha), n.name + "/alpha_x")
        return b.add(O.Binary("max"), (x, ax), n.name)
    zero = b.const(np.zeros((), F32), n.name + "/zero")
    pos = b.add(O.Binary("max"), (x, zero), n.name + "/pos")
    neg = b.add(O.Binary("min"), (x, zero), n.name + "/neg")
    scaled = b.add(O.Binary("mul"), (neg, alpha), n.name + "/alpha_neg")
    return b.add(O.Binary("add"), (pos, scaled), n.name)


#: most float bytes of one run of channels `_max_min_runs` computes at a time: its product a x lives
#: beside x and the PReLU's map until the run's max or min is written into that map
PRELU_RUN_BYTES = 64 * 1024


def prelu_runs(slopes: np.ndarray, plane: int) -> list[tuple[int, int, bool]]:
    """The runs of channels (c0, c1, a > 1) a per-channel PReLU with slopes on both sides of 1 is
    computed in (`_max_min_runs`): maximal runs of slopes on one side of 1, cut to PRELU_RUN_BYTES of
    float (`plane` elements a channel)."""
    most = max(1, PRELU_RUN_BYTES // (4 * plane))
    runs, c0, c = [], 0, len(slopes)
    while c0 < c:
        rising, c1 = bool(slopes[c0] > 1), c0 + 1
        while c1 < c and bool(slopes[c1] > 1) == rising and c1 - c0 < most:
            c1 += 1
        runs.append((c0, c1, rising))
        c0 = c1
    return runs


def _runs(x: Node, slopes: np.ndarray) -> list[tuple[int, int, bool]] | None:
    """`prelu_runs` of x's channels where they are views (a batch-1 map, kcc.emit.storage), else None."""
    return prelu_runs(slopes, x.shape[2] * x.shape[3]) if x.shape[0] == 1 and x.type.rank == 4 else None


def float_prelu_cycles(x: Node, slopes: np.ndarray | None) -> float:
    """CPU cycles of the float PReLU `prelu` makes of x with per-channel `slopes` (None: one
    per-channel form): a 1x1 depthwise conv and a binary op an element, each node dispatched; with
    slopes on both sides of 1, that pair a run (`_max_min_runs`), or two convs and an add on a map
    whose channels are no views."""
    conv, binary = cpu_cycles("conv2d_mac"), cpu_cycles("binary")
    if slopes is None or np.all(slopes <= 1) or np.all(slopes >= 1):
        return (conv + binary) * x.type.size + 2 * CPU_NODE_CYCLES
    runs = _runs(x, slopes)
    if runs is None:
        return (2 * conv + binary) * x.type.size + 3 * CPU_NODE_CYCLES
    return (conv + binary) * x.type.size + 2 * len(runs) * CPU_NODE_CYCLES


def _max_min_runs(b: Builder, n: Node, x: Node, slopes: np.ndarray, runs: list[tuple[int, int, bool]]) -> Node:
    """PReLU(x) with slopes on both sides of 1, run of channels by run of channels (`prelu_runs`):
    max(x, a x) where a <= 1 (a x >= x exactly where x <= 0, negative a too) and min(x, a x) where
    a > 1, a 1x1 depthwise conv and a binary op an element, each run's result written into its
    channels of the PReLU's map (kcc.emit.storage: a channel range of a batch-1 map is a view, a
    concatenation of CPU results is computed in place). The same values as TFLite's relu(x) + a
    (-relu(-x)): one product, no sum. BlazePalm: x + (a-1) min(x, 0) was two convs and an add."""
    _, _, h, w = x.shape
    parts = []
    for c0, c1, rising in runs:
        xs = b.add(O.StridedSlice((0, c0, 0, 0), (1, c1, h, w), (1, 1, 1, 1)), (x,), f"{n.name}/channels{c0}")
        ax = depthwise(b, xs, slopes[c0:c1], O.NO_CLAMP, f"{n.name}/alpha_x{c0}")
        parts.append(b.add(O.Binary("min" if rising else "max"), (xs, ax), f"{n.name}/run{c0}"))
    return b.add(O.Concat(1), tuple(parts), n.name)
