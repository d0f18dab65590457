"""table_stream: a BlazeBlock's residual add on the KPU, its sum read by the PReLU's tables as codes
(issue #16 item 3; docs/measurements.md §28, §30).

After kcc.passes.prelu_tables, a BlazeBlock whose PReLU runs as tables (one kcc.passes.prelu_stream
does not keep in KPU RAM: BlazePalm's 24x24 blocks before STREAM_BLOCK_BYTES took them, §31) still
adds on the CPU, in float:

    p (its projection, a 1x1 KPU layer) -> copy-out -> dequantize -> a = p + y -> quantize a channel
    at a time -> the tables of PReLU(a)

with y the previous block's PReLU: its tables' codes, dequantized a channel at a time for the add.
Here the add becomes 1x1 KPU layers over one buffer of KPU RAM (a KpuStack), [I I] over [y; p]:

    a_j = [I I] rows P_j @ [y's channel groups; p]        one layer a run P_j of a's channels

the runs taken in the order of the channels' range widths (`chunks`: at most STREAM_CHUNK channels,
the widest at most STREAM_WIDTHS times the narrowest), so that each layer's one output grid is
nearly each of its channels' own (one grid for all of a costs BlazePalm's outputs 9e-4 of cosine,
16 channels so sorted 6e-5: docs/measurements.md §28). The tables read their channel of a_j's
copied-out codes as they are: no dequantize of p, no float add, no quantize a channel. y's part of
the buffer is its channel groups (the tables' codes concatenated a group at a time on the group's
grid, kcc.quant.policy `share_table_grids`), which the block's decomposed 5x5 uploads anyway, a
group at a time for its copy layers or all at once as the batches of its fan: those uploads write
into the buffer, where the 5x5 reads them too (kcc.quant.quantize `_codes_parts`). Each group keeps
its grid, absorbed by the layers' weights and bias (kcc.quant.kpu_params.stacked_weights: the skip's
weight an exact integer per output channel). The float y then has no reader left, and its
dequantize a channel goes too. A skip that is another float of the CPU (BlazePalm's FPN sum before
its last blocks) is read the same way, in the channel ranges of it that the 5x5 quantizes and
uploads. A skip that is a KPU layer's output read by the add alone (a stride-2 block's pooled,
channel-padded skip) is a part of the buffer as it is.

Taken for an add with no clamp of a 1x1 bypass-pool KPU projection read by the add alone and such a
skip, whose every reader is one channel of it read by a table (prelu_tables took its PReLU), each
part starting on a 64-byte line (kmodel_v4.md §7.3), the layers within the KPU's limits, where
kcc.target.k210's cost model prices the CPU work saved above MIN_CYCLES_PER_BYTE a byte of the [I I]
weights (or the rate CompileContext.room_rate buys, in a model over its device RAM budget).
"""

from __future__ import annotations

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_range
from kcc.kmodel import kpu_channel_offset
from kcc.passes.legalize_kpu import Placement
from kcc.passes.manager import CompileContext
from kcc.passes.prelu_kpu import _layer_cycles, _per_element, _upload
from kcc.passes.prelu_tables import MIN_CYCLES_PER_BYTE, uint8_prelu
from kcc.target.k210 import CPU_NODE_CYCLES, KPU_LAYER_BYTES, cpu_cycles, layer_fits

F32 = np.float32
#: what the placement report says of such an add
TABLE_STREAM_FORM = ("with its skip: 1x1 KPU layers over [skip; projection] in KPU RAM, weights [I I], a layer "
                     "per run of channels of like ranges, copied out to the PReLU's tables as codes "
                     "(kcc.passes.table_stream)")
STREAM_CHUNK = 16  # most channels of the sum a layer: one output grid each (module docstring)
STREAM_WIDTHS = 2.0  # most ratio of range widths in one layer (`chunks`)
SAMPLES = 4  # calibration samples the channels' ranges are sorted by


