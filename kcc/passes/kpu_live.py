"""kpu_live: how much KPU RAM is alive while each node of a legalized float graph runs.

kcc.emit packs the KPU RAM buffers over the node order (kcc.emit.plan); a pass that keeps a tensor
in KPU RAM for longer than its readers need (kcc.passes.residual_kpu's stacks keep a residual block's
skip there through the whole block) asks this profile first, so that what it adds still fits the
2 MiB at every step instead of failing the allocation. The profile is the one the emitter will see
before such forms, counted the way kcc.quant places tensors:

* a KPU layer's output is in KPU RAM from its step to its last KPU reader (a CPU reader reads a
  copy in main memory, made when the layer runs);
* a channel concatenation whose parts are all KPU layers is one buffer the parts write in place
  (kcc.quant.kpu_ram), alive from its first part's step to its last KPU reader; its parts are not
  counted again;
* everything else (CPU ops, graph inputs, views) is not counted: an upload's buffer is small beside
  the maps of the layers around it, and the allocation stays the final check.
"""

from __future__ import annotations

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.kmodel import kpu_bytes


def _is_kpu(v: Node) -> bool:
    return isinstance(v.op, KO.FloatKpuConv)


class KpuLive:
    """Bytes of KPU RAM alive at each step of g's node order (module docstring)."""

    def __init__(self, g: Graph):
        self.step = {id(n): i for i, n in enumerate(g.nodes)}
        users = g.users()
        self.owner: dict[int, Node] = {}  # a KPU layer or an in-place concatenation -> its buffer
        for n in g.nodes:
            if _is_kpu(n):
                self.owner.setdefault(id(n), n)
            elif isinstance(n.op, O.Concat) and n.op.axis == 1 and n.inputs and all(_is_kpu(i) for i in n.inputs):
                for i in (n, *n.inputs):
                    self.owner[id(i)] = n
        self.live = [0] * len(g.nodes)
        self.span: dict[int, tuple[int, int, int]] = {}  # buffer -> (first step, last step, bytes)
        for n in g.nodes:
            if self.owner.get(id(n)) is not n:
                continue
            parts = n.inputs if isinstance(n.op, O.Concat) else (n,)
            born = min(self.step[id(p)] for p in parts)
            readers = [u for u in users[n] if _is_kpu(u)] + [u for p in parts for u in users[p] if _is_kpu(u)]
            dies = max([self.step[id(u)] for u in readers], default=born)
            self.span[id(n)] = (born, dies, kpu_bytes(n.shape))
            for s in range(born, dies + 1):
                self.live[s] += kpu_bytes(n.shape)

    def peak_over(self, n: Node) -> int:
        """The most KPU RAM alive at one step while n's buffer is (0 if n has none)."""
        if id(n) not in self.span:
            return 0
        lo, hi, _ = self.span[id(n)]
        return max(self.live[lo:hi + 1])

    def peak_keeping(self, kept: tuple[Node, ...], first: Node, last: Node, size: int) -> int:
        """The most KPU RAM alive at one step from `first`'s step to `last`'s when the KPU layers
        `kept` live instead in one buffer of `size` bytes alive over that whole span."""
        a, b = self.step[id(first)], self.step[id(last)]
        own = [self.span[id(v)] for v in kept if self.owner.get(id(v)) is v]
        return max((self.live[s] - sum(n for lo, hi, n in own if lo <= s <= hi) + size for s in range(a, b + 1)),
                   default=size)


__all__ = ["KpuLive"]
