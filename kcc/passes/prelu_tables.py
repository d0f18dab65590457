"""prelu_tables: a PReLU left on the CPU in float, channel by channel through 256-byte tables on
8-bit codes (issue #16 item 3: "what must stay on the CPU runs on uint8 codes").

A PReLU with a slope per channel that no KPU form takes (BlazePalm's residual stream after its float
adds, kcc.passes.prelu_stream) costs the CPU a 1x1 depthwise conv2d and a max or min an element in
float (kcc.passes.float_prelu: ~96 cycles). One channel's PReLU is a function of one variable: on
8-bit codes it is one table (kcc.quant.cpu_table). So each channel c becomes

    x_c = channel c of x (a view)  ->  quantize on x_c's own grid  ->  table_lookup1d
        -> codes of PReLU(x_c) on its own grid  ->  dequantize into channel c of the PReLU's map

(quantize, lookup and dequantize ~19 + 10 + 12 cycles an element, kcc.target.k210, and three node
dispatches a channel; the dequantized channels make the map in place, kcc.emit.storage). Where x is
a KPU layer's output its codes are read as they are, without the quantize. A channel slice of the
PReLU that a reader takes (a decomposed depthwise's channel groups, kcc.passes.kernel_forms
`_group_source`) becomes the concatenation of its channels' tables: KPU layers reading it read the
tables' codes, on one grid for the group (kcc.quant.policy `share_table_grids`), not the
dequantized map quantized again; so does a KPU layer reading the whole map alone.

Each channel is rounded on a grid of its own: a residual stream's channels differ in range by orders
of magnitude, and one grid for the map costs BlazePalm's outputs 8e-4 of cosine (its 24x24 blocks;
docs/measurements.md §27), a grid a channel nothing on the kit's samples (4e-4 on held-out pictures,
whose values a channel's range from 3 calibration pictures holds less well than a group's).

Taken where kcc.target.k210's cost model prices the channels' nodes below the float form by at least
MIN_CYCLES_PER_BYTE a byte of the tables (256 bytes of kmodel a channel), or the rate
decompose_kernels' room buys where a model is over its device RAM budget (CompileContext.room_rate):
BlazePalm's 24x24 blocks (~100 cycles a byte), not its 12x12 ones (~8) nor its 6x6 ones, where
dispatch costs more than the float form.
The runtime has table_lookup1d since nncase v0.2.0-beta3 (`kcc info` says when a kmodel needs it;
ncc of beta4 writes it too, for its own fused unary ops).

Not taken: a PReLU the model outputs (its float values would be rounded), one that a decomposed conv
reads with its rounding residual (kcc.ir.kpu_ops.QuantResidual: that reader takes more than 8 bits
of it), slopes that are not constant per channel, a map of several batches (a channel is then no
view).
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_range, channel_values
from kcc.passes.float_prelu import float_prelu_cycles
from kcc.passes.manager import CompileContext
from kcc.target.k210 import CPU_NODE_CYCLES, cpu_cycles

TABLE_BYTES = 256  # one table_lookup1d table: a code for each of the 256 input codes
#: the least CPU cycles a table's kmodel byte must save: device RAM is what a K210 lacks first, and a
#: model over its budget buys faster forms of its convs with it at 60 to 270 cycles a byte
#: (BlazePalm's retries, CompileContext.room_rate, which is the rate where it is known)
MIN_CYCLES_PER_BYTE = 32.0


def uint8_prelu(n: Node) -> bool:
    """n is a PReLU of one channel sliced off a batch-1 map, with a constant slope, as this pass makes
    it: one table does it (kcc.quant.cpu_table)."""
    return (isinstance(n.op, O.PRelu) and n.type.rank == 4 and n.shape[:2] == (1, 1)
            and channel_range(n.inputs[0]) is not None and channel_values(n.inputs[0], n.inputs[1]) is not None)


def table_prelu_cycles(x: Node) -> float:
    """CPU cycles of the per-channel form of a PReLU of x (module docstring)."""
    c, plane = x.shape[1], x.shape[2] * x.shape[3]
    quantize = 0.0 if isinstance(x.op, KO.FloatKpuConv) else cpu_cycles("quantize")
    per_element = quantize + cpu_cycles("table_lookup") + cpu_cycles("dequantize")
    nodes = 3 if quantize else 2
    return c * (plane * per_element + nodes * CPU_NODE_CYCLES)


def _read_with_residual(n: Node, users: dict[Node, list[Node]]) -> bool:
    """A QuantResidual reads n, or a view or concatenation of it (through data movement)."""
    stack, seen = [n], set()
    while stack:
        m = stack.pop()
        for u in users[m]:
            if isinstance(u.op, KO.QuantResidual):
                return True
            if isinstance(u.op, (*O.LAYOUT_OPS, O.Concat)) and id(u) not in seen:
                seen.add(id(u))
                stack.append(u)
    return False


def _taken_slopes(g: Graph, n: Node, users: dict[Node, list[Node]], room_rate: float | None) -> np.ndarray | None:
    """n's slopes, a value a channel, where n runs as tables (module docstring), else None."""
    if not isinstance(n.op, O.PRelu) or n in g.outputs or _read_with_residual(n, users):
        return None
    x, alpha = n.inputs
    if x.type.rank != 4 or x.shape[0] != 1 or x.shape[1] < 2:
        return None
    slopes = channel_values(x, alpha)
    if slopes is None:
        return None
    saved = float_prelu_cycles(x, slopes) - table_prelu_cycles(x)
    rate = max(MIN_CYCLES_PER_BYTE, room_rate or 0.0)
    return slopes if saved >= rate * TABLE_BYTES * x.shape[1] else None


def prelu_tables(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """The pipeline stage after legalize_kpu (module docstring); a pre-quantized model keeps its own
    PReLU, as its grids say."""
    if ctx is None or ctx.own_grids or ctx.quantization is not None or ctx.options.target == "cpu":
        return g
    users = g.users()
    taken = [(n, slopes) for n in g.nodes if (slopes := _taken_slopes(g, n, users, ctx.room_rate)) is not None]
    for n, slopes in taken:
        x = n.inputs[0]
        _, c, h, w = x.shape
        parts = []
        for k in range(c):
            xc = g.insert_before(n, O.StridedSlice((0, k, 0, 0), (1, k + 1, h, w), (1, 1, 1, 1)), (x,),
                                 f"{n.name}/channel{k}")
            a = g.insert_before(n, O.Constant(slopes[k:k + 1].reshape(1, 1, 1, 1)), (), f"{n.name}/alpha{k}")
            parts.append(g.insert_before(n, O.PRelu(), (xc, a), f"{n.name}/table{k}"))
        y = g.insert_before(n, O.Concat(1), tuple(parts), n.name + "/channels")
        for view in [u for u in users[n] if channel_range(u) is not None]:
            c0, c1 = channel_range(view)
            if c1 - c0 == 1:  # the table itself, under its own name
                g.replace_all_uses(view, parts[c0])
            else:
                group = g.insert_before(view, O.Concat(1), tuple(parts[c0:c1]), f"{n.name}/codes{c0}")
                g.substitute(view, group, "/float")
        g.substitute(n, y, "/float")
    g.remove_dead()
    return g
