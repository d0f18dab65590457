"""phase_space: the facts kcc.passes.phase_dilated builds on (its docstring has the algebra).

The phase split of factor F cuts a map into its F*F phases P_F(x)[i, j] = x[:, :, i::F, j::F]: which
ops commute with it (`is_pointwise`, `is_broadcast`, `is_global_mean`, `dilation_of`), the phases'
sizes and their grouping by size (`phase_size`, `classes`, `phase_index`), and what crossing into
and out of phase space costs on the CPU by kcc.target.k210's cost model (`merge_cycles`, against
today's space-to-batch per conv, `s2b_cycles`).
"""

from __future__ import annotations

from kcc.ir import ops as O
from kcc.ir.graph import Node
from kcc.target.k210 import CPU_NODE_CYCLES, cpu_cycles


def spatial_size(v: Node) -> tuple[int, int] | None:
    return (v.shape[2], v.shape[3]) if v.type.rank == 4 else None


def uniform(v: Node) -> bool:
    """v is the same at every pixel of a map it is broadcast against (a 1x1 map or a constant
    without spatial axes)."""
    shape = (1,) * (4 - v.type.rank) + tuple(v.shape) if v.type.rank <= 4 else None
    return shape is not None and shape[2] == shape[3] == 1


def dilation_of(n: Node) -> int | None:
    """d when n is a stride-1 batch-1 conv of square dilation d > 1 whose output is the size of its
    input and whose leading paddings are multiples of d (so it runs per phase); else None."""
    op = n.op
    if not isinstance(op, O.Conv2D) or op.dilation[0] != op.dilation[1] or op.dilation[0] == 1:
        return None
    d = op.dilation[0]
    x = n.inputs[0]
    (pt, _), (pl, _) = op.padding
    ok = (op.stride == (1, 1) and x.shape[0] == 1 and n.shape[2:] == x.shape[2:]
          and pt % d == 0 and pl % d == 0)
    return d if ok else None


def is_broadcast(n: Node) -> bool:
    """A resize of a 1x1 map: every output pixel is the one input pixel (bilinear or nearest)."""
    return isinstance(n.op, O.Resize) and n.inputs[0].shape[2:] == (1, 1) and n.shape[0] == 1


def is_global_mean(n: Node) -> bool:
    """A mean over the whole map (a pool whose window is the map, or a reduce over H and W)."""
    if not isinstance(n.op, (O.Pool2D, O.Reduce)):
        return False
    op, x = n.op, n.inputs[0]
    if x.type.rank != 4 or x.shape[0] != 1:
        return False
    if isinstance(op, O.Pool2D):
        return op.op == "mean" and op.filter == x.shape[2:] and op.padding == ((0, 0), (0, 0))
    return isinstance(op, O.Reduce) and op.op == "mean" and set(op.axes) == {2, 3}


def is_pointwise(n: Node) -> bool:
    """n commutes with the phase split: its map inputs have its own size, its other inputs are the
    same at every pixel (module docstring)."""
    op = n.op
    if n.type.rank != 4 or n.shape[0] != 1:
        return False
    if isinstance(op, O.Conv2D):
        w = n.inputs[1]
        ok = w.shape[2:] == (1, 1) and op.stride == (1, 1) and op.padding == ((0, 0), (0, 0))
        return ok and w.is_constant and n.inputs[2].is_constant
    if isinstance(op, (O.Unary, O.Clamp, O.LeakyRelu)):
        return True
    if isinstance(op, O.PRelu):
        return uniform(n.inputs[1])
    if isinstance(op, O.Softmax):
        return op.axis == 1
    if isinstance(op, O.Concat):
        return op.axis == 1
    if isinstance(op, O.Binary):
        maps = [i for i in n.inputs if i.type.rank == 4 and i.shape[2:] == n.shape[2:] and not uniform(i)]
        return bool(maps) and all(i in maps or uniform(i) for i in n.inputs)
    return False