def _skip_parts(y: Node, users: dict[Node, list[Node]]) -> list[Node] | None:
    """y as parts of a buffer of KPU RAM, or None: a KPU layer's output read by the add alone, or the
    channel groups of y that KPU layers read (a decomposed 5x5's), each starting on a line: of a
    PReLU's tables, concatenations of its tables' codes in order; of another float of the CPU,
    channel ranges of it (quantized on their grids and uploaded for those layers)."""
    _, c, h, w = y.shape
    if isinstance(y.op, KO.FloatKpuConv):
        return [y] if len(users[y]) == 1 else None
    read = (KO.FloatKpuConv, KO.KpuBatchStack)
    groups: dict[int, Node] = {}
    for u in users[y]:  # a float of the CPU: the channel ranges of it KPU layers read (quantized, uploaded)
        r = channel_range(u)
        if r is not None and any(isinstance(v.op, read) for v in users[u]):
            groups.setdefault(r[0], u)
    if not (isinstance(y.op, O.Concat) and y.op.axis == 1 and all(uint8_prelu(t) for t in y.inputs)):
        return _cover(groups, c, h, w)
    starts = {id(t): k for k, t in enumerate(y.inputs)}
    for t in y.inputs:
        for u in users[t]:
            if (u is not y and isinstance(u.op, O.Concat) and u.op.axis == 1 and id(u.inputs[0]) in starts
                    and [starts.get(id(i)) for i in u.inputs] == list(range(starts[id(u.inputs[0])],
                                                                           starts[id(u.inputs[0])] + len(u.inputs)))
                    and any(isinstance(r.op, read) for r in users[u])):
                groups.setdefault(starts[id(u.inputs[0])], u)
    return _cover(groups, c, h, w)


def _cover(groups: dict[int, Node], c: int, h: int, w: int) -> list[Node] | None:
    """The groups (by first channel) that cover channels 0..c-1 in order, each starting on a line."""
    parts, at = [], 0
    while at < c:
        part = groups.get(at)
        if part is None or kpu_channel_offset(w, h, part.shape[1]) is None:
            return None
        parts.append(part)
        at += part.shape[1]
    return parts


def _tables_read(n: Node, users: dict[Node, list[Node]]) -> bool:
    """Every reader of n is one channel of it that a table alone reads (prelu_tables)."""
    def table_channel(u: Node) -> bool:
        r = channel_range(u)
        return r is not None and r[1] - r[0] == 1 and all(uint8_prelu(t) for t in users[u])
    return bool(users[n]) and n.shape[0] == 1 and all(table_channel(u) for u in users[n])


class _Block:
    def __init__(self, n: Node, proj: Node, skip: Node, parts: list[Node]):
        self.n, self.proj, self.skip, self.parts = n, proj, skip, parts


def _block(n: Node, users: dict[Node, list[Node]]) -> _Block | None:
    if not (isinstance(n.op, O.Binary) and n.op.op == "add" and len(n.inputs) == 2 and n.op.act == O.NO_CLAMP
            and n.type.rank == 4 and _tables_read(n, users)):
        return None
    for proj, skip in (n.inputs, n.inputs[::-1]):
        if not (isinstance(proj.op, KO.FloatKpuConv) and proj.op.kernel == 1 and not proj.op.depthwise
                and proj.op.pool == "bypass" and proj.op.fn is None and proj.op.act == O.NO_CLAMP
                and users[proj] == [n] and proj.shape == skip.shape == n.shape):
            continue
        _, c, h, w = n.shape
        parts = _skip_parts(skip, users)
        if parts is not None and kpu_channel_offset(w, h, c) is not None and layer_fits((1, 2 * c, h, w), c, 1):
            return _Block(n, proj, skip, parts)
    return None


def _uploaded(parts: list[Node], users: dict[Node, list[Node]]) -> bool:
    """The block's decomposed 5x5 uploads the skip's codes anyway: each group for the layers reading
    it, or all of them as the batches of its fan (kcc.ir.kpu_ops.KpuBatchStack); the buffer takes
    those uploads (kcc.quant.quantize)."""
    if any(isinstance(u.op, KO.KpuBatchStack) and list(u.inputs) == parts for u in users[parts[0]]):
        return True
    return all(any(isinstance(u.op, KO.FloatKpuConv) for u in users[p]) for p in parts)


def _saved_cycles(b: _Block, layers: list[np.ndarray], users: dict[Node, list[Node]]) -> float:
    """CPU cycles today's add saves less what its `layers` cost (kcc.target.k210's cost model)."""
    n, proj, skip = b.n, b.proj, b.skip
    _, c, h, w = n.shape
    plane = h * w
    today = (cpu_cycles("kpu_download_byte") * proj.type.size + _per_element("dequantize", proj)
             + _per_element("binary", n) + c * (plane * cpu_cycles("quantize") + CPU_NODE_CYCLES))
    if isinstance(skip.op, KO.FloatKpuConv):
        today += cpu_cycles("kpu_download_byte") * skip.type.size + _per_element("dequantize", skip)
    elif users[skip] == [n]:  # the float y is made for this add alone: a dequantize a channel
        today += c * (plane * cpu_cycles("dequantize") + CPU_NODE_CYCLES)
    new = sum(_layer_cycles((1, 2 * c, h, w), len(rows), 1) for rows in layers)
    new += cpu_cycles("kpu_download_byte") * n.type.size
    if not isinstance(skip.op, KO.FloatKpuConv) and not _uploaded(b.parts, users):
        new += _upload(skip) + CPU_NODE_CYCLES
    return today - new


