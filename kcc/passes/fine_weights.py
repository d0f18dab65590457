"""fine_weights: depthwise weights too wide for 8 bits, on the KPU as a coarse layer and a fine correction.

The KPU holds one layer's weights as uint8 codes on one grid (a batch-norm multiplier per output
channel scales each channel to the full range, kpu_semantics.md §3), so a channel whose taps span a
wide range relative to what they compute (BlazeHand's second depthwise: taps of -37..39 over inputs
below 1) loses its output to the weights' rounding; --weights-quantize-threshold keeps such channels
in float on the CPU (kcc.passes.channel_split), at ~64 cycles a tap.

Here such a depthwise conv y = act(W * x + b) becomes two KPU layers that add in one accumulator:

    W = W_hi + W_lo        W_hi on the grid of step 1/k (k the most steps per unit that keeps W_hi,
                           0 and 1/k within 255 codes), rounded along each kernel with its error
                           carried, so that each channel's sum of W_lo is within 1/(2k)
    t = m (W_lo * x) + beta_c                 layer A: depthwise, m = k/j
    y = act(W_hi * x + (1/m) t + b - beta_c/m)   layer B: dense over [x; t], t at the centre tap

B's weights (W_hi, the centre taps j/k and zeros) lie on a uint8 grid of step 1/k, so kcc.quant keeps
them exactly (kcc.quant.weight_grid) and legalize_kpu takes them whatever their range; A's weights
span about one step of that grid and round to 8 bits over it. x and t are one concatenation, so they
share a grid: t must fall within x's range, or x's grid widens and every tap of W multiplies x's
coarser rounding. So the plan is measured on the calibration samples (`plan`): x's range, and per
channel the range of W_lo * x; the gain m is the largest k/j whose t spans at most FILL of x's range,
and beta_c centres channel c's t in it. t then rounds on x's grid at 1/m of its weight in y. Padding:
A pads x with zeros like the conv, and B reads t only at its centre tap, the position whose window
the conv sums, for any stride and padding. Outside the samples' range t saturates at x's grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.target.quant_rules import channels_over_threshold

F32 = np.float32

#: calibration samples a pair is planned on (`wide_inputs`)
PLAN_SAMPLES = 8
#: most of x's range the correction t may span on the samples (room for pictures beyond them)
FILL = 0.75
#: what the placement report says of such a conv
FINE_NOTE = ("weights over --weights-quantize-threshold: 8-bit taps on a 1/{k} grid in this layer, their "
             "rounding error computed by a depthwise layer before it and added at the centre tap "
             "(kcc.passes.fine_weights)")


@dataclass(frozen=True)
class FinePlan:
    k: int  # W_hi's steps per unit
    j: int  # the gain m = k/j of A; B's centre tap j/k
    beta: np.ndarray  # [C] A's bias


def grid_steps(w: np.ndarray) -> int:
    """k: the most steps per unit with every weight of w, 0 and 1/k within 255 steps of one grid."""
    span = max(float(w.max()), 0.0) - min(float(w.min()), 0.0)
    return int(math.floor(255.0 / (span + 1.0)))


def split_weights(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(W_hi, W_lo), W_hi on the grid of step 1/k, each channel's taps rounded in order with the
    rounding error carried to the next, so that every channel's sum of W_lo is within 1/(2k)."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    hi = np.empty_like(flat)
    carry = np.zeros(flat.shape[0])
    for t in range(flat.shape[1]):
        hi[:, t] = np.round((flat[:, t] + carry) * k) / k
        carry += flat[:, t] - hi[:, t]
    hi = hi.reshape(w.shape)
    return hi, w.astype(np.float64) - hi


def _depthwise_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[N, C, H, W] depthwise conv of x with w [C, 1, k, k], zero padding k // 2, stride 1 (float64)."""
    k = w.shape[2]
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    h, wd = x.shape[2:]
    out = np.zeros(x.shape, np.float64)
    for i in range(k):
        for j in range(k):
            out += xp[:, :, i:i + h, j:j + wd] * w[None, :, 0, i, j, None, None]
    return out


def applies(w: np.ndarray, op: O.Op) -> bool:
    """Whether depthwise conv `op` with weights w [C, 1, k, k] can take the pair: a square 1x1 or 3x3
    kernel, no dilation, and B's grid one step per unit or finer."""
    return (isinstance(op, O.Conv2D) and w.shape[2] == w.shape[3] and w.shape[2] in (1, 3)
            and op.dilation == (1, 1) and grid_steps(w) >= 1)


