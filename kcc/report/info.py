"""`kcc info MODEL.kmodel`: what a kmodel v4 holds, what it needs, and how to call it from MaixPy.

`describe(model_bytes, name)` decodes the file (`kcc.kmodel.read`, so a bad file is one
`KmodelError` line) and returns a JSON-ready dict; `format_text(info)` renders it for people.

Outputs have no shape in the format (kmodel_v4.md §5), yet MaixPy needs one per output
(`kpu.set_outputs(task, i, w, h, ch)`, ecosystem.md §1.6). `output_shapes` reads the output-shape
record kcc leaves in the constants when the nodes alone do not tell, else recovers the shape from the
nodes that write the output range; writer and reader share that rule in kcc/kmodel/output_record.py.
"""

from __future__ import annotations

from typing import Any

from kcc import kmodel as km
from kcc.kmodel.output_record import output_shapes, stated_shape

RUNTIME_ANY = "any nncase v0.2 (kmodel v4) runtime: K210 SDK, MaixPy firmware with kmodel v4 support"
RUNTIME_BETA3 = "needs nncase v0.2.0-beta3+ runtime (MaixPy firmware after 2020-08)"


def _dims(shape: Any) -> str:
    return "x".join(str(int(d)) for d in shape)


def _range(r: km.MemoryRange) -> dict[str, Any]:
    return {"memory": r.memory_type.name.lower(), "datatype": r.datatype.name.lower(), "start": r.start, "size": r.size}


def _memory(model: km.KModel) -> dict[str, Any]:
    """Extents actually touched: main (max end of any main range) and KPU RAM (max end of any KPU range)."""
    ranges = list(model.inputs) + list(model.outputs)
    for node in model.nodes:
        ranges += node.body.ranges().values()
    main_end = max((r.end for r in ranges if r.memory_type is km.MemoryType.MAIN and r.size), default=0)
    kpu_end = max((r.end for r in ranges if r.memory_type is km.MemoryType.K210_KPU and r.size), default=0)
    return {
        "main_mem": model.main_mem,
        "main_used": main_end,
        "constants": len(model.constants),
        "kpu_peak": kpu_end,
        "kpu_capacity": km.KPU_RAM_SIZE,
    }


def _maixpy(index: int, shape: tuple[int, int, int, int] | None, count: int) -> str:
    """The `kpu.set_outputs(task, index, w, h, ch)` line. MaixPy checks only w*h*ch*4 == the output's
    bytes and hands back the flat output memory (ecosystem.md §1.6), so any factorisation runs; the
    line keeps the innermost axis as w and the next as h, for every rank: the shape is NCHW
    front-padded with 1s (kmodel_v4.md §3.3), so a 1x896x16 output (896 anchors of 16 values) is
    1x1x896x16 -> w 16, h 896, ch 1, and 1x1001 scores -> w 1001, h 1, ch 1, as a 4-D conv output
    1x125x7x10 -> w 10, h 7, ch 125 (N x C folded into ch)."""
    if shape is None:
        return (f"# output {index}: shape unknown ({count} elements); "
                f"kpu.set_outputs(task, {index}, w, h, ch) with w*h*ch = {count}")
    n, c, h, w = shape
    return f"kpu.set_outputs(task, {index}, {w}, {h}, {n * c})"