def _stream_bytes(c: int, layers: list[np.ndarray]) -> int:
    """Kmodel bytes of the layers: [I I] weights, batch-norm words, layer headers."""
    return 2 * c * c + 8 * c + len(layers) * KPU_LAYER_BYTES


def _channel_widths(g: Graph, blocks: list[_Block], samples: list | None) -> dict[int, np.ndarray]:
    """Each block's sum: every channel's range width over a few calibration samples (0 included)."""
    want = {id(b.n) for b in blocks}
    lo: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}

    def see(n: Node, v: np.ndarray) -> None:
        if id(n) in want:
            k = id(n)
            lo[k] = np.minimum(lo.get(k, 0.0), v.min(axis=(0, 2, 3)))
            hi[k] = np.maximum(hi.get(k, 0.0), v.max(axis=(0, 2, 3)))

    for sample in (samples or [])[:SAMPLES]:
        run(g, sample, see)
    return {k: hi[k] - lo[k] for k in lo}


def chunks(widths: np.ndarray) -> list[np.ndarray]:
    """The sum's channels in layers: taken in the order of their ranges' widths, a layer holding at
    most STREAM_CHUNK channels, the widest at most STREAM_WIDTHS times the narrowest's width (its
    grid then rounds no channel more than a bit coarser than the channel's own would)."""
    order = np.argsort(widths, kind="stable")
    out: list[list[int]] = []
    for ch in order:
        if out and len(out[-1]) < STREAM_CHUNK and widths[ch] <= STREAM_WIDTHS * max(widths[out[-1][0]], 1e-30):
            out[-1].append(int(ch))
        else:
            out.append([int(ch)])
    return [np.array(rows) for rows in out]


def _rewrite(g: Graph, b: _Block, layers: list[np.ndarray], users: dict[Node, list[Node]]) -> None:
    n, proj = b.n, b.proj
    c = n.shape[1]
    stack = g.insert_before(n, KO.KpuStack(), (*b.parts, proj), n.name + "/stack")
    where: dict[int, tuple[Node, int]] = {}  # channel of a -> (its layer, its channel there)
    for j, rows in enumerate(layers):
        w = np.zeros((len(rows), 2 * c, 1, 1), F32)
        w[np.arange(len(rows)), rows, 0, 0] = 1.0
        w[np.arange(len(rows)), c + rows, 0, 0] = 1.0
        ins = (stack, g.insert_before(n, O.Constant(w), (), f"{n.name}/stream_w{j}"),
               g.insert_before(n, O.Constant(np.zeros(len(rows), F32)), (), f"{n.name}/stream_b{j}"))
        layer = g.insert_before(n, KO.FloatKpuConv(1), ins, f"{n.name}/stream{j}")
        for k, ch in enumerate(rows):
            where[int(ch)] = (layer, k)
    for u in list(users[n]):
        ch = channel_range(u)[0]
        layer, k = where[ch]
        _, _, h, w_ = layer.shape
        view = g.insert_before(u, O.StridedSlice((0, k, 0, 0), (1, k + 1, h, w_), (1, 1, 1, 1)), (layer,),
                               f"{u.name}/stream")
        g.substitute(u, view, "/float")


def table_stream(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """The pipeline stage after prelu_tables (module docstring)."""
    if ctx is None or ctx.options.target == "cpu":
        return g
    users = g.users()
    rate = max(MIN_CYCLES_PER_BYTE, ctx.room_rate or 0.0)
    found = [b for n in g.nodes if (b := _block(n, users)) is not None]
    if not found:
        return g
    widths = _channel_widths(g, found, ctx.samples)
    layers = {id(b.n): chunks(widths[id(b.n)]) if id(b.n) in widths
              else np.array_split(np.arange(b.n.shape[1]), -(-b.n.shape[1] // STREAM_CHUNK)) for b in found}
    blocks = [b for b in found if _saved_cycles(b, layers[id(b.n)], users)
              >= rate * _stream_bytes(b.n.shape[1], layers[id(b.n)])]
    for b in blocks:
        _rewrite(g, b, layers[id(b.n)], users)
    g.remove_dead()
    done = {b.n.name for b in blocks}  # prelu_stream said why it kept them on the CPU
    ctx.placements[:] = [p for p in ctx.placements if not (p.op == "add" and p.node in done)]
    ctx.placements.extend(Placement(b.n.name, "add", True, TABLE_STREAM_FORM) for b in blocks)
    return g
