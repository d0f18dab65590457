"""emit: a lowered IR graph -> a kmodel v4 model (`kcc.kmodel.KModel`).

Three steps:
1. **Storage** (`storage`). Every node gets a place: graph inputs and computed tensors live in main
   memory; constants read as data (binary operands, matmul B) live in the constants blob
   (kmodel_v4.md §5); conv / matmul weights and biases are inlined into their bodies; a Reshape is
   free and aliases its input's storage (kmodel has no reshape op; ncc removes its memory_copy the
   same way).
2. **Memory plan** (`plan`). Buffer lifetimes over the node order, packed with `kcc.alloc` (8-byte
   aligned, §7.1); `main_mem` is the plan's peak.
3. **Bodies.** `EMITTERS` maps each IR op class to a function building its kmodel body, one body per
   node (`lower_to_neutral` has already decomposed everything else): the neutral CPU ops (`neutral`) and
   the K210 ops (`kpu`), assembled here from the two tables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from kcc import kmodel as K
from kcc.alloc import Buffer, MemoryReport
from kcc.emit.kpu import KPU_EMITTERS
from kcc.emit.neutral import NEUTRAL_EMITTERS, Emit
from kcc.emit.plan import plan
from kcc.emit.storage import MAIN_ALIGN, Storage, in_kpu_ram, inline_constants, shape4
from kcc.errors import UnsupportedModelError
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.kmodel.output_record import with_output_shapes

EMITTERS: dict[type, Emit] = {**NEUTRAL_EMITTERS, **KPU_EMITTERS}


@dataclass
class Emitted:
    model: K.KModel
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[tuple[str, tuple[int, ...]]]
    node_names: list[str]  # kmodel node index -> IR node name
    kpu_peak: int = 0
    buffers: list[Buffer] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    memory: MemoryReport | None = None  # the plans of main memory and KPU RAM, for reports


def _clamp_to_binary(g: Graph) -> None:
    """Clamp(x, lo, hi) -> binary add(x, 0) with fused clamp [lo, hi]: one neutral node that every
    v0.2 runtime runs (nnil's clamp needs beta3+)."""
    zero = None
    for n in list(g.nodes):
        if isinstance(n.op, O.Clamp):
            if zero is None:
                zero = g.insert_before(g.nodes[0], O.Constant(np.zeros((), np.float32)), (), "clamp_zero")
            n.op = O.Binary("add", (n.op.lo, n.op.hi))
            n.inputs = (n.inputs[0], zero)


def _copy_outputs_that_are_not_computed(g: Graph) -> None:
    """A graph output that is a constant or an input (or a reshape of one) gets a real copy node, so
    every output range points at main memory written by this model. Copy = binary add 0."""
    for k, o in enumerate(list(g.outputs)):
        base = o
        while isinstance(base.op, O.Reshape):
            base = base.inputs[0]
        if isinstance(base.op, (O.Input, O.Constant)):
            zero = g.constant(np.zeros((), np.float32), f"{o.name}/copy_zero")
            copy = g.add(O.Binary("add"), (o, zero), f"{o.name}/copy")
            g.outputs[k] = copy


def emit(graph: Graph, max_solve_secs: float = 60.0) -> Emitted:
    """Build the kmodel of a lowered float graph. `graph` is modified (clamp rewrite).
    `max_solve_secs`: the allocator budget (`--max-allocator-solve-secs`, 0 = first fit only)."""
    g = graph
    output_names = [o.name for o in g.outputs]
    _clamp_to_binary(g)
    _copy_outputs_that_are_not_computed(g)
    for n in g.nodes:
        if type(n.op) not in EMITTERS and not isinstance(
                n.op, (O.Input, O.Constant, O.Reshape, KO.KpuDownload, KO.KpuConcat, KO.KpuChannelView,
                       KO.KpuRowPatch, KO.KpuChannelPatch)):
            raise UnsupportedModelError(f"'{n.name}': op {n.op.kind} has no kmodel v4 emitter "
                                        f"(run lower_to_neutral first)")
    st = Storage(g, inline_constants(g), EMITTERS)
    st.downloads = {id(n.inputs[0]): n for n in g.nodes if isinstance(n.op, KO.KpuDownload)}
    for n in g.nodes:  # KPU layers read KPU RAM, everything else main memory (§9.1); a reshape aliases
        for i in () if isinstance(n.op, O.Reshape) else n.inputs:
            want_kpu = isinstance(n.op, (KO.QuantKpuLayer, KO.KpuDownload, KO.KpuConcat, KO.KpuChannelView,
                                         KO.KpuRowPatch, KO.KpuChannelPatch)) or (
                isinstance(n.op, KO.KpuUpload) and id(i) in st.kpu_inputs)
            if in_kpu_ram(st.base(i), st) != want_kpu:
                raise UnsupportedModelError(f"'{n.name}' ({n.op.kind}) reads '{i.name}' from the wrong "
                                            f"memory (a kpu_upload or kpu_download is missing)")
    compute = [n for n in g.nodes if type(n.op) in EMITTERS and id(n) not in st.elided and id(n) not in st.views
               and (st.base(n) is n or id(n) in st.offset or id(n) in st.in_place)]
    mem = plan(g, st, compute, max_solve_secs)
    peak, kpu_peak = mem.main.peak, mem.kpu.peak if mem.kpu else 0
    buffers = [b for r in mem.spaces for b in r.buffers]
    offsets = {name: off for r in mem.spaces for name, off in r.plan.offsets.items()}
    nodes = [EMITTERS[type(n.op)](n, st) for n in compute]
    inputs = g.inputs
    model = K.KModel(
        main_mem=max(peak, MAIN_ALIGN), inputs=[st.range(i) for i in inputs],
        input_shapes=[shape4(i.shape) for i in inputs], outputs=[st.range(o) for o in g.outputs],
        constants=st.constants, nodes=nodes)
    model = with_output_shapes(model, [o.shape for o in g.outputs])  # §5 stores none: kmodel/output_record.py
    mem = dataclasses.replace(mem, constants=len(model.constants))  # the record is part of the blob
    outputs = [(name, o.shape) for name, o in zip(output_names, g.outputs)]
    return Emitted(model, [(i.name, i.shape) for i in inputs], outputs,
                   [n.name for n in compute], kpu_peak, buffers, offsets, mem)


__all__ = ["emit", "Emitted", "EMITTERS", "shape4"]
