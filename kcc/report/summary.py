"""What `kcc compile` tells a user once the kmodel is written, and the same facts for `--report`.

* every layer left on the CPU and why, in words (`placements`: a pool's reason names the KPU limit
  it misses, found on the legalized graph, kcc.passes.legalize_kpu);
* where the estimated board time on the CPU goes, whatever the op (`cpu_work`): each kmodel node's
  CPU time (kcc.latency) is charged to the model op whose tensor the node computes or serves
  (kcc.alloc.names.model_name), and grouped by that op's type as the model names it (PRELU, ADD, ...);
* inputs and outputs under the model's own names (`outputs`), not the names of kcc's own tensors;
* whether the kmodel and its working memory fit a K210 at all (`too_large`: an error on the command
  line), and the firmware budgets they exceed (`fit_warnings`), with the largest items (`device_items`).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kcc import kmodel as km
from kcc.alloc.names import model_name, short_name
from kcc.alloc.report import mib, over_budgets
from kcc.errors import ModelTooLargeError
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import shift_copy
from kcc.ir.graph import Graph, Node
from kcc.kmodel.spec import HEADER_SIZE, MEMORY_RANGE_SIZE, NODE_HEADER_SIZE, SHAPE_SIZE
from kcc.latency import LatencyEstimate
from kcc.passes.decompose_kernels import Status
from kcc.passes.global_mean import NOTE as GLOBAL_MEAN_NOTE
from kcc.target.k210 import MAIN_MEMORY_SIZE

#: what the CPU does for a KPU layer: pre-pad and upload its input, copy its output out of KPU RAM,
#: crop it and dequantize it for a CPU op (kmodel_v4.md §8, kpu_semantics.md §3)
AROUND_KPU = "KPU layer in/out"
#: a conv kcc.passes.decompose_kernels put on the KPU as 3x3 terms (its CPU time: views, adds, copies)
AS_TERMS = "conv as 3x3 KPU terms"
#: the frontend notes each imported node with its tflite builtin op (kcc.ir.graph.Node.note)
_TFLITE_OP = re.compile(r"[A-Z][A-Z0-9_]*")
#: most groups `cpu_lines` shows, and the smallest share of the total it shows one with
SHOWN_GROUPS, MIN_SHARE = 5, 0.01
#: every model op whose CPU time is above this is named in the compile summary (issue #16 item 6)
NAMED_OP_MS = 1.0
#: the width the lines listing those ops are wrapped at
LINE_WIDTH = 110
#: the flag that writes a kmodel too large for any K210 anyway
OVERSIZE_FLAG = "--allow-oversize"
#: the flag that writes the kmodel as MaixPy's kpu.load_flash reads it (kcc.cli.commands.flash_layout)
FLASH_FLAG = "--flash-kmodel"
#: node bodies that carry a layer's weights (kmodel_v4.md §9-§11)
WEIGHT_BODIES = (km.KpuConv2D, km.Conv2D, km.Conv2DTranspose, km.MatMul, km.QuantizedConv2D,
                 km.QuantizedMatMul, km.CpuConv2D, km.CpuDepthwiseConv2D, km.CpuQuantizedConv2D, km.CpuQuantizedDepthwiseConv2D)
#: the window shapes of the KPU's pool unit (kpu_semantics.md §3 step 5, kcc.ir.kpu_ops.KPU_POOLS)
KPU_POOL_UNIT = ("2x2 stride 2 or 4x4 stride 4 without padding (4x4 on a map of multiples of 4), "
                 "2x2 stride 1 padded right and bottom, or one of these windows covering the whole map")
GENERIC_POOL_REASON = "pool not fused into a KPU layer"


@dataclass(frozen=True)
class CpuWork:
    """CPU time charged to the model ops of one type."""

    kind: str  # the model's op type ('PRELU', 'ADD', 'MAX_POOL_2D'), AROUND_KPU, or a kmodel opcode
    ms: float
    share: float  # of the whole estimated latency
    ops: tuple[tuple[str, float], ...]  # (model tensor name, ms), most time first
    opcodes: tuple[str, ...]  # the kmodel opcodes this time is spent in, most time first

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ms": round(self.ms, 3), "share": round(self.share, 4),
                "ops": [{"name": n, "ms": round(ms, 3)} for n, ms in self.ops], "opcodes": list(self.opcodes)}


def _graph(result) -> Graph:
    """The graph whose node names and notes are the model's: the legalized float graph (uint8),
    else the emitted one (--inference-type float)."""
    return result.float_graph if result.float_graph is not None else result.graph


def known_names(result) -> set[str]:
    """Names that are the model's own for sure: imported ops (their note is the tflite op), inputs
    and outputs of the model."""
    g = _graph(result)
    return {n.name for n in g.nodes if n.note} | {n.name for n in g.inputs} | {n.name for n in g.outputs}


def outputs(result) -> list[tuple[str, tuple[int, ...]]]:
    """The kmodel outputs under the model's names (the emitted graph may name an output after the
    dequantize kcc adds behind a KPU layer)."""
    em = result.emitted.outputs
    g = _graph(result)
    if len(g.outputs) == len(em):
        return [(o.name, shape) for o, (_, shape) in zip(g.outputs, em)]
    known = known_names(result)
    return [(model_name(name, known), shape) for name, shape in em]


def _kind(node: Node | None, kpu: set[str], decomposed: set[str]) -> str | None:
    if node is None:
        return None
    if node.name in decomposed:
        return AS_TERMS
    if isinstance(node.op, (KO.FloatKpuConv, KO.QuantKpuLayer)) or node.name in kpu:
        return AROUND_KPU
    if isinstance(node.op, O.Input):
        return "model input"
    return node.note if _TFLITE_OP.fullmatch(node.note) else node.op.kind


def cpu_work(result, est: LatencyEstimate) -> list[CpuWork]:
    """The estimated CPU time of every kmodel node, grouped by the model op type it serves, most first."""
    g = _graph(result)
    by_name = {n.name: n for n in g.nodes}
    known = known_names(result)
    kpu = {p.node for p in result.placements if p.on_kpu}
    # the model convs decompose_kernels put on the KPU as 3x3 terms, as it decided them
    decomposed = {d.node for d in result.decisions if d.status is Status.DECOMPOSED}
    kpu |= {model_name(p.node, known) for p in result.placements if p.on_kpu}
    names = result.emitted.node_names
    groups: dict[str, dict[str, Any]] = {}
    for n in est.nodes:
        if n.cpu_ms <= 0 or n.index >= len(names):
            continue
        op = model_name(names[n.index], known)
        kind = _kind(by_name.get(op), kpu, decomposed) or n.opcode
        grp = groups.setdefault(kind, {"ms": 0.0, "ops": {}, "opcodes": {}})
        grp["ms"] += n.cpu_ms
        grp["ops"][op] = grp["ops"].get(op, 0.0) + n.cpu_ms
        grp["opcodes"][n.opcode] = grp["opcodes"].get(n.opcode, 0.0) + n.cpu_ms
    total = est.total_ms or 1.0
    work = [CpuWork(kind, grp["ms"], grp["ms"] / total,
                    tuple(sorted(grp["ops"].items(), key=lambda kv: -kv[1])),
                    tuple(k for k, _ in sorted(grp["opcodes"].items(), key=lambda kv: -kv[1])))
            for kind, grp in groups.items()]
    return sorted(work, key=lambda w: -w.ms)


def cpu_lines(work: list[CpuWork], est: LatencyEstimate, examples: int = 3) -> list[str]:
    """The lines the compile summary prints about where the CPU time goes: the costliest groups, and
    every group with an op over NAMED_OP_MS, which names each such op (the rest as examples)."""
    shown = [w for i, w in enumerate(work) if (i < SHOWN_GROUPS and w.share >= MIN_SHARE)
             or any(ms > NAMED_OP_MS for _, ms in w.ops)] or work[:1]
    if not shown:
        return []
    out = [f"Estimated CPU time by model op ({est.cpu_ms:.1f} of {est.total_ms:.1f} ms; "
           f"every op over {NAMED_OP_MS:g} ms named):"]
    width = max(len(w.kind) for w in shown)
    for w in shown:
        named = [(n, ms) for n, ms in w.ops if ms > NAMED_OP_MS] or list(w.ops[:examples])
        items = [f"{short_name(n, 40)} {ms:.1f} ms" for n, ms in named]
        rest = len(w.ops) - len(named)
        if rest:
            items.append(f"+{rest} more of at most {NAMED_OP_MS:g} ms")
        head = (f"  {w.kind:<{width}} {len(w.ops):>4} op(s) {w.ms:9.1f} ms {100 * w.share:5.1f}%  "
                f"as {', '.join(w.opcodes)}: ")
        out += _wrapped(head, items, " " * 6)
    return out


def _wrapped(head: str, items: list[str], indent: str) -> list[str]:
    """`head` then the comma-separated `items`, onto lines of at most LINE_WIDTH characters (an item
    longer than a line gets one of its own)."""
    lines, line = [], head.rstrip()
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if len(line) + 1 + len(piece) > LINE_WIDTH:
            lines.append(line)
            line = indent + piece
        else:
            line += " " + piece
    return lines + [line]


# --------------------------------------------------------------------------- fit in device RAM
def device_items(result) -> list[tuple[str, int]]:
    """(what, bytes) of what the K210 holds for this model, largest first: per model op, its node
    bodies in the kmodel file (a conv's weights are inlined there) and the constants its nodes read
    from the constants blob (a matmul's weights, binary operands), the rest of the blob, and the
    working-memory buffers alive at its peak: together the file + working memory the runtime needs
    (kmodel_v4.md §5, §6, §7.1)."""
    data = result.kmodel
    _, _, _, _, n_const, _, n_nodes, n_in, n_out, _ = struct.unpack_from("<10I", data)
    # the node headers follow the input ranges and shapes, the output ranges and the constants (§3, §6.1)
    pos = HEADER_SIZE + (MEMORY_RANGE_SIZE + SHAPE_SIZE) * n_in + MEMORY_RANGE_SIZE * n_out + n_const
    sizes = [struct.unpack_from("<2I", data, pos + NODE_HEADER_SIZE * i)[1] for i in range(n_nodes)]
    em = result.emitted
    known = known_names(result)
    by_op: dict[str, list] = {}  # op -> [bytes, carries weights, reads constants]
    counted: set[tuple[int, int]] = set()  # constant ranges already charged (a constant may be shared)
    for i, size in enumerate(sizes):
        op = model_name(em.node_names[i], known) if i < len(em.node_names) else f"node {i}"
        body = em.model.nodes[i].body
        consts = {(r.start, r.size) for r in body.input_ranges().values()
                  if r.memory_type is km.MemoryType.CONST and r.size} - counted
        counted |= consts
        entry = by_op.setdefault(op, [0, False, False])
        entry[0] += size + sum(n for _, n in consts)
        entry[1] |= isinstance(body, WEIGHT_BODIES)
        entry[2] |= bool(consts)
    items = [(f"{'weights of' if w else 'constants of' if c else 'node'} '{short_name(op, 50)}'", size)
             for op, (size, w, c) in by_op.items()]
    rest = n_const - sum(n for _, n in counted)
    if rest > 0:
        items.append(("the rest of the constants blob", rest))
    if em.memory is not None:
        items += [(f"working memory '{name}'", size) for name, size in em.memory.peak_items()]
    return sorted(items, key=lambda kv: -kv[1])


def device_ram(result) -> int:
    """Bytes of RAM the runtime needs: the whole kmodel file plus its working memory (§7.1)."""
    return len(result.kmodel) + result.emitted.model.main_mem


def _need(result, limit: str, shown: int = 4) -> str:
    """'the kmodel needs X of device RAM, more than <limit> (kmodel + working memory); largest: ...'"""
    items = ", ".join(f"{what} {mib(size)}" for what, size in device_items(result)[:shown])
    return (f"the kmodel needs {mib(device_ram(result))} of device RAM, more than {limit} (kmodel "
            f"{mib(len(result.kmodel))} + working memory {mib(result.emitted.model.main_mem)}); "
            f"largest: {items}")


def too_large(result) -> ModelTooLargeError | None:
    """The error for a kmodel that cannot run on any K210: file + working memory over the chip's
    6 MiB of main memory (kcc.target.k210.MAIN_MEMORY_SIZE); None when it fits."""
    if device_ram(result) <= MAIN_MEMORY_SIZE:
        return None
    return ModelTooLargeError(
        _need(result, f"the K210's {mib(MAIN_MEMORY_SIZE)} of main memory"),
        hint=f"shrink the model (fewer channels, a smaller input), or pass {OVERSIZE_FLAG} to write it "
             "anyway")


def fit_warnings(result) -> list[str]:
    """`warning:` lines for a kmodel over the K210's main memory (written with OVERSIZE_FLAG) or
    over the usual firmwares' budgets (kcc.alloc.report.BUDGETS)."""
    need = device_ram(result)
    if need > MAIN_MEMORY_SIZE:
        return [f"warning: written with {OVERSIZE_FLAG}, but no K210 can run it: "
                + _need(result, f"the K210's {mib(MAIN_MEMORY_SIZE)} of main memory")]
    over = over_budgets(need)
    if not over:
        return []
    spent = getattr(result, "ram_for_speed", 0)
    smaller = (f"; or --ram-budget maixpy: {spent / 1024:.0f} KiB of it are weights of faster KPU forms, "
               "which kcc leaves out for more CPU time" if spent and need - spent <= over[-1][1] else "")
    return ["warning: " + _need(result, " or ".join(f"{name}'s {mib(budget)}" for name, budget in over))
            + f"; MaixPy's kpu.load_flash can stream it from flash instead: {FLASH_FLAG} FILE writes the "
              "byte order it reads" + smaller]


# --------------------------------------------------------------------------- placement reasons
def _pool_shape_problem(p: O.Pool2D) -> str:
    fh, fw = p.filter
    sh, sw = p.stride
    what = f"{fh}x{fw} window, stride {sh}" + (f"x{sw}" if sw != sh else "")
    if p.padding != ((0, 0), (0, 0)):
        what += ", padded"
    if p.act != O.NO_CLAMP:
        what += ", with a fused activation (the pool unit has none)"
    return f"its {what} is not one the KPU's pool unit has ({KPU_POOL_UNIT})"


def _source(x: Node) -> str:
    if isinstance(x.op, O.Input):
        return "the model input"
    return f"{x.note or x.op.kind} '{short_name(model_name(x.name))}'"


def pool_reason(pool: Node, g: Graph, users: dict) -> str:
    """Why the legalized graph `g` keeps `pool` on the CPU. The KPU pools only inside a layer, the
    output of the conv it follows (kpu_semantics.md §3 step 5), and kcc fuses a pool only behind a
    non-depthwise conv placed as it is (1x1/3x3 'same', stride 1, no pre-pad or crop) whose output
    nothing else reads (kcc.passes.legalize_kpu)."""
    x = pool.inputs[0]
    if pool.note.startswith(GLOBAL_MEAN_NOTE):  # the CPU part of a global mean on the KPU
        return pool.note
    if isinstance(x.op, KO.FloatKpuConv):
        layer = f"'{short_name(model_name(x.name))}'"
        if shift_copy(x) is not None and x.op.pool != "bypass":  # kcc.passes.row_pick's pick layer
            return (f"the stride-2 conv before it, {layer}, is a KPU layer at stride 1 whose odd rows a "
                    f"copy layer picks, with the pool unit ({x.op.pool})")
        if x.op.pool != "bypass":
            return f"the layer before it, {layer}, already uses the pool unit ({x.op.pool})"
        if x.op.depthwise:
            return f"the layer before it, {layer}, is depthwise (kcc, like ncc, never pools one)"
        if len(users.get(x, ())) > 1 or any(o is x for o in g.outputs):
            return f"the output of the layer before it, {layer}, is also read unpooled"
        return _pool_shape_problem(pool.op)
    if isinstance(x.op, O.StridedSlice) and isinstance(x.inputs[0].op, KO.FloatKpuConv):
        conv = short_name(model_name(x.name))
        return (f"the conv before it, '{conv}', is cropped on the CPU after the KPU (it is not a stride-1 "
                f"'same' conv), and the pool unit only pools a layer's whole output")
    return (f"its input comes from {_source(x)} on the CPU, and the KPU only pools the output of the conv "
            f"layer it is fused behind")


def placements(result, est: LatencyEstimate | None = None) -> list:
    """`result.placements`, the reason of every pool left on the CPU in words (`pool_reason`); with
    `est`, a concatenation or channel slice between KPU layers left on the CPU also gives the CPU time
    charged to it (its concatenation or slice, quantize and upload, as `cpu_work` counts them), and so does a KPU layer with
    a CPU pre-pad or crop around it (with its upload and copy-out)."""
    g = result.float_graph
    if g is None:
        return list(result.placements)
    by_name = {n.name: n for n in g.nodes}
    users = g.users()
    cost: dict[str, float] = {}
    uint8_runs: dict[str, int] = {}  # conv -> its uint8 CPU conv nodes (kcc.quant.cpu_conv)
    if est is not None:
        known = known_names(result)
        names = result.emitted.node_names
        for n in est.nodes:
            if n.cpu_ms > 0 and n.index < len(names):
                op = model_name(names[n.index], known)
                cost[op] = cost.get(op, 0.0) + n.cpu_ms
                if n.opcode == "quantized_conv2d":
                    uint8_runs[op] = uint8_runs.get(op, 0) + 1
    out = []
    for p in result.placements:
        node = by_name.get(p.node)
        if not p.on_kpu and p.reason.startswith(GENERIC_POOL_REASON) and node is not None \
                and isinstance(node.op, O.Pool2D):
            kind = "max" if node.op.op == "max" else "mean"
            p = replace(p, reason=f"{kind} pool in float on the CPU: {pool_reason(node, g, users)}")
        elif not p.on_kpu and p.node in uint8_runs:
            p = replace(p, reason=f"{p.reason}; runs on uint8 codes (nncase's quantized_conv2d, "
                                  f"{uint8_runs[p.node]} node(s) by weight range), {cost[p.node]:.2f} ms estimated")
        elif not p.on_kpu and p.op in ("concat", "strided_slice") and p.node in cost:
            p = replace(p, reason=f"on the CPU, {cost[p.node]:.2f} ms estimated: {p.reason}")
        elif p.on_kpu and ("pre-pad" in p.reason or "on CPU" in p.reason) and cost.get(p.node, 0.0) > 0:
            # the CPU work legalize put around a KPU layer (issue #16 item 2: which op, why, what it costs)
            p = replace(p, reason=f"{p.reason}; {cost[p.node]:.2f} ms estimated on the CPU around the layer")
        out.append(p)
    return out


# --------------------------------------------------------------------------- the compile summary
def compile_lines(result, est: LatencyEstimate, memory_table: bool = False,
                  report_dir: Path | None = None) -> list[str]:
    """Everything `kcc compile` prints after the kmodel is written, ending with ncc's SUMMARY block."""
    em = result.emitted
    out = []
    if result.placements:
        on_kpu = sum(1 for p in result.placements if p.on_kpu)
        out.append(f"KPU: {on_kpu} layer(s); CPU fallbacks: {len(result.placements) - on_kpu}")
        out += [f"  CPU  {p.op:<8} {short_name(p.node, 80)}: {p.reason}"
                for p in placements(result, est) if not p.on_kpu]
    out.append(f"Working memory usage: {em.model.main_mem} B")
    out.append(f"Constants: {len(em.model.constants)} B, nodes: {len(em.model.nodes)}, "
               f"kmodel: {len(result.kmodel)} B")
    if em.memory is not None:
        out += em.memory.summary_lines(len(result.kmodel)) + (em.memory.table_lines() if memory_table else [])
    out += fit_warnings(result)
    out.append(est.summary())
    out += cpu_lines(cpu_work(result, est), est)
    if report_dir is not None:
        out.append(f"Report: {report_dir / 'report.md'}")
    out += ["", "SUMMARY", "INPUTS"]
    out += [f"{i}\t{name}\t{'x'.join(map(str, shape))}" for i, (name, shape) in enumerate(em.inputs)]
    out.append("OUTPUTS")
    out += [f"{i}\t{name}\t{'x'.join(map(str, shape))}" for i, (name, shape) in enumerate(outputs(result))]
    return out