def plan(w: np.ndarray, xs: list[np.ndarray]) -> FinePlan | None:
    """The pair's k, j and beta for weights w [C, 1, k, k] over the samples' inputs xs (each
    [N, C, H, W], x's values), or None if x is constant or no gain up to k fits (module docstring)."""
    k = grid_steps(w)
    _, w_lo = split_weights(w, k)
    x_lo = min(float(x.min()) for x in xs)
    x_hi = max(float(x.max()) for x in xs)
    corr = [_depthwise_same(x, w_lo) for x in xs]
    c_lo = np.min([c.min(axis=(0, 2, 3)) for c in corr], axis=0)
    c_hi = np.max([c.max(axis=(0, 2, 3)) for c in corr], axis=0)
    span = float(np.max(c_hi - c_lo))
    if x_hi <= x_lo:
        return None
    j = max(1, math.ceil(k * span / (FILL * (x_hi - x_lo))))  # the largest gain k/j within FILL
    if j > 255 // 2:
        return None  # B's centre tap j/k would not fit its 255 steps
    m = k / j
    beta = (x_lo + x_hi) / 2 - m * (c_lo + c_hi) / 2
    return FinePlan(k, j, beta)


def fine_pair(g: Graph, anchor: Node, x: Node, w: np.ndarray, b: np.ndarray, op: O.Conv2D, name: str,
              p: FinePlan) -> Node:
    """Depthwise conv `op` of x with weights w [C, 1, k, k] and bias b as layers A and B (module
    docstring) under plan p, inserted before `anchor`; returns B (named `name`)."""
    c, kk = w.shape[0], w.shape[2]
    w_hi, w_lo = split_weights(w, p.k)
    m = p.k / p.j
    pad = kk // 2
    a_w = g.insert_before(anchor, O.Constant((m * w_lo).astype(F32)), (), name + "/fine/w")
    a_b = g.insert_before(anchor, O.Constant(p.beta.astype(F32)), (), name + "/fine/b")
    a_op = O.Conv2D((1, 1), ((pad, pad), (pad, pad)), (1, 1), c)
    t = g.insert_before(anchor, a_op, (x, a_w, a_b), name + "/fine")
    both = g.insert_before(anchor, O.Concat(1), (x, t), name + "/fine_in")
    wb = np.zeros((c, 2 * c, kk, kk), np.float64)
    wb[np.arange(c), np.arange(c)] = w_hi[:, 0]
    wb[np.arange(c), c + np.arange(c), pad, pad] = p.j / p.k
    b_w = g.insert_before(anchor, O.Constant(wb.astype(F32)), (), name + "/w")
    b_b = g.insert_before(anchor, O.Constant((b.astype(np.float64) - p.beta / m).astype(F32)), (), name + "/b")
    b_op = O.Conv2D(op.stride, op.padding, op.dilation, 1, op.act)
    return g.insert_before(anchor, b_op, (both, b_w, b_b), name, FINE_NOTE.format(k=p.k))


def _depthwise(n: Node) -> bool:
    c, oc = n.inputs[0].shape[1], n.inputs[1].shape[0]
    return isinstance(n.op, O.Conv2D) and n.op.groups == c == oc and c > 1


def wide_inputs(g: Graph, threshold: float, samples: list | None) -> dict[int, list[np.ndarray]]:
    """The calibration samples' values of the input of every depthwise conv with channels over
    --weights-quantize-threshold `threshold` (by the conv's id), from one float run of g: what its
    pairs are planned on. Empty without samples (the channels stay on the CPU)."""
    wanted = {id(n.inputs[0]): id(n) for n in g.nodes
              if isinstance(n.op, O.Conv2D) and _depthwise(n) and n.inputs[1].is_constant
              and applies(n.inputs[1].data, n.op) and any(channels_over_threshold(n.inputs[1].data, threshold))}
    if not wanted or not samples:
        return {}
    seen: dict[int, list[np.ndarray]] = {conv: [] for conv in wanted.values()}
    for sample in samples[:PLAN_SAMPLES]:
        run(g, sample, lambda v, value: seen[wanted[id(v)]].append(value) if id(v) in wanted else None)
    return seen


def run_plans(n: Node, runs: list[tuple[int, int]], over: list[bool], order: list[int] | None,
              xs: list[np.ndarray] | None) -> dict[int, FinePlan]:
    """The plan of each run of depthwise n's wide channels (`over`; by run index) that can take a pair,
    measured on n's input values xs (in n's own channel order; the runs are of n's channels taken in
    `order`, if given: kcc.passes.channel_split)."""
    out: dict[int, FinePlan] = {}
    if not xs:
        return out
    w = n.inputs[1].data if order is None else n.inputs[1].data[order]
    xs = xs if order is None else [x[:, order] for x in xs]
    for i, (lo, hi) in enumerate(runs):
        if over[lo] and applies(w[lo:hi], n.op):
            p = plan(w[lo:hi], [x[:, lo:hi] for x in xs])
            if p is not None:
                out[i] = p
    return out
