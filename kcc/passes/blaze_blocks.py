"""blaze_blocks: MediaPipe's BlazeBlocks as kcc.passes.prelu_stream recognizes them, and which of them
it streams through KPU RAM (`streamed_prelus`, asked by kcc.passes.decompose_kernels before any layer
is placed, so that a conv reading a streamed PReLU is decomposed as an 8-bit KPU input).

A BlazeBlock: a = proj(dw(y)) + skip(y), y' = PReLU(a) with a slope per channel, the skip y itself or,
at stride 2, a channel pad of a 2x2 max pool of y.
"""

from __future__ import annotations

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node, channel_values
from kcc.options import CompileOptions
from kcc.passes.residual_kpu import _reaches
from kcc.target.k210 import KPU_RAM_SIZE, kpu_bytes


def channel_selection(n: Node) -> np.ndarray | None:
    """[C_out, C_in] selection matrix of a pad or slice along channels only, else None."""
    x = n.inputs[0]
    if x.type.rank != 4 or n.type.rank != 4 or x.shape[0] != 1:
        return None
    c_in, c_out = x.shape[1], n.shape[1]
    if isinstance(n.op, O.Pad) and n.op.value == 0.0:
        p = n.op.paddings
        if p[0] != (0, 0) or p[2] != (0, 0) or p[3] != (0, 0):
            return None
        m = np.zeros((c_out, c_in))
        m[p[1][0] + np.arange(c_in), np.arange(c_in)] = 1.0
        return m
    if isinstance(n.op, O.StridedSlice):
        op = n.op
        full = all(op.begin[a] == 0 and op.end[a] == x.shape[a] and op.strides[a] == 1 for a in (0, 2, 3))
        if not full or op.strides[1] <= 0:
            return None
        idx = np.arange(x.shape[1])[op.slices()[1]]
        m = np.zeros((c_out, c_in))
        m[np.arange(c_out), idx] = 1.0
        return m
    return None


def prelu_reader(n: Node, users: dict) -> Node | None:
    """A reader of n that is a PReLU of n with one slope per channel, or None."""
    return next((u for u in users[n] if isinstance(u.op, O.PRelu) and u.inputs[0] is n
                 and channel_values(n, u.inputs[1]) is not None), None)


def blaze_add(n: Node, users: dict) -> bool:
    """n is a BlazeBlock's add: a residual add (one operand an ancestor of the other, not a
    decomposed conv's sum of terms) read by a per-channel PReLU."""
    if not (isinstance(n.op, O.Binary) and n.op.op == "add" and len(n.inputs) == 2):
        return False

    def skip_source(v: Node) -> Node:  # through a stride-2 block's skip: channel pad or slice, max pool
        while (channel_selection(v) is not None if isinstance(v.op, (O.Pad, O.StridedSlice))
               else isinstance(v.op, O.Pool2D) and v.op.op == "max"):
            v = v.inputs[0]
        return v

    a, b = n.inputs
    return prelu_reader(n, users) is not None and (_reaches(a, skip_source(b)) or _reaches(b, skip_source(a)))


#: most KPU RAM the pair of a streamed PReLU that its readers take through their weights may take:
#: the pair stays in KPU RAM while a decomposed reader's stacked copies and output, and the next
#: block's stack, are made beside it (BlazePalm's 96x96 maps of 32 channels: a pair of 768 KiB and
#: the next block's stack of 1152 KiB, with a `stack_kpu` group's copies, overflow the 2 MiB)
STREAM_PAIR_RAM = KPU_RAM_SIZE // 4

#: most KPU RAM the pair of any streamed PReLU may take: over STREAM_PAIR_RAM, kcc.passes.prelu_stream
#: makes the PReLU explicit right after its pair, one merge layer to C channels, so that only the
#: block's stack and its pair are alive at its peak and the readers read C channels (BlazePalm's
#: 96x96 blocks: a stack and a pair of 768 KiB each, then 384 KiB)
EXPLICIT_PAIR_RAM = KPU_RAM_SIZE // 2


#: most kmodel bytes one BlazeBlock's stream may add (`streamed_prelus`): its pair layer (2C outputs
#: over its stack) and, when a conv with a kernel over 3x3 (a 5x5) reads its PReLU or its pair is
#: over STREAM_PAIR_RAM, the merge layers making the PReLU explicit (C x 2C). BlazePalm's 128-channel
#: 24x24 blocks take 96 + 32 KiB each: streamed, the device RAM retry gives their bytes back from its
#: 5x5s' forms (board build 450.1 -> 411.1 ms at 5.12 MiB, docs/measurements.md §31); its 256-channel
#: 12x12 and 6x6 blocks (384 + 128 KiB) are not. Its 64-channel ones take 24 + 8 KiB; iris' blocks
#: (80 KiB, 3x3 readers that fold the pair: no merge) and hand recrop's stay within it too
STREAM_BLOCK_BYTES = 128 * 1024


def pair_shape(n: Node) -> tuple[int, ...]:
    """The shape of add n's relu pair [relu(a); relu(-a)]."""
    return (1, 2 * n.shape[1], *n.shape[2:])


def explicit_prelu(n: Node) -> bool:
    """The PReLU of streamed add n is made explicit at once: its pair is over STREAM_PAIR_RAM."""
    return kpu_bytes(pair_shape(n)) > STREAM_PAIR_RAM


def _stack_bytes(n: Node) -> int:
    """Weight bytes of add n's pair layer: 2C outputs over the pair of its skip's block (2C) and its
    projection's input (or the other operand's C channels)."""
    c = n.shape[1]
    a, b = n.inputs
    other = a if _reaches(a, b) else b
    k = other.inputs[0].shape[1] if isinstance(other.op, (O.Conv2D, KO.FloatKpuConv)) else c
    return 2 * c * (2 * c + k)


def streamed_prelus(g: Graph, opts: CompileOptions = CompileOptions()) -> dict[int, str]:
    """The PReLUs of BlazeBlock adds in a graph before legalize (`blaze_add`; neither the sum nor the
    PReLU a graph output) that this pass will keep in KPU RAM, by id, with their add's name:
    kcc.passes.decompose_kernels decomposes a conv reading one as an 8-bit KPU input (no rounding
    residual: the stream's readers read codes, not floats), and records the adds for `stream_to_kpu`,
    which streams no other. Taken when the pair takes at most EXPLICIT_PAIR_RAM of KPU RAM and the
    block at most STREAM_BLOCK_BYTES of kmodel.
    An add `stream_to_kpu` keeps on the CPU after all (its `kept` reasons) leaves such a reader one
    rounding more than the float conv."""
    if opts.target == "cpu" or not any(isinstance(n.op, O.PRelu) for n in g.nodes):
        return {}
    users, outputs = g.users(), {id(o) for o in g.outputs}
    out = {}
    for n in g.nodes:
        if not (blaze_add(n, users) and id(n) not in outputs and n.shape[0] == 1 and n.type.rank == 4
                and kpu_bytes(pair_shape(n)) <= EXPLICIT_PAIR_RAM):
            continue
        p = prelu_reader(n, users)
        if id(p) in outputs:
            continue
        c = n.shape[1]
        # a kernel over 3x3 (a 5x5): decompose_kernels' to decompose (legalize pads a 2x2 to 3x3)
        decomposed = any(isinstance(u.op, O.Conv2D) and max(u.inputs[1].shape[2:]) > 3 for u in users[p])
        merged = decomposed or explicit_prelu(n)
        if _stack_bytes(n) + (2 * c * c if merged else 0) > STREAM_BLOCK_BYTES:
            continue
        out[id(p)] = n.name
    return out
