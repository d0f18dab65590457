"""Rounding a KPU layer's weights to 8 bits with its input in view (data-aware rounding).

Rounding every weight to its nearest code treats the rounding errors e = w_q - w as independent,
but a conv's output error is e . x, summed over taps whose inputs are strongly correlated (a smooth
map: neighbouring pixels nearly equal, a post-ReLU map: a large mean). Two facts from the
post-training quantization literature, used here with the calibration data:

* Bias correction (Nagel et al. 2019, "Data-Free Quantization", §4.2): the mean of the error,
  e . E[x], is a constant per output channel; subtracting it from the bias (which the KPU's batch
  norm adds at 32-bit precision) removes it.
* Sequential rounding with error feedback (Frantar et al. 2022, "GPTQ", after Optimal Brain
  Quantization): round the taps one at a time and move each rounding error onto the taps not yet
  rounded, in the direction that minimizes e^T S e, S the covariance of the input patches. This
  needs S^-1 through its Cholesky factor U (S^-1 = U^T U): after rounding tap i, the remaining taps
  move by -(w_i - q_i) / U_ii * U_i,i+1: (the closed-form least-squares update).

What each step gains, per layer and end to end on kpu_sim: docs/measurements.md §1.

The statistics come from the calibration pass (`InputMoments`, one float interpreter run for ranges
and moments): per KPU layer (and per uint8 conv on the CPU of a stride-1 "same" window,
kcc.quant.cpu_conv), the mean of its input patches, and the covariance within each block of
taps that output channels read together (`tap_blocks`: the whole patch of a dense conv, one
channel's 3x3 of a depthwise one or of a depthwise stacked as a block-diagonal dense layer) over a
deterministic subsample of positions. A block wider than GRAM_MAX_TAPS, or beyond
GRAM_BUDGET_BYTES, gets bias correction only. Weights that are zero stay zero (a decomposed conv's
absent taps): each row moves errors only within its own nonzero taps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kcc.ir import kpu_ops as KO
from kcc.ir.code_moves import shift_copy
from kcc.ir.graph import Graph
from kcc.passes.kernel_cost import uint8_conv
from kcc.quant.params import QuantParam
from kcc.target.quant_rules import on_own_grid

#: the widest tap block (input channels x k x k of a dense conv) whose covariance is collected:
#: 3x3 convs of up to 128 channels, 1x1 convs of up to 1152 (an S of 1152^2 doubles is 10.6 MB)
GRAM_MAX_TAPS = 1152
#: all covariances of one model together; later layers beyond it get bias correction only
GRAM_BUDGET_BYTES = 256 << 20
#: positions of one sample that enter the covariances: SAMPLE_POSITIONS_PER_TAP per tap of the
#: widest block (every sample weighs the same; two samples pass POSITIONS_PER_TAP), within ~2^26
#: multiply-adds per layer and sample (its cost and benefit: docs/measurements.md §1).
SAMPLE_POSITIONS_PER_TAP = 8
POSITION_BUDGET = 1 << 26
MIN_POSITIONS = 64
#: positions per tap (of a row's nonzero taps) a covariance needs: from fewer (a 4x4 map of 64
#: channels in three samples) the rounding fits the samples' noise (docs/measurements.md §1)
POSITIONS_PER_TAP = 16
#: added to the covariance's diagonal, relative to its mean (GPTQ's dampening, there 0.01). 0.01
#: rounds each layer best on its own, but end to end 1.0 did as well or better (docs/measurements.md
#: §1): a weight error spread over many taps also multiplies the 8-bit input's own rounding noise,
#: which the covariance of the float input does not see.
DAMPING = 1.0


def tap_blocks(w: np.ndarray, depthwise: bool) -> list[np.ndarray]:
    """The independent blocks of a layer's input taps (indices into C*k*k, channel-major as
    [C, k, k]): taps that some output channel reads together are in one block. A dense conv is one
    block; a depthwise layer, or a decomposed depthwise stacked as a block-diagonal dense layer
    (kcc.passes.decompose_kernels), one per channel: only those blocks' covariances are needed."""
    oc = w.shape[0]
    kk = w.shape[2] * w.shape[3]
    if depthwise:
        return [np.arange(o * kk, (o + 1) * kk) for o in range(oc)]
    support = w.reshape(oc, -1) != 0
    label = np.full(support.shape[1], -1)  # union of overlapping row supports, row by row
    for r in range(oc):
        taps = np.flatnonzero(support[r])
        if len(taps) == 0:
            continue
        hit = np.unique(label[taps][label[taps] >= 0])
        new = int(hit.min()) if len(hit) else r
        label[np.isin(label, hit)] = new
        label[taps] = new
    return [np.flatnonzero(label == b) for b in np.unique(label[label >= 0])]


