"""The memory plan of a kmodel v4 (emit step 2): buffer lifetimes over the node order, packed with
`kcc.alloc` into main memory (8-byte aligned, kmodel_v4.md §7.1) and KPU RAM (64-byte lines, §7.2).
"""

from __future__ import annotations

from kcc import kmodel as K
from kcc.alloc import Buffer, MemoryReport, plan_memory
from kcc.emit.storage import KPU_ALIGN, MAIN_ALIGN, Storage, in_kpu_ram, shape4
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node


def plan(g: Graph, st: Storage, compute: list[Node], solve_secs: float) -> MemoryReport:
    """Lifetimes over the compute order, then packing of main memory and of KPU RAM.

    A kpu_download has no node of its own: its producer layer writes it (main_mem_output), so it is
    born at the producer's step. Graph inputs are born before the first node, outputs live to the end.
    Each space gets `plan_memory`'s best deterministic plan (CP-SAT budget `solve_secs`).
    """
    step = {id(n): i for i, n in enumerate(compute)}
    for n in g.nodes:
        if isinstance(n.op, KO.KpuDownload):
            step[id(n)] = step[id(n.inputs[0])]
    last = len(compute)
    birth: dict[int, int] = {}
    death: dict[int, int] = {}
    base_of: dict[int, Node] = {}
    for n in g.nodes:
        b = st.base(n)
        if b.is_constant:
            continue
        base_of[id(b)] = b
        if isinstance(b.op, O.Input):
            birth[id(b)] = -1
        elif id(n) in step:  # an in-place concatenation is born with its first block
            birth[id(b)] = min(step[id(n)], birth.get(id(b), step[id(n)]))
        death.setdefault(id(b), birth.get(id(b), -1))
    for n in compute:
        for i in n.inputs:
            b = st.base(i)
            if id(b) in death:
                death[id(b)] = max(death[id(b)], step[id(n)])
    for o in g.outputs:
        b = st.base(o)
        if id(b) in death:
            death[id(b)] = last
    main, kpu = [], []
    for k in birth:
        node = base_of[k]
        if in_kpu_ram(node, st):
            kpu.append(Buffer(node.name, K.kpu_bytes(shape4(node.shape)), birth[k], death[k]))
        else:
            main.append(Buffer(node.name, node.type.nbytes, birth[k], death[k]))
    names = [n.name for n in compute]
    main_res = plan_memory(main, align=MAIN_ALIGN, solve_secs=solve_secs, step_names=names)
    kpu_res = plan_memory(kpu, align=KPU_ALIGN, solve_secs=solve_secs, capacity=K.KPU_RAM_SIZE,
                          space="KPU RAM", step_names=names)
    for k, b in base_of.items():
        if in_kpu_ram(b, st):
            st.kpu_offset[k] = kpu_res.plan.offsets[b.name]
        else:
            st.main_offset[k] = main_res.plan.offsets[b.name]
    return MemoryReport(main_res, len(st.constants), tuple(names), kpu_res if kpu else None)