def node_summary(body: km.Body) -> str:
    """One line of the key parameters of a node."""
    if isinstance(body, km.KpuConv2D):
        lay = body.layer
        parts = [(f"{lay.in_channels}x{lay.in_height}x{lay.in_width} -> "
                 f"{lay.out_channels}x{lay.out_height}x{lay.out_width}"),
                 f"{lay.filter_size}x{lay.filter_size}"]
        if lay.depth_wise_layer:
            parts.append("depthwise")
        parts.append(f"pool {lay.pool_type.name.lower()}")
        if body.batches != 1:
            parts.append(f"batches {body.batches}")
        parts.append(f"KPU @{lay.image_src_addr * 64} -> @{lay.image_dst_addr * 64}")
        if body.main_mem_output.size:
            parts.append(f"+ main @{body.main_mem_output.start}")
        return ", ".join(parts)
    if isinstance(body, km.KpuUpload):
        return f"{_dims(body.in_shape)} main @{body.input.start} -> KPU @{body.output.start}"
    if isinstance(body, (km.Quantize, km.Dequantize)):
        q = body.quant_param
        return f"{body.input.count} elements, zero point {q.zero_point}, scale {q.scale:.6g}"
    if isinstance(body, km.Transpose):
        return f"{_dims(body.in_shape)} perm {_dims(body.perm)}"
    if isinstance(body, (km.Binary, km.QuantizedBinary)):
        return f"{body.binary_op.name.lower()} {_dims(body.in_a_shape)}, {_dims(body.in_b_shape)} -> {_dims(body.out_shape)}"
    if isinstance(body, km.Concat):
        return f"{len(body.inputs)} inputs, dims {list(body.dims)}, outer {body.outer_size}, inner {body.inner_size} B"
    if isinstance(body, (km.Conv2D, km.QuantizedConv2D)):
        return (f"{_dims(body.in_shape)} -> {body.out_channels} ch, {body.filter_h}x{body.filter_w}, "
                f"stride {body.stride_h}x{body.stride_w}, groups {body.groups}")
    if isinstance(body, (km.CpuConv2D, km.CpuQuantizedConv2D)):
        return f"NHWC {_dims(body.in_shape)} -> {body.out_channels} ch, {body.filter_h}x{body.filter_w}"
    if isinstance(body, (km.CpuDepthwiseConv2D, km.CpuQuantizedDepthwiseConv2D)):
        return f"NHWC {_dims(body.in_shape)} depthwise {body.filter_h}x{body.filter_w}"
    if isinstance(body, (km.MatMul, km.QuantizedMatMul)):
        return f"{body.a_rows}x{body.a_cols} @ {body.a_cols}x{body.b_cols}"
    if isinstance(body, (km.Reduce, km.ReduceWindow2D)):
        return f"{body.reduce_op.name.lower()} {_dims(body.in_shape)}"
    if isinstance(body, km.Pad):
        pads = ",".join(f"{p.before}/{p.after}" for p in body.paddings)
        return f"{_dims(body.in_shape)} pad {pads}"
    if isinstance(body, km.Unary):
        return f"{body.unary_op.name.lower()}, {body.input.count} elements"
    if isinstance(body, km.TableLookup1D):
        return f"{body.input.size} bytes through a {body.table.size}-byte table"
    if isinstance(body, km.MemoryCopy):
        return f"{body.input.size} bytes"
    if isinstance(body, km.ResizeImage):
        return f"{body.mode.name.lower()} {_dims(body.in_shape)} -> {body.out_h}x{body.out_w}"
    if isinstance(body, km.StridedSlice):
        return f"{_dims(body.in_shape)} begin {_dims(body.begin)} end {_dims(body.end)} strides {_dims(body.strides)}"
    if isinstance(body, km.Softmax):
        return f"{body.outer_size} rows of {body.inner_size}"
    shape = stated_shape(body)
    return f"-> {_dims(shape)}" if shape else ""