def split_inputs(n: Node) -> list[Node]:
    """The inputs of n that are maps of its own size (those that are split into phases)."""
    if dilation_of(n) is not None or is_global_mean(n):
        return [n.inputs[0]]
    if isinstance(n.op, O.Conv2D):
        return [n.inputs[0]]
    return [i for i in n.inputs if i.type.rank == 4 and i.shape[2:] == n.shape[2:] and not uniform(i)]


def phase_size(size: int, factor: int, index: int) -> int:
    return len(range(index, size, factor))


def crossing_cycles() -> float:
    """Cycles per element of a map crossing between KPU layers and a CPU op: copied out of KPU RAM and
    uploaded again (kcc.target.k210: kpu_download_byte, kpu_upload_byte; uint8 maps, one byte each)."""
    return cpu_cycles("kpu_download_byte") + cpu_cycles("kpu_upload_byte")


def merge_cycles(v: Node, factor: int) -> float:
    """_Rewriter._merge over map v: pads of the smaller phases, a concatenation, one transpose, a crop
    where the interleaved map is larger; the map leaves KPU RAM and (usually) comes back."""
    c, h, w = v.shape[1:]
    hs, ws = -(-h // factor), -(-w // factor)
    padded = c * hs * ws * factor * factor
    small = sum(1 for i in range(factor) for j in range(factor)
                if (phase_size(h, factor, i), phase_size(w, factor, j)) != (hs, ws))
    crop = (hs * factor, ws * factor) != (h, w)
    nodes = small + 2 + crop
    return (nodes * CPU_NODE_CYCLES + cpu_cycles("pad") * small * c * hs * ws
            + padded * (cpu_cycles("copy_byte") + cpu_cycles("transpose"))
            + crop * cpu_cycles("strided_slice") * v.type.size + crossing_cycles() * v.type.size)


def s2b_cycles(n: Node) -> float:
    """eliminate_dilated_conv's CPU work around conv n: pad + transpose of its input, transpose (+ crop)
    of its output, each side crossing out of and back into KPU RAM."""
    x = n.inputs[0]
    d = n.op.dilation[0]
    (pt, pb), (pl, pr) = n.op.padding
    hp, wp = x.shape[2] + pt + pb, x.shape[3] + pl + pr
    padded = x.shape[1] * (hp + (-hp) % d) * (wp + (-wp) % d)
    out = n.shape[1] * (hp + (-hp) % d - 2 * d) * (wp + (-wp) % d - 2 * d)
    crop = out != n.type.size
    pad = padded != x.type.size
    return ((3 + pad + crop) * CPU_NODE_CYCLES + padded * (pad * cpu_cycles("pad") + cpu_cycles("transpose"))
            + out * cpu_cycles("transpose") + crop * cpu_cycles("strided_slice") * out
            + crossing_cycles() * (x.type.size + n.type.size))


def classes(h: int, w: int, factor: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """The phases of factor `factor` of an h x w map grouped by size: (height, width, phases (i, j))
    per group, largest first. At most 4 groups (ceil and floor of h/F and w/F), 1 when F divides
    both; a group runs as ONE batched tensor, so one KPU layer (one copy of the weights) per group."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i in range(factor):
        for j in range(factor):
            groups.setdefault((phase_size(h, factor, i), phase_size(w, factor, j)), []).append((i, j))
    return [(ph, pw, ps) for (ph, pw), ps in sorted(groups.items(), reverse=True)]


def pack_blocks(v: Node, factor: int) -> int:
    """Concatenation blocks of packing map v's phases of `factor` into one map (or unpacking it):
    per class of n > 1 phases, n*C blocks of the outer swap, and C per class of the concatenation
    along the pixels (kcc.passes.phase_dilated)."""
    c = v.shape[1]
    return sum((len(ps) * c if len(ps) > 1 else 0) + c for _, _, ps in classes(*v.shape[2:], factor))


def phase_index(h: int, w: int, factor: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Phase (i, j) -> (its group, its batch index in the group) of `classes`."""
    return {p: (k, b) for k, (_, _, ps) in enumerate(classes(h, w, factor)) for b, p in enumerate(ps)}