@dataclass
class PatchMoments:
    """Sums over the input patches of one KPU layer (taps flattened channel-major, C*k*k): the count
    and sum of all positions (for the mean), and over a subsample of them the sum and sum of outer
    products within each tap block (`tap_blocks`) that is no wider than GRAM_MAX_TAPS."""

    kernel: int
    blocks: list[np.ndarray]  # tap indices of the blocks whose covariance is collected
    #: (row, column) of the one position of every 2x2 block whose output is used (`used_phase`), or None: all
    phase: tuple[int, int] | None = None
    count: int = 0  # positions seen
    total: np.ndarray | None = None  # their sum, [C*k*k]
    picked: int = 0  # positions in the covariances (a subsample)
    picked_total: np.ndarray | None = None
    outer: list[np.ndarray] | None = None  # per block

    def add(self, x: np.ndarray) -> None:
        k = self.kernel
        n, c, h, w = x.shape
        p = k // 2
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        win = sliding_window_view(xp, (k, k), axis=(2, 3))  # [n, c, h, w, k, k], a view
        if self.phase is not None:  # only the positions whose outputs are used
            win = win[:, :, self.phase[0]::2, self.phase[1]::2]
            h, w = win.shape[2:4]
            self.total = _plus(self.total, win.sum(axis=(0, 2, 3), dtype=np.float64).reshape(-1))
        else:
            self.total = _plus(self.total, _tap_sums(x, k).reshape(-1))  # channel-major taps
        positions = n * h * w
        self.count += positions
        if not self.blocks:
            return
        widest = max(len(b) for b in self.blocks)
        keep = max(MIN_POSITIONS, min(SAMPLE_POSITIONS_PER_TAP * widest,
                                      POSITION_BUDGET // sum(len(b) ** 2 for b in self.blocks)))
        if positions > keep:
            # a fixed stream of choices: the same samples give the same moments, so the same kmodel
            pick = np.sort(np.random.default_rng(self.picked).choice(positions, keep, replace=False))
        else:
            pick = np.arange(positions)
        ni, hi, wi = np.unravel_index(pick, (n, h, w))
        flat = win[ni, :, hi, wi].reshape(len(pick), c * k * k).astype(np.float64)  # only the picked patches
        self.picked += len(flat)
        self.picked_total = _plus(self.picked_total, flat.sum(axis=0))
        outer = []
        for size, members in _by_size(self.blocks).items():  # equal blocks in one batched product
            idx = np.stack([self.blocks[i] for i in members])  # [nb, t]
            sub = flat[:, idx].transpose(1, 0, 2)  # [nb, m, t]
            outer.extend(zip(members, np.matmul(sub.transpose(0, 2, 1), sub)))
        outer = [o for _, o in sorted(outer, key=lambda io: io[0])]
        self.outer = outer if self.outer is None else [a + o for a, o in zip(self.outer, outer)]

    def mean(self) -> np.ndarray:
        return self.total / self.count

    def covariance(self, block: int) -> np.ndarray | None:
        """The covariance of one block's taps over the subsampled patches (`picked` of them)."""
        if self.outer is None:
            return None
        mu = self.picked_total[self.blocks[block]] / self.picked
        return self.outer[block] / self.picked - mu[:, None] * mu[None, :]


def _tap_sums(x: np.ndarray, k: int) -> np.ndarray:
    """[C, k*k]: the sum of each tap of the zero-padded ("same") k x k patches over every position,
    from the map's total less the rows / columns a tap's window misses (no patch matrix)."""
    n, c, h, w = x.shape
    p = k // 2
    plane = x.sum(axis=0, dtype=np.float64)  # [c, h, w]
    rows, cols = plane.sum(axis=2), plane.sum(axis=1)  # [c, h], [c, w]
    total = rows.sum(axis=1)

    def missed(i: int, size: int) -> np.ndarray:  # the rows (cols) tap offset i never reads
        return np.arange(size - (p - i), size) if i < p else np.arange(0, i - p)

    out = np.empty((c, k, k))
    for i in range(k):
        mr = missed(i, h)
        for j in range(k):
            mc = missed(j, w)
            out[:, i, j] = (total - rows[:, mr].sum(axis=1) - cols[:, mc].sum(axis=1)
                            + plane[:, mr][:, :, mc].sum(axis=(1, 2)))
    return out.reshape(c, k * k)


def _by_size(blocks: list[np.ndarray]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, b in enumerate(blocks):
        out.setdefault(len(b), []).append(i)
    return out


def _plus(acc: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    return x if acc is None else acc + x


#: pool -> the column of each 2x2 block it keeps (row 0: both keep the top row)
_PICK_COLUMN = {"left_top_2_s2": 0, "right_top_2_s2": 1}


def used_phase(n, users: dict, outputs: set) -> tuple[int, int] | None:
    """(row, column) in each 2x2 block of KPU layer n's output of the one position whose value is
    used, when n's only reader is a pick layer (kcc.passes.row_pick: a copy shifted by (cy, cx),
    then a 2x2 pick, reads n's output at (2i + cy, 2j + cx + column)); else None. The rounding then
    minimizes the error of the outputs the model uses, not of the three quarters it drops."""
    us = users.get(n, ())
    if len(us) != 1 or id(n) in outputs:
        return None
    shift = shift_copy(us[0])
    column = _PICK_COLUMN.get(us[0].op.pool) if shift is not None else None
    if column is None or shift[0] not in (0, 1) or shift[1] + column not in (0, 1):
        return None
    return shift[0], shift[1] + column


class InputMoments:
    """Collects `PatchMoments` for every KPU layer of a float graph whose weights will be re-rounded,
    during calibration: layers reading the same tensor with the same kernel and tap blocks share
    one; `observe(name, value)` takes the values of the calibration points (each layer's input is
    one, kcc.quant.quantize)."""

    def __init__(self, g: Graph):
        self._by_input: dict[str, list[PatchMoments]] = {}
        self.layers: dict[str, PatchMoments] = {}
        shared: dict[tuple, PatchMoments] = {}
        budget = GRAM_BUDGET_BYTES
        users, outputs = g.users(), {id(o) for o in g.outputs}
        for n in g.nodes:
            if isinstance(n.op, KO.FloatKpuConv):
                kernel, depthwise, phase = n.op.kernel, n.op.depthwise, used_phase(n, users, outputs)
            elif same_window(n):  # a uint8 conv on the CPU (kcc.quant.cpu_conv) rounds its weights too
                kernel, depthwise, phase = n.inputs[1].shape[2], n.op.groups != 1, None
            else:
                continue
            w = n.inputs[1].data
            if on_own_grid(w) or isinstance(n.inputs[0].op, (KO.KpuStack, KO.KpuChannelPatch)):
                continue  # weights on their own grid keep their codes (kcc.quant.weight_grid), as do
                # a multi-grid stack's (kcc.quant.kpu_params.stacked_weights)
            x = n.inputs[0]
            blocks = [b for b in tap_blocks(w, depthwise) if len(b) <= GRAM_MAX_TAPS]
            key = (x.name, kernel, tuple(tuple(b) for b in blocks), phase)
            if key not in shared:
                size = 8 * sum(len(b) ** 2 for b in blocks)
                shared[key] = PatchMoments(kernel, blocks if size <= budget else [], phase)
                budget -= size if size <= budget else 0
                self._by_input.setdefault(x.name, []).append(shared[key])
            self.layers[n.name] = shared[key]

    def observe(self, name: str, value: np.ndarray) -> None:
        for m in self._by_input.get(name, ()):
            m.add(value)


def same_window(n) -> bool:
    """n is a uint8 CPU conv (kcc.passes.kernel_cost.uint8_conv) whose patches PatchMoments collects:
    square kernel, stride 1, dilation 1, padding k // 2 on every side, output the input's size."""
    if not uint8_conv(n):
        return False
    k = n.inputs[1].shape[2]
    return (n.inputs[1].shape[3] == k and n.op.stride == (1, 1) and n.op.dilation == (1, 1)
            and n.op.padding == ((k // 2, k // 2), (k // 2, k // 2)) and k % 2 == 1)


def round_weights(w: np.ndarray, grid: QuantParam, moments: PatchMoments | None,
                  depthwise: bool = False, first_channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 codes of the weights w [OC, C or 1, k, k] on `grid`, and each output channel's mean
    output error in w's units (to subtract from its bias). Without moments: `grid.quantize`
    (nearest), no correction; rows whose taps no covariance supports: nearest, with the correction.
    `first_channel`: w's first row is that output channel of the layer the moments are of (a
    channel run of a uint8 CPU conv, kcc.quant.cpu_conv)."""
    oc = w.shape[0]
    codes = grid.quantize(w)
    if moments is None:
        return codes, np.zeros(oc)
    rows = w.reshape(oc, -1).astype(np.float64)
    width = rows.shape[1]
    # each row's taps as indices into the layer's C*k*k (a depthwise row o reads channel o)
    first = (first_channel + np.arange(oc))[:, None] * width if depthwise else np.zeros((oc, 1), np.int64)
    if moments.outer is not None:
        v = rows * float(grid.scale) + grid.zero_point  # in codes
        q = _sequential(v, rows != 0, first, moments, codes.reshape(oc, -1).astype(np.float64))
        codes = q.astype(np.uint8).reshape(w.shape)
    err = grid.dequantize(codes).astype(np.float64).reshape(oc, -1) - rows
    mu = moments.mean()[first + np.arange(width)[None, :]]
    return codes, (err * mu).sum(axis=1)


def _sequential(v: np.ndarray, support: np.ndarray, first: np.ndarray, moments: PatchMoments,
                nearest: np.ndarray) -> np.ndarray:
    """GPTQ's rounding of every row of v (codes, [OC, width]; row r's tap j is the layer's tap
    first[r] + j) under the covariance of its block: each row feeds its errors only into its own
    nonzero taps (`support`). Rows reading the same taps are rounded together with one factor;
    single rows of equal width are batched, each with its own. A row keeps its `nearest` codes if
    no collected block holds its taps, or if it reads more than picked / POSITIONS_PER_TAP varying
    inputs (a covariance from fewer positions fits the samples' noise)."""
    q = nearest.copy()
    block_of = np.full(moments.total.shape[0], -1)
    for i, b in enumerate(moments.blocks):
        block_of[b] = i
    groups: dict[tuple[int, bytes], list[int]] = {}
    for r in range(len(v)):
        blocks = np.unique(block_of[first[r, 0] + np.flatnonzero(support[r])])
        if len(blocks) == 1 and blocks[0] >= 0:
            groups.setdefault((int(blocks[0]), np.packbits(support[r]).tobytes()), []).append(r)
    singles: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for (b, _), members in groups.items():
        local = np.flatnonzero(support[members[0]])
        pos = np.searchsorted(moments.blocks[b], first[members[0], 0] + local)
        s = moments.covariance(b)[np.ix_(pos, pos)]
        varying = int((np.diagonal(s) > 0).sum())  # residual channels (0 in float) do not count
        if varying == 0 or moments.picked < POSITIONS_PER_TAP * varying:
            continue
        if len(members) == 1:
            singles.setdefault(len(local), []).append((members[0], local, s))
        else:
            r = np.array(members)
            q[np.ix_(r, local)] = _feedback_round(v[np.ix_(r, local)], _inverse_cholesky(s))
    for width, items in singles.items():
        step = max(1, (1 << 23) // (width * width))  # bounded memory for a pruned dense layer
        for i in range(0, len(items), step):
            chunk = items[i:i + step]
            r = np.array([c[0] for c in chunk])
            local = np.stack([c[1] for c in chunk])
            u = _inverse_cholesky(np.stack([c[2] for c in chunk]))
            q[r[:, None], local] = _feedback_round(np.take_along_axis(v[r], local, axis=1), u)
    return q


def _inverse_cholesky(s: np.ndarray) -> np.ndarray:
    """Upper U with U^T U = (S + damping)^-1, for one S [d, d] or a batch [r, d, d]."""
    diag = np.clip(np.diagonal(s, axis1=-2, axis2=-1), 0.0, None)
    live = diag > 0
    mean = diag.sum(axis=-1, keepdims=True) / np.maximum(live.sum(axis=-1, keepdims=True), 1)
    # a tap whose input never varies (a residual channel, 0 in float) is decoupled from the rest
    extra = np.where(live, DAMPING * mean, np.where(mean > 0, mean, 1.0))
    h = s + extra[..., None] * np.eye(s.shape[-1])
    return np.swapaxes(np.linalg.cholesky(np.linalg.inv(h)), -1, -2)


def _feedback_round(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Round the columns of v [r, d] in order, each error moved onto the later columns by u."""
    v = v.copy()
    q = np.empty_like(v)
    for i in range(v.shape[1]):
        q[:, i] = np.clip(np.round(v[:, i]), 0, 255)
        ui = u[..., i, :]  # [d] or [r, d]
        err = (v[:, i] - q[:, i]) / ui[..., i]
        v[:, i + 1:] -= err[:, None] * ui[..., i + 1:]
    return q
