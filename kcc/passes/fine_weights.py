"""fine_weights: conv weights too wide for 8 bits, on the KPU as a coarse layer and a fine correction.

The KPU holds one layer's weights as uint8 codes on one grid (a batch-norm multiplier per output
channel scales each channel to the full range, kpu_semantics.md §3), so a channel whose taps span a
wide range relative to what they compute (BlazeHand's second depthwise: taps of -37..39 over inputs
below 1) loses its output to the weights' rounding; --weights-quantize-threshold keeps such channels
in float on the CPU (kcc.passes.channel_split), at ~64 cycles a tap.

Here such a depthwise conv y = act(W * x + b) becomes two KPU layers that add in one accumulator (a
dense conv the same way, A dense and B's centre taps the identity over t's channels; `whole_pair`):

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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, depthwise_conv
from kcc.options import CompileOptions
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext
from kcc.target.quant_rules import channels_over_threshold

F32 = np.float32

#: calibration samples a pair is planned on (`wide_inputs`)
PLAN_SAMPLES = 8
#: most of x's range the correction t may span on the samples (room for pictures beyond them)
FILL = 0.75
#: layer B's note (IR dumps)
FINE_NOTE = ("weights over --weights-quantize-threshold: 8-bit taps on a 1/{k} grid in this layer, their "
             "rounding error computed by a layer before it and added at the centre tap "
             "(kcc.passes.fine_weights)")


@dataclass(frozen=True)
class FinePlan:
    """A pair's choices (module docstring)."""

    k: int  # W_hi's steps per unit
    j: int  # the gain m = k/j of A; B's centre tap j/k
    beta: np.ndarray  # [OC] A's bias


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


def _conv_same(x: np.ndarray, w: np.ndarray, depthwise: bool) -> np.ndarray:
    """x [N, C, H, W] convolved with w ([C, 1, k, k] depthwise, else [OC, C, k, k]), zero padding
    k // 2, stride 1, in float64."""
    k = w.shape[2]
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    h, wd = x.shape[2:]
    out = np.zeros((x.shape[0], w.shape[0], h, wd), np.float64)
    for i in range(k):
        for j in range(k):
            view = xp[:, :, i:i + h, j:j + wd]
            out += view * w[None, :, 0, i, j, None, None] if depthwise else np.einsum("nchw,oc->nohw", view, w[:, :, i, j])
    return out


def applies(w: np.ndarray, op: O.Op) -> bool:
    """Whether conv `op` (dense, or depthwise with w [C, 1, k, k]) can take the pair: a square 1x1 or
    3x3 kernel, no dilation, and B's grid one step per unit or finer."""
    return (isinstance(op, O.Conv2D) and (op.groups == 1 or w.shape[1] == 1 and w.shape[0] == op.groups)
            and w.shape[2] == w.shape[3] and w.shape[2] in (1, 3) and op.dilation == (1, 1) and grid_steps(w) >= 1)


def plan(w: np.ndarray, xs: list[np.ndarray], depthwise: bool = True) -> FinePlan | None:
    """The pair's k, j and beta for weights w over the samples' inputs xs (each [N, C, H, W], x's
    values), or None if x is constant or no gain fits B's grid (module docstring)."""
    k = grid_steps(w)
    w_hi, w_lo = split_weights(w, k)
    x_lo = min(float(x.min()) for x in xs)
    x_hi = max(float(x.max()) for x in xs)
    if x_hi <= x_lo:
        return None
    corr = [_conv_same(x, w_lo, depthwise) for x in xs]
    c_lo = np.min([c.min(axis=(0, 2, 3)) for c in corr], axis=0)
    c_hi = np.max([c.max(axis=(0, 2, 3)) for c in corr], axis=0)
    span = float(np.max(c_hi - c_lo))
    j = max(1, math.ceil(k * span / (FILL * (x_hi - x_lo))))  # the largest gain k/j within FILL
    if (max(float(w_hi.max()), j / k, 0.0) - min(float(w_hi.min()), 0.0)) * k > 255:
        return None  # B's taps and centre weight j/k would not fit one grid's 255 steps
    m = k / j
    beta = (x_lo + x_hi) / 2 - m * (c_lo + c_hi) / 2
    return FinePlan(k, j, beta)


