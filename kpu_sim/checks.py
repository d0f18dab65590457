"""Load-time checks that make a model safe to simulate, on top of `kcc.kmodel.validate`.

`validate` (run by `kcc.kmodel.read`) already checks that every memory range, including the
input and output maps a kpu_conv2d derives from its registers (image_src/dst_addr, sizes and
batches), lies inside its memory. Here come the facts the KPU kernel relies on that the file
format alone does not guarantee; nncase's simulator would read or write out of bounds on them:

* the registers, batch-norm and activation tables encode (an in-memory model may hold values
  that do not fit their bit fields);
* the output size registers equal the pooled input size (`o_row_wid + 1 == in_w / stride`),
  since nncase pools into a buffer sized by the registers;
* a depthwise layer has no more output than input channels (channel o reads input channel o);
* `main_mem_output`, when present, is not in constant memory and holds the N*C*H*W bytes the
  runtime copies there.

Also a simulator limit: main memory above `MAX_MAIN_MEM` is refused (the K210 has 8 MiB).
Every problem is one `KmodelError` line naming the node and the field.
"""

from __future__ import annotations

from kcc.errors import KmodelError
from kcc.kmodel import KModel, KpuConv2D, MemoryType, Opcode
from kpu_sim.kernels.kpu_layer import decode
from kpu_sim.kernels.kpu_pool import pool_output_size

MAX_MAIN_MEM = 256 * 1024 * 1024


def kpu_conv2d_problem(body: KpuConv2D) -> str | None:
    """The first reason the layer cannot be simulated, as 'field X: ...', or None."""
    layer = decode(body)
    pooled_h = pool_output_size(layer.in_h, layer.pool)
    pooled_w = pool_output_size(layer.in_w, layer.pool)
    if layer.out_w != pooled_w:
        return (f"field o_row_wid: output width {layer.out_w} is not the input width {layer.in_w} after "
                f"pool {layer.pool.name.lower()} ({pooled_w})")
    if layer.out_h != pooled_h:
        return (f"field o_col_high: output height {layer.out_h} is not the input height {layer.in_h} after "
                f"pool {layer.pool.name.lower()} ({pooled_h})")
    if layer.depthwise and layer.out_c > layer.in_c:
        return f"field o_ch_num: a depthwise layer with {layer.in_c} input channels cannot have {layer.out_c} outputs"
    out = body.main_mem_output
    if out.size:
        need = layer.batches * layer.out_c * layer.out_h * layer.out_w
        if out.memory_type is MemoryType.CONST:
            return "field main_mem_output: lies in constant memory"
        if out.size < need:
            return f"field main_mem_output: holds {out.size} bytes, the layer writes {need}"
    return None


def check_model(model: KModel) -> None:
    """Raise `KmodelError` if `model` (already validated) cannot be simulated safely."""
    if model.main_mem > MAX_MAIN_MEM:
        raise KmodelError(f"header: main_mem {model.main_mem} exceeds the simulator's limit of {MAX_MAIN_MEM} bytes")
    for index, node in enumerate(model.nodes):
        if node.opcode is not Opcode.KPU_CONV2D:
            continue
        try:
            problem = kpu_conv2d_problem(node.body)
        except KmodelError as exc:  # a field that does not fit its register bits
            problem = str(exc)
        if problem:
            raise KmodelError(f"node {index} ({node.name}): {problem}")