def describe(model_bytes: bytes, name: str) -> dict[str, Any]:
    """Decode a kmodel v4 and describe it. Raises `KmodelError` (one line) for a bad file."""
    model = km.read(model_bytes, name=name)
    opcodes = sorted({n.opcode for n in model.nodes})
    beta3 = [op.kmodel_name for op in opcodes if op in km.BETA3_OPCODES]
    nodes = []
    warnings = []
    for i, node in enumerate(model.nodes):
        unit = "KPU" if node.opcode is km.Opcode.KPU_CONV2D else "CPU"
        nodes.append({"index": i, "opcode": node.name, "code": f"0x{int(node.opcode):04x}", "unit": unit,
                      "summary": node_summary(node.body)})
        if isinstance(node.body, km.KpuConv2D):
            warnings += [f"node {i} (kpu_conv2d): {p}" for p in km.layer_problems(node.body)]
    inputs = [dict(index=i, **_range(r), shape=list(s)) for i, (r, s) in enumerate(zip(model.inputs, model.input_shapes))]
    outputs = []
    for i, (r, (shape, source)) in enumerate(zip(model.outputs, output_shapes(model))):
        outputs.append(dict(index=i, **_range(r), shape=list(shape) if shape else None, shape_from=source,
                            maixpy=_maixpy(i, shape, r.size // r.datatype.itemsize)))
    kpu_layers = sum(n.opcode is km.Opcode.KPU_CONV2D for n in model.nodes)
    return {
        "file": name,
        "bytes": len(model_bytes),
        "header": {"version": 4, "flags": model.flags, "target": model.target.name.lower(),
                   "constants": len(model.constants), "main_mem": model.main_mem, "nodes": len(model.nodes),
                   "inputs": len(model.inputs), "outputs": len(model.outputs)},
        "inputs": inputs,
        "outputs": outputs,
        "nodes": nodes,
        "ops": {op.kmodel_name: sum(n.opcode is op for n in model.nodes) for op in opcodes},
        "kpu_layers": kpu_layers,
        "memory": _memory(model),
        "runtime": {"beta3_opcodes": beta3, "needs": RUNTIME_BETA3 if beta3 else RUNTIME_ANY},
        "warnings": warnings,
    }


def _kib(n: int) -> str:
    return f"{n} B ({n / 1024:.1f} KiB)"


def _io_line(item: dict[str, Any]) -> str:
    shape = "x".join(map(str, item["shape"])) if item["shape"] else "shape unknown"
    return f"  {item['index']}: {shape} {item['datatype']} in {item['memory']} @{item['start']} ({item['size']} B)"


def format_text(info: dict[str, Any]) -> str:
    """The human-readable report of `describe()`."""
    h, mem = info["header"], info["memory"]
    lines = [
        f"{info['file']}: kmodel v{h['version']}, target {h['target']}, {info['bytes']} bytes",
        f"  {h['nodes']} nodes ({info['kpu_layers']} KPU layers), {h['inputs']} input(s), {h['outputs']} output(s)",
        "",
        "INPUTS (NCHW)",
        *(_io_line(i) for i in info["inputs"]),
        "OUTPUTS (NCHW)",
    ]
    for o in info["outputs"]:
        lines.append(_io_line(o) + (f"  <- {o['shape_from']}" if o["shape_from"] else ""))
    lines += ["", "NODES"]
    width = len(str(max(len(info["nodes"]) - 1, 0)))
    name_width = max((len(n["opcode"]) for n in info["nodes"]), default=0)
    for n in info["nodes"]:
        lines.append(f"  {n['index']:>{width}}  {n['unit']}  {n['opcode']:<{name_width}}  {n['summary']}")
    lines += [
        "",
        "MEMORY",
        f"  main memory: {_kib(mem['main_mem'])} (ranges reach {mem['main_used']} B)",
        f"  KPU RAM peak: {_kib(mem['kpu_peak'])} of {_kib(mem['kpu_capacity'])}",
        f"  constants: {mem['constants']} B",
        "",
        "RUNTIME",
        f"  {info['runtime']['needs']}"
        + (f" (uses {', '.join(info['runtime']['beta3_opcodes'])})" if info["runtime"]["beta3_opcodes"] else ""),
        "",
        "MAIXPY",
        *(f"  {o['maixpy']}" for o in info["outputs"]),
    ]
    if info["warnings"]:
        lines += ["", "WARNINGS (register fields that differ from what ncc derives)"]
        lines += [f"  {w}" for w in info["warnings"]]
    return "\n".join(lines)