def fine_pair(g: Graph, anchor: Node, x: Node, w: np.ndarray, b: np.ndarray, op: O.Conv2D, name: str,
              p: FinePlan) -> Node:
    """Conv `op` of x (dense, or depthwise with w [C, 1, k, k]) with weights w and bias b as layers A and
    B (module docstring) under plan p, inserted before `anchor`; returns B (named `name`)."""
    oc, c, kk = w.shape[0], x.shape[1], w.shape[2]
    w_hi, w_lo = split_weights(w, p.k)
    m = p.k / p.j
    pad = kk // 2
    a_w = g.insert_before(anchor, O.Constant((m * w_lo).astype(F32)), (), name + "/fine/w")
    a_b = g.insert_before(anchor, O.Constant(p.beta.astype(F32)), (), name + "/fine/b")
    a_op = O.Conv2D((1, 1), ((pad, pad), (pad, pad)), (1, 1), op.groups)
    t = g.insert_before(anchor, a_op, (x, a_w, a_b), name + "/fine")
    both = g.insert_before(anchor, O.Concat(1), (x, t), name + "/fine_in")
    wb = np.zeros((oc, c + oc, kk, kk), np.float64)
    if op.groups > 1:  # depthwise: output channel o reads x's channel o
        wb[np.arange(oc), np.arange(oc)] = w_hi[:, 0]
    else:
        wb[:, :c] = w_hi
    wb[np.arange(oc), c + np.arange(oc), pad, pad] = p.j / p.k
    b_w = g.insert_before(anchor, O.Constant(wb.astype(F32)), (), name + "/w")
    b_b = g.insert_before(anchor, O.Constant((b.astype(np.float64) - p.beta / m).astype(F32)), (), name + "/b")
    b_op = O.Conv2D(op.stride, op.padding, op.dilation, 1, op.act)
    return g.insert_before(anchor, b_op, (both, b_w, b_b), name, FINE_NOTE.format(k=p.k))


def wide_inputs(g: Graph, threshold: float, samples: list | None) -> dict[int, list[np.ndarray]]:
    """The calibration samples' values of the input of every conv (dense or depthwise) with output
    channels over --weights-quantize-threshold `threshold` (by the conv's id), from one float run of g:
    what its pairs are planned on. Empty without samples (the channels stay on the CPU)."""
    wanted = {id(n.inputs[0]): id(n) for n in g.nodes
              if isinstance(n.op, O.Conv2D) and (depthwise_conv(n) or n.op.groups == 1) and n.inputs[1].is_constant
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
        group = O.Conv2D(n.op.stride, n.op.padding, n.op.dilation, hi - lo, n.op.act)  # the run's own conv
        if over[lo] and applies(w[lo:hi], group):
            p = plan(w[lo:hi], [x[:, lo:hi] for x in xs], True)
            if p is not None:
                out[i] = p
    return out


def whole_pair(g: Graph, n: Node, xs: list[np.ndarray], opts: CompileOptions, log: Callable[[str], None]) -> bool:
    """Conv n, which legalize_kpu leaves in float on the CPU for its weights' range alone and whose
    channels no range split separates (a dense conv, or a depthwise one with all channels over), as one
    pair planned on its input values xs, if both layers land on the KPU (tried on a graph of their own)."""
    w, b = n.inputs[1].data, n.inputs[2].data
    if not (applies(w, n.op) and n.inputs[2].is_constant):
        return False
    p = plan(w, xs, depthwise_conv(n))
    if p is None:
        return False
    trial = Graph()
    x = trial.input(0, n.inputs[0].shape)
    whole = trial.add(n.op, (x, trial.constant(w), trial.constant(b)), n.name)
    trial.outputs = [fine_pair(trial, whole, x, w, b, n.op, n.name + "/pair", p)]
    trial.remove_dead()
    ctx = CompileContext(opts)
    legalize_kpu(trial, ctx)
    if not all(q.on_kpu for q in ctx.placements if q.op == "conv2d"):
        return False
    log(f"   '{n.name.split(';')[0]}': weights over --weights-quantize-threshold: on the KPU with a correction "
        f"layer (kcc.passes.fine_weights)")
    g.substitute(n, fine_pair(g, n, n.inputs[0], w, b, n.op, n.name + "/pair", p), "/unpaired")
    return True
