"""phase_dilated: dilated convolutions computed in phase space over whole regions (issue #16).

The phase split of factor F cuts a map into its F*F phases  P_F(x)[i, j] = x[:, :, i::F, j::F].
Every op that is pointwise in space commutes with it (1x1 convs, unary ops, activations, binary ops
of two maps or of a map and a spatially constant operand, channel concatenation, softmax over
channels), and so does a resize of a 1x1 map (a broadcast: each phase gets the value at its own
size). A stride-1 conv of dilation d whose output is as large as its input, with its leading padding
a multiple of d (TFLite's SAME on a 3x3 kernel: pad d), is on each phase of factor F | d a conv of
dilation d/F and padding pad/F:

    y[F*Y + i] = sum_k w[k] x[F*Y + i + d*k - p] = sum_k w[k] P_F(x)[i][Y + (d/F)*k - p/F]

and the zero padding falls exactly outside the phase (full index F*Y' + i is in [0, H) iff Y' is in
[0, len(range(i, H, F))), the phase's size: ceil or floor of H/F). With F = d the phase conv is an
ordinary one (dilation 1) that the KPU runs as it is; a phase of factor F is cut into the phases of
factor F*m by the same rule (P_F(x)[i][a::m] = x[i + F*a :: F*m]), so a dilation-4 conv inside a
dilation-2 region is reached by cutting each phase once more.

So instead of today's space-to-batch around every dilated conv (eliminate_dilated_conv: pad,
transpose and reshape in, transpose and crop out, all on the CPU, per conv), a whole region of
such ops runs in phase space, split ONCE where the region starts (a strided slice per phase) and
merged ONCE where it ends (pad the smaller phases, concatenate along channels, which in memory is
the batch of phases, reshape / transpose / reshape into the interleaved map, crop). Phases of one
size are the batches of one tensor (`classes`: at most 4 sizes, ceil and floor of H/F and W/F; 1
when F divides both), so each op runs once per size: one KPU layer, and one copy of its weights in
the kmodel, per size (a kpu_conv2d body holds its own weights, kmodel_v4.md §9.6). A global mean
over the full map is the pixel-weighted sum of the phase means (exact), so it reads the phases
directly; a broadcast (a resize of a 1x1 map) is made per size from one resized row.

After the last dilated conv, a pointwise tail may instead run once on a packed map (`_Plan.find_tail`):
all phases' pixels in one tensor of the map's shape, a pixel permutation, which pointwise ops
commute with (and a global mean ignores); taken where the cost model prices it below the per-size
layers.

Factors: a dilated conv of dilation d runs at factor d (its input refined to d where it is coarser,
which needs the input's factor to divide d); a pointwise op at the largest of its inputs' factors
when the others divide it (else on full maps), at a higher one (the gcd of what its readers run at)
where that moves a refinement to smaller inputs (`_raise`), and on full maps where its readers all
want full maps and its inputs are smaller (`_trim`: the merge moves to them). Every region (connected ops at factors > 1) is priced with kcc.target.k210's cost
model against today's space-to-batch form of its dilated convs (`_phase_cost`, `s2b_cycles`) and
kept only where it is cheaper; what stays (a region not worth it, a conv whose input factor does
not divide its dilation) is left to eliminate_dilated_conv.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.passes.phase_space import (
    classes,
    crossing_cycles,
    dilation_of,
    is_broadcast,
    is_global_mean,
    is_pointwise,
    merge_cycles,
    pack_blocks,
    phase_index,
    s2b_cycles,
    spatial_size,
    split_inputs,
)
from kcc.target.k210 import CPU_NODE_CYCLES, DEFAULT_MHZ, KPU_LAYER_US, KPU_WEIGHT_CYCLES_PER_BYTE, cpu_cycles

if TYPE_CHECKING:
    from kcc.passes.manager import CompileContext

#: factor of a broadcast (a resize of a 1x1 map): any factor its readers want, at no extra cost
FREE = 0


class _Plan:
    """The factor of every node (1: full map, FREE: a broadcast no one needs in phases yet)."""

    def __init__(self, g: Graph):
        self.g = g
        self.users = g.users()
        self.outputs = {id(o) for o in g.outputs}
        self.f: dict[int, int] = {}
        for n in g.nodes:
            self.f[id(n)] = self._forward(n)
        for n in reversed(g.nodes):
            self._raise(n)
        for n in reversed(g.nodes):
            self._trim(n)

    def factor(self, n: Node) -> int:
        return self.f.get(id(n), 1)

    def find_tail(self) -> None:
        """The region's tail: pointwise nodes from which no path inside the region reaches a dilated
        conv. They run ONCE on a packed map (every phase's pixels, class after class, in one tensor
        of the map's own shape: a pixel permutation, which pointwise ops commute with), so their
        weights are not copied per phase size. Only where there are several sizes, and only where
        kcc.target.k210's cost model prices the packing (transposes of the batched classes, copies)
        below the per-size layers it saves (`_tail_pays`): board time comes first (issue #16), the
        weight copies of the per-size form are the price (the compile summary's kmodel size)."""
        self.tail: set[int] = set()
        ahead: dict[int, bool] = {}  # a dilated conv in the region downstream
        for n in reversed(self.g.nodes):
            f = self.factor(n)
            inside = [u for u in self.users[n] if self.factor(u) > 1]
            ahead[id(n)] = any(dilation_of(u) is not None or ahead[id(u)] for u in inside)
            if (f > 1 and dilation_of(n) is None and is_pointwise(n) and not ahead[id(n)]
                    and len(classes(*n.shape[2:], f)) > 1):
                self.tail.add(id(n))
        for n in self.g.nodes:  # packing n's inputs would copy more than packing n: n stays per class
            if id(n) in self.tail:
                other = [i for i in split_inputs(n) if id(i) not in self.tail and not is_broadcast(i)]
                if sum(i.type.size for i in other) > n.type.size:
                    self.tail.discard(id(n))
        if not self._tail_pays():
            self.tail = set()

    def _tail_pays(self) -> bool:
        """The tail's per-size layers (one more KPU layer, weight load and dispatch per extra size) and
        its concatenations of batched classes, which KPU RAM does not hold in place (each batch is a
        whole map there, kcc.quant.kpu_ram: the parts cross to the CPU and back), cost more than
        packing its inputs and unpacking what leaves it."""
        saved = packing = 0.0
        packed: set[int] = set()
        for n in self.g.nodes:
            if id(n) not in self.tail:
                continue
            f = self.factor(n)
            extra = len(classes(*n.shape[2:], f)) - 1
            if isinstance(n.op, O.Conv2D):
                weights = n.inputs[1].type.size
                saved += extra * (KPU_LAYER_US * DEFAULT_MHZ + KPU_WEIGHT_CYCLES_PER_BYTE * weights)
            else:
                saved += extra * CPU_NODE_CYCLES
            if isinstance(n.op, O.Concat) and n.op.axis == 1 and any(len(ps) > 1 for *_, ps in classes(*n.shape[2:], f)):
                saved += crossing_cycles() * n.type.size
            ins = [i for i in split_inputs(n) if id(i) not in self.tail and not is_broadcast(i) and id(i) not in packed]
            outs = [u for u in self.users[n] if id(u) not in self.tail and not is_global_mean(u)]
            packed.update(id(i) for i in ins)
            moved = [*ins, n] if outs else ins
            per = cpu_cycles("copy_byte") + crossing_cycles()  # the classes' outer swaps: concatenations
            packing += sum(per * m.type.size + pack_blocks(m, f) * cpu_cycles("concat_block") for m in moved)
        return saved > packing

    def _fits(self, n: Node, factor: int) -> bool:
        hw = spatial_size(n)
        return hw is not None and min(hw) >= factor

    def _forward(self, n: Node) -> int:
        d = dilation_of(n)
        if d is not None:
            fi = max(self.factor(n.inputs[0]), 1)
            return d if d % fi == 0 and self._fits(n, d) else 1
        if is_broadcast(n):
            return FREE
        if is_global_mean(n):
            return 1
        if is_pointwise(n):
            fs = [max(self.factor(i), 1) for i in split_inputs(n)]
            f = max(fs, default=1)
            # nested factors only (each divides the largest): a concat of a d=2 and a d=3 branch
            # would need phases of 6 of both; it runs on full maps instead
            return f if all(f % x == 0 for x in fs) and self._fits(n, f) else 1
        return 1

    def demand(self, u: Node) -> int | None:
        """The factor reader u wants its map inputs in (None: any, a global mean takes phases)."""
        if is_global_mean(u):
            return None
        f = self.factor(u)
        return 1 if f == FREE else f

    def _raise(self, n: Node) -> None:
        """Run pointwise n (or a broadcast) at the factor its readers share, when that moves the
        refinement onto smaller inputs (or n is a free broadcast)."""
        f = self.factor(n)
        if not (is_pointwise(n) or is_broadcast(n)) or id(n) in self.outputs:
            return
        wants = [self.demand(u) for u in self.users[n]]
        wants = [w for w in wants if w is not None]
        if not wants:
            return
        target = math.gcd(*wants)
        if target <= max(f, 1) or (f != FREE and target % f) or not self._fits(n, target):
            return
        if f != FREE:
            refined = sum(i.type.size for i in split_inputs(n) if self.factor(i) not in (FREE, target))
            if refined >= n.type.size:
                return
        self.f[id(n)] = target
    def _trim(self, n: Node) -> None:
        """End the region before pointwise n when all of n's readers take full maps and its map
        inputs are smaller than n (merging them costs less than merging n)."""
        f = self.factor(n)
        if f <= 1 or dilation_of(n) is not None or not is_pointwise(n):
            return
        if any(self.demand(u) != 1 for u in self.users[n]):
            return
        if sum(i.type.size for i in split_inputs(n) if self.factor(i) > 1) < n.type.size:
            self.f[id(n)] = 1


class _Rewriter:
    def __init__(self, src: Graph, plan: _Plan):
        self.src, self.plan = src, plan
        self.g = Graph()
        self.full: dict[int, Node] = {}
        self.groups: dict[tuple[int, int], list[Node]] = {}  # (node, factor) -> a tensor per class
        self.packed: dict[tuple[int, int], Node] = {}  # (node, factor) -> its packed map (find_tail)
        # (node, factor) whose classes are combined, packed into one map or cut into finer phases
        # batched across them: one grid for all of them (ctx.phase_classes), their codes moved as they are
        self.combined: list[tuple[Node, int]] = []

    # ------------------------------------------------------------------ phases of a value
    def _full(self, v: Node) -> Node:
        if id(v) not in self.full:
            self.full[id(v)] = self._merge(v)
        return self.full[id(v)]

    def _batch(self, parts: list[Node], name: str) -> Node:
        return parts[0] if len(parts) == 1 else self.g.add(O.Concat(0), parts, name)

    def _spread(self, n: Node, src: Node, hw: tuple[int, int], batch: int, name: str) -> Node:
        """Broadcast n (a resize of the 1x1 map `src`) at size hw over `batch` batches: a row of copies
        of src, then copies of the row (a resize of a 1x1 map is its value at every pixel; a CPU
        resize costs ~100 cycles per output element, a copy ~1, kcc.target.k210). Copies move 8-bit
        codes as they are (kcc.quant.quantize), so a broadcast of a KPU layer's output is on its grid."""
        h, w = hw
        row = self.g.add(O.Concat(3), (src,) * w, f"{name}/row" if h > 1 or batch > 1 else name)
        if h > 1:
            row = self.g.add(O.Concat(2), (row,) * h, f"{name}/rows" if batch > 1 else name)
        return self._batch([row] * batch, name)

    def _resize(self, n: Node, src: Node, factor: int) -> list[Node]:
        """Broadcast n per class: the class's size, the one map repeated over the class's batch."""
        return [self._spread(n, src, (ph, pw), len(ps), f"{n.name}/ph{factor}_c{k}")
                for k, (ph, pw, ps) in enumerate(classes(*n.shape[2:], factor))]

    def _phases(self, v: Node, factor: int) -> list[Node]:
        """v as one tensor per class of `factor`, made from its own factor's (or the full map) where
        that is coarser: phase (i, j) of F*m is phase (i % F, j % F) of F sliced from (i // F, j // F)
        with step m."""
        key = (id(v), factor)
        if key in self.groups:
            return self.groups[key]
        own = self.plan.factor(v)
        h, w = v.shape[2:]
        if id(v) in self.plan.tail and own == factor:
            out = self._unpack(v, factor)
        elif own == FREE:
            out = self._resize(v, self._full(v.inputs[0]), factor)
        else:
            base = max(own, 1)
            assert factor % base == 0 and factor > base, (v.name, own, factor)
            coarse = self._phases(v, base) if base > 1 else [self._full(v)]
            if base > 1:
                self.combined.append((v, base))
            where = phase_index(h, w, base)
            m = factor // base
            out = []
            for k, (_, _, ps) in enumerate(classes(h, w, factor)):
                parts = []
                for i, j in ps:
                    cls, b = where[(i % base, j % base)]
                    p = coarse[cls]
                    op = O.StridedSlice((b, 0, i // base, j // base), (b + 1, *p.shape[1:]), (1, 1, m, m))
                    parts.append(self.g.add(op, (p,), f"{v.name}/ph{factor}_{i}{j}"))
                out.append(self._batch(parts, f"{v.name}/ph{factor}_c{k}"))
        self.groups[key] = out
        return out

    def _pack(self, v: Node, factor: int) -> Node:
        """v's phases of `factor` as one map of v's shape: per class [n, C, h, w] -> [C, n*h*w] (a
        transpose when n > 1), the classes concatenated along the pixels."""
        key = (id(v), factor)
        if key not in self.packed and is_broadcast(v):  # the same at every pixel: packed as it is
            self.packed[key] = self._spread(v, self._full(v.inputs[0]), v.shape[2:], 1, f"{v.name}/pack{factor}")
        if key not in self.packed:
            self.combined.append((v, factor))
            _, c, h, w = v.shape
            parts = []
            for k, t in enumerate(self._phases(v, factor)):
                n, _, ph, pw = t.shape
                if n > 1:
                    t = self._swap_outer(t, f"{v.name}/pack{factor}_c{k}/t")
                parts.append(self.g.add(O.Reshape((1, c, 1, n * ph * pw)), (t,), f"{v.name}/pack{factor}_c{k}"))
            flat = self.g.add(O.Concat(3), parts, f"{v.name}/pack{factor}/flat")
            self.packed[key] = self.g.add(O.Reshape((1, c, h, w)), (flat,), f"{v.name}/pack{factor}")
        return self.packed[key]

    def _swap_outer(self, t: Node, name: str) -> Node:
        """[A, B, h, w] -> [B, A, h, w] as a concatenation along axis 1 of the A slices t[a], each
        [B, h, w] in one piece (a view, no copy: kcc.emit.storage) read as [B, 1, h, w]: a copy of
        the bytes (~1 cycle each) and A*B blocks, where a transpose costs ~80 cycles an element
        (kcc.target.k210)."""
        a, b, h, w = t.shape
        views = [self.g.add(O.Reshape((b, 1, h, w)),
                            (self.g.add(O.StridedSlice((i, 0, 0, 0), (i + 1, b, h, w), (1, 1, 1, 1)), (t,),
                                        f"{name}/{i}"),), f"{name}/{i}/as") for i in range(a)]
        return self.g.add(O.Concat(1), views, name)

    def _unpack(self, v: Node, factor: int) -> list[Node]:
        """The class tensors of packed v (the inverse of _pack)."""
        packed = self.packed[(id(v), factor)]
        _, c, h, w = v.shape
        flat = self.g.add(O.Reshape((1, c, 1, h * w)), (packed,), f"{v.name}/unpack{factor}")
        out, at = [], 0
        for k, (ph, pw, ps) in enumerate(classes(h, w, factor)):
            n = len(ps)
            part = self.g.add(O.StridedSlice((0, 0, 0, at), (1, c, 1, at + n * ph * pw), (1, 1, 1, 1)), (flat,),
                              f"{v.name}/unpack{factor}_c{k}/flat")
            at += n * ph * pw
            t = self.g.add(O.Reshape((c, n, ph, pw) if n > 1 else (1, c, ph, pw)), (part,),
                           f"{v.name}/unpack{factor}_c{k}" + ("/t" if n > 1 else ""))
            if n > 1:
                t = self._swap_outer(t, f"{v.name}/unpack{factor}_c{k}")
            out.append(t)
        return out

    def _merge(self, v: Node) -> Node:
        """The full map of v from its phases: pad each to the largest phase, concatenate along
        channels (in memory, the batch of phases [F*F, C, h, w]), interleave, crop."""
        f = self.plan.factor(v)
        groups = self._phases(v, f)
        _, c, h, w = v.shape
        hs, ws = -(-h // f), -(-w // f)
        where = phase_index(h, w, f)
        padded = groups if len(groups) == 1 else []  # one size: the batch is the stack already
        for i in range(f if len(groups) > 1 else 0):
            for j in range(f):
                cls, b = where[(i, j)]
                p = groups[cls]
                if p.shape[0] > 1:
                    p = self.g.add(O.StridedSlice((b, 0, 0, 0), (b + 1, *p.shape[1:]), (1, 1, 1, 1)), (p,),
                                   f"{v.name}/merge_{i}{j}")
                ph, pw = p.shape[2:]
                if (ph, pw) != (hs, ws):
                    p = self.g.add(O.Pad(((0, 0), (0, 0), (0, hs - ph), (0, ws - pw))), (p,),
                                   f"{v.name}/merge_pad{i}{j}")
                padded.append(p)
        stacked = padded[0] if len(padded) == 1 else self.g.add(O.Concat(1), padded, f"{v.name}/merge_stack")
        r1 = self.g.add(O.Reshape((f, f, c * hs, ws)), (stacked,), f"{v.name}/merge_split")
        t = self.g.add(O.Transpose((2, 0, 3, 1)), (r1,), f"{v.name}/merge_interleave")
        whole = (1, c, hs * f, ws * f)
        if (hs * f, ws * f) == (h, w):
            return self.g.add(O.Reshape(whole), (t,), v.name)
        r2 = self.g.add(O.Reshape(whole), (t,), f"{v.name}/merge")
        return self.g.add(O.StridedSlice((0, 0, 0, 0), (1, c, h, w), (1, 1, 1, 1)), (r2,), v.name)

    # ------------------------------------------------------------------ one node
    def _node(self, n: Node) -> None:
        f = self.plan.factor(n)
        if f == FREE:  # a broadcast no phase reads: as it is, and as the source of its phases
            self.full[id(n)] = self.g.add(n.op, tuple(self._full(i) for i in n.inputs), n.name, n.note)
            return
        x = n.inputs[0] if n.inputs else None
        packed = x is not None and (id(x) in self.plan.tail or any(id(u) in self.plan.tail for u in self.plan.users[x]))
        if packed and is_global_mean(n):  # a permutation: the same mean, of a map packed anyway
            self.full[id(n)] = self.g.add(n.op, (self._pack(x, self.plan.factor(x)),), n.name, n.note)
            return
        if is_global_mean(n) and self.plan.factor(n.inputs[0]) > 1:
            self.full[id(n)] = self._mean(n)
            return
        if f <= 1:
            self.full[id(n)] = self.g.add(n.op, tuple(self._full(i) for i in n.inputs), n.name, n.note)
            return
        maps = {id(i) for i in split_inputs(n)}
        if id(n) in self.plan.tail:  # the op as it is, on packed maps of its own shape
            ins = tuple(self._pack(v, f) if id(v) in maps else self._full(v) for v in n.inputs)
            self.packed[(id(n), f)] = self.g.add(n.op, ins, f"{n.name}/pack{f}", n.note)
            return
        if is_broadcast(n):
            self.groups[(id(n), f)] = self._resize(n, self._full(n.inputs[0]), f)
            return
        d = dilation_of(n)
        op = n.op
        if d is not None:
            (pt, pb), (pl, pr) = op.padding
            op = O.Conv2D((1, 1), ((pt // f, pb // f), (pl // f, pr // f)), (d // f, d // f), op.groups, op.act)
        out = []
        for k in range(len(classes(*n.shape[2:], f))):
            ins = tuple(self._phases(v, f)[k] if id(v) in maps else self._full(v) for v in n.inputs)
            out.append(self.g.add(op, ins, f"{n.name}/ph{f}_c{k}", n.note))
        self.groups[(id(n), f)] = out

    def _mean(self, n: Node) -> Node:
        """Global mean = sum over phases of (phase pixels / map pixels) * phase mean (exact); the
        phases of one class are summed over the batch first."""
        x = n.inputs[0]
        f = self.plan.factor(x)
        h, w = x.shape[2:]
        act = n.op.act if isinstance(n.op, O.Pool2D) else O.NO_CLAMP
        tail = n.type.rank != 4 or act != O.NO_CLAMP  # a clamp or reshape ends it, not the last add
        groups = self._phases(x, f)
        total = None
        for k, p in enumerate(groups):
            ph, pw = p.shape[2:]
            m = self.g.add(O.Pool2D("mean", (ph, pw), (ph, pw)), (p,), f"{n.name}/ph{f}_c{k}")
            if p.shape[0] > 1:
                m = self.g.add(O.Reduce("sum", (0,)), (m,), f"{n.name}/ph{f}_c{k}/sum")
            wk = self.g.constant(np.full((1, 1, 1, 1), ph * pw / (h * w), np.float32), f"{n.name}/weight{k}")
            last = k == len(groups) - 1 and not tail
            term = self.g.add(O.Binary("mul"), (m, wk), n.name if last and total is None else f"{n.name}/term{k}")
            total = term if total is None else self.g.add(O.Binary("add"), (total, term),
                                                          n.name if last else f"{n.name}/sum{k}")
        if act != O.NO_CLAMP:
            total = self.g.add(O.Clamp(*act), (total,), n.name if n.type.rank == 4 else f"{n.name}/clamp")
        if n.type.rank != 4:
            total = self.g.add(O.Reshape(n.shape), (total,), n.name)
        return total

    def run(self) -> Graph:
        for n in self.src.nodes:
            self._node(n)
        self.g.outputs = [self._full(o) for o in self.src.outputs]
        self.g.remove_dead()
        return self.g


def _regions(g: Graph, plan: _Plan) -> list[list[Node]]:
    """Connected groups of nodes that run in phases (factor > 1), with global means reading them."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    inside = [n for n in g.nodes if plan.factor(n) > 1]
    for n in inside:
        parent[id(n)] = id(n)
    for n in inside:
        for i in n.inputs:
            if id(i) in parent:
                parent[find(id(i))] = find(id(n))
    groups: dict[int, list[Node]] = {}
    for n in inside:
        groups.setdefault(find(id(n)), []).append(n)
    return list(groups.values())


def _phase_cost(region: list[Node], plan: _Plan) -> float:
    """CPU cycles the phase form adds: refinements into the region, merges out of it, the extra
    layer dispatches and the weighted sums of global means."""
    ids = {id(n) for n in region}
    users = plan.users
    cost = 0.0
    seen: set[tuple[int, int]] = set()
    for n in region:
        f = plan.factor(n)
        extra = len(classes(*n.shape[2:], f)) - 1
        per = KPU_LAYER_US * DEFAULT_MHZ if isinstance(n.op, O.Conv2D) else CPU_NODE_CYCLES
        cost += extra * per
        for v in split_inputs(n):
            fv = plan.factor(v)
            if fv not in (FREE, f) and (id(v), f) not in seen:
                seen.add((id(v), f))
                groups = len(classes(*v.shape[2:], f))  # slices, then a batching concat per class
                cost += ((f * f + groups) * CPU_NODE_CYCLES
                         + (cpu_cycles("strided_slice") + cpu_cycles("copy_byte") + crossing_cycles()) * v.type.size)
        outside = [u for u in users[n] if id(u) not in ids]
        means = [u for u in outside if is_global_mean(u)]
        cost += len(means) * f * f * 3 * CPU_NODE_CYCLES
        if len(means) < len(outside) or id(n) in plan.outputs:
            cost += merge_cycles(n, f)
    return cost


def phase_dilated(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Run regions holding dilated convs in phase space where kcc.target.k210's cost model says it is
    cheaper than space-to-batch per conv; the classes of each tensor whose classes are packed or cut
    into finer phases go to ctx.phase_classes (one grid for them, kcc.quant.policy.share_phase_grids)."""
    if not any(dilation_of(n) is not None for n in g.nodes):
        return g
    plan = _Plan(g)
    for region in _regions(g, plan):
        convs = [n for n in region if dilation_of(n) is not None]
        if not convs or _phase_cost(region, plan) >= sum(s2b_cycles(n) for n in convs):
            for n in region:
                plan.f[id(n)] = 1
    for n in g.nodes:  # a broadcast whose readers run in full maps is an ordinary node
        if plan.factor(n) == FREE and not any(plan.factor(u) > 1 for u in plan.users[n]):
            plan.f[id(n)] = 1
    if not any(plan.factor(n) > 1 for n in g.nodes):
        return g
    plan.find_tail()
    rewriter = _Rewriter(g, plan)
    out = rewriter.run()
    if ctx is not None:
        names = {m.name for m in out.nodes}
        for v, f in rewriter.combined:
            group = tuple(c for k in range(len(classes(*v.shape[2:], f))) if (c := f"{v.name}/ph{f}_c{k}") in names)
            if len(group) > 1:
                ctx.phase_classes.append(group)
    return out
