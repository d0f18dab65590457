"""kpu_live: how much KPU RAM is alive while each node of a legalized float graph runs.

kcc.emit packs the KPU RAM buffers over the node order (kcc.emit.plan); a pass that keeps a tensor
in KPU RAM for longer than its readers need (kcc.passes.residual_kpu's stacks keep a residual block's
skip there through the whole block) asks this profile first, so that what it adds still fits the
2 MiB at every step instead of failing the allocation. The profile is the one the emitter will see
before such forms, counted the way kcc.quant places tensors:

* a KPU layer's output is in KPU RAM from its step to its last KPU reader, also one reading a batch
  of it in place (a CPU reader reads a copy in main memory, made when the layer runs);
* a channel concatenation whose parts are all KPU layers is one buffer the parts write in place
  (kcc.quant.kpu_ram), alive from its first part's step to its last KPU reader; its parts are not
  counted again;
* everything else (CPU ops, graph inputs, views) is not counted: an upload's buffer is small beside
  the maps of the layers around it, and the allocation stays the final check.

Before legalization, kcc.passes.channel_split sizes a depthwise layer's channel groups for what stays
beside each one (`chain`, `group_input_bytes`).
"""

from __future__ import annotations

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.kmodel import kpu_bytes
from kcc.passes import gap_pick, row_pick


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
            # a map whose spare channels the CPU writes over lives until the patched map's reader
            readers += [r for u in users[n] if isinstance(u.op, KO.KpuChannelPatch) for r in users[u] if _is_kpu(r)]
            # a batched fan's batches, read in place as channel ranges of it reshaped (kcc.quant.kpu_ram.batch_part)
            readers += [r for u in users[n] if isinstance(u.op, O.Reshape) for v in users[u]
                        if isinstance(v.op, O.StridedSlice) for r in users[v] if _is_kpu(r)]
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


def chain(users: dict[Node, list[Node]], n: Node) -> tuple[int, bool]:
    """KPU RAM alive beside each group of depthwise n's input when n is cut (0 if none), and whether
    n is the middle of a residual block. When n's producer p is a plain conv read by n alone, p is cut
    into n's groups too (kcc.passes.channel_split), each p group made just before its n group. While
    group i runs, p's input stays in KPU RAM for the p groups still to come, and n's output, one
    buffer its groups write in place (kcc.quant.kpu_ram), is alive whole: MobileNetV2 1.0 at 320x320,
    whose expansion to 96 channels at 160x160 needs 2.8 MiB, fits in 5 groups of 20 channels beside
    its 0.47 MiB input and 0.94 MiB output, not in the 2 groups that fit alone. A residual block's
    input, also read by an add, is its skip: kcc.passes.residual_kpu keeps it in KPU RAM beside the
    projection, [skip; projection], through the block (MobileNetV2 1.0 at 320x320: its first residual
    add on the KPU instead of ~60 ms of copy-outs, float add and upload)."""
    p = n.inputs[0]
    depthwise = isinstance(n.op, O.Conv2D) and n.op.groups == n.shape[1] == n.inputs[0].shape[1] > 1
    if not (depthwise and isinstance(p.op, O.Conv2D) and p.op.groups == 1 and users[p] == [n]):
        return 0, False
    x = p.inputs[0]
    skip = any(isinstance(u.op, O.Binary) and u.op.op == "add" for u in users[x])
    return kpu_bytes(x.shape) * (2 if skip else 1) + kpu_bytes(n.shape), skip


def group_input_bytes(channels: int, *forms: Node) -> int:
    """KPU RAM a group of `channels` of a depthwise layer holds while it runs, besides `chain`:
    its input, and when a pick pair or a gap pick may serve it (kcc.passes.row_pick, gap_pick, in
    any of the layer's `forms`: turned by 180° or not, decided after the cut) the full-resolution
    output too."""
    x = forms[0].inputs[0]
    own = kpu_bytes((x.shape[0], channels, *x.shape[2:]))
    pair = any(row_pick.pick_pool(x.shape, n.shape, n.op.padding, n.inputs[1].shape[2], n.op.stride, True)
               is not None or gap_pick.plan(x.shape, n.shape, n.op.padding, n.inputs[1].shape[2], n.op.stride, True)
               is not None for n in forms)
    return 2 * own if pair else own


__all__ = ["KpuLive", "chain", "group_input_bytes"]
