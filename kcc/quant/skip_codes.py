"""A float map that a feature pyramid reads again much later is kept as its 8-bit codes meanwhile.

BlazePalm's FPN (any FPN or U-Net skip) adds a backbone map to the upsampled coarser features at the
end: the 24x24x128 PReLU output of its last 24x24 block stays alive through every 12x12 and 6x6
layer, 295 KB of float working memory. That map is a concatenation of codes dequantized (one PReLU
channel's table, kcc.passes.prelu_tables, or KPU layers copied out): the late reader takes the same
concatenation again, dequantized from the codes right before it, and the float map dies after its
early readers. The same float32 values (a dequantize is a function of the code), a quarter of the
bytes alive, ~12 CPU cycles an element and a node a part more.

A read is late where the network goes down to coarser maps between the map and its reader (some
node in between has fewer pixels than the map): the reader belongs to a later scale. A reader right
after the map (the next block's add) takes the float map, and so do views (channel slices for KPU
layers, placed where their readers need them): they compute nothing.
"""

from __future__ import annotations

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.quant.domains import LAYOUT_OPS, Domain, NodeQuant

ON_CODES = (Domain.KPU, Domain.CODES, Domain.CPU_UINT8)


def _codes_parts(n: Node, table: dict[Node, NodeQuant]) -> tuple[Node, ...] | None:
    """The parts of float n when n is a channel concatenation of codes on grids of their own."""
    if not isinstance(n.op, O.Concat) or n.op.axis != 1 or n.type.rank != 4 or n.shape[0] != 1:
        return None
    if all(table[p].domain in ON_CODES and table[p].grid is not None for p in n.inputs):
        return n.inputs
    return None


def late_reads(g: Graph, table: dict[Node, NodeQuant]) -> dict[tuple[int, int], tuple[Node, ...]]:
    """(id of reader, id of map) -> the parts whose codes the reader dequantizes again (module
    docstring), for every late read of such a float map by a float CPU op."""
    users = g.users()
    pos = {id(n): k for k, n in enumerate(g.nodes)}
    pixels = [n.shape[2] * n.shape[3] if n.type.rank == 4 and not n.is_constant else None for n in g.nodes]
    late: dict[tuple[int, int], tuple[Node, ...]] = {}
    for n in g.nodes:
        if table[n].domain is not Domain.FLOAT:
            continue
        parts = _codes_parts(n, table)
        if parts is None:
            continue
        plane = n.shape[2] * n.shape[3]
        for r in users[n]:
            if table[r].domain is not Domain.FLOAT or isinstance(r.op, (*LAYOUT_OPS, O.Concat)):
                continue  # a view's readers come right after it or are late readers of their own
            between = pixels[pos[id(n)] + 1:pos[id(r)]]
            if any(p is not None and p < plane for p in between):
                late[(id(r), id(n))] = parts
    return late
