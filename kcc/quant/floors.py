"""The KPU's mean pools floor (kpu_semantics.md §3 step 5): what that costs a map, and who pays it.

A KPU layer reading a map a mean pool made takes the pool's floor bias into its own bias (kpu_params'
`x_bias`, by `floor_bias`). A layer that `averages_codes` cannot (its codes in are integers, out = in
exactly on one grid), so its bias and that of the mean before it pass on to the reader after it; or
the layer before a chain of such means pays for all of them in advance (`floor_debts`, kpu_params'
`z_bias`), which a CPU reader of the last needs (kcc.passes.kpu_pools' upsampling).
"""

from __future__ import annotations

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import averages_codes
from kcc.ir.graph import Graph, Node
from kcc.quant.domains import LAYOUT_OPS


def own_floor(x: Node) -> float:
    """Mean bias (in steps) a KPU mean pool's floor gives x, its layer (kpu_params), for codes whose
    residues are all alike: floor(s/k) of a sum of k distinct codes is (k-1)/(2k) low; mean_2_s1's
    windows past the last row or column repeat the edge (two distinct codes twice: 1/4; the corner
    one code: 0). A layer's own `floor_bias` says more where its input's structure fixes it."""
    window = {"mean_2_s2": 4, "mean_2_s1": 4, "mean_4_s4": 16}.get(getattr(x.op, "pool", ""), 0)
    if not (isinstance(x.op, KO.FloatKpuConv) and window):
        return 0.0
    if x.op.floor_bias is not None:
        return x.op.floor_bias
    if x.op.pool != "mean_2_s1":
        return (window - 1) / (2 * window)
    h, w = x.shape[2:]
    return ((h - 1) * (w - 1) * 3 / 8 + (h - 1 + w - 1) / 4) / (h * w)


def floor_bias(x: Node, paid: set[int]) -> float:
    """Mean bias (in steps) of a map x read by a KPU layer: its mean pool's floor, and, through a
    layer that `averages_codes` (which cannot take a bias of its input: its codes in are integers,
    out = in exactly), the bias of what it averaged; 0 where a layer before took it (`paid`). A
    concatenation of channel groups has theirs where they all agree."""
    while isinstance(x.op, LAYOUT_OPS):
        x = x.inputs[0]
    if isinstance(x.op, O.Concat) and x.op.axis == 1:  # channel groups: one bias if they agree
        parts = {round(floor_bias(p, paid), 9) for p in x.inputs}
        return parts.pop() if len(parts) == 1 else 0.0
    if id(x) in paid:
        return 0.0
    carried = floor_bias(x.inputs[0], paid) if averages_codes(x) else 0.0
    return own_floor(x) + carried


def floor_debts(g: Graph, users: dict[Node, list[Node]]) -> tuple[dict[int, float], set[int]]:
    """The floors a KPU layer takes in advance, and the layers whose floors are so paid.

    A layer (clamp only) whose codes reach only layers that `averages_codes` (through data movement:
    kcc.passes.kpu_pools' upsampling) can add their floors to its own output before rounding it: one
    rounding of a value with a fraction, where the identity layers' integer codes could not take it and
    a CPU reader of the last would read it low. Taken when every path from it carries one total."""
    moves = LAYOUT_OPS + (O.Concat,)

    def only_from(n: Node, p: Node) -> bool:  # n's values are p's, moved
        return n is p or (isinstance(n.op, moves) and all(only_from(i, p) for i in n.inputs if not i.is_constant))

    debts: dict[int, float] = {}
    paid: set[int] = set()
    for p in g.nodes:
        if not (isinstance(p.op, KO.FloatKpuConv) and p.op.fn is None and not averages_codes(p)):
            continue
        totals, chain, ok = set(), [], True
        stack = [(u, 0.0) for u in users[p]]
        while stack and ok:
            u, acc = stack.pop()
            if isinstance(u.op, moves):
                stack.extend((v, acc) for v in users[u])
                ok = bool(users[u]) and only_from(u, p)
            elif averages_codes(u):
                chain.append(u)
                acc += own_floor(u)
                after = [v for v in users[u] if averages_codes(v)]
                if after and len(after) == len(users[u]):
                    stack.extend((v, acc) for v in after)
                else:
                    totals.add(round(acc, 9))
                    ok = not after
            else:
                ok = False
        if ok and len(totals) == 1 and chain:
            debts[id(p)] = totals.pop()
            paid.update(id(u) for u in chain)
    return debts, paid
