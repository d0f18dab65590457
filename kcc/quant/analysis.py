"""analysis: each node's domain and grid for kcc.quant.quantize (its first step).

`analyze` decides, per node of the calibrated float graph and in its topological order, where the
node computes (`Domain`: float on the CPU, codes moved on the CPU, a KPU layer, uint8 CPU kernels)
and on which grid (`NodeQuant`), with each KPU layer's parameters; kcc.quant.quantize's rewriter
then builds the quantized graph from that table. The rules are in kcc.quant.quantize's docstring.
"""


from __future__ import annotations

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.code_moves import averages_codes, keeps_grid, shift_copy
from kcc.ir.graph import Graph, Node, channel_values
from kcc.passes.kernel_cost import uint8_conv
from kcc.passes.prelu_tables import uint8_prelu
from kcc.quant.cpu_binary import quant_binary, uint8_binary
from kcc.quant.cpu_conv import clamp_holds, quant_convs
from kcc.quant.cpu_matmul import quant_matmul, uint8_matmul
from kcc.quant.cpu_table import prelu_table
from kcc.quant.domains import Domain, NodeQuant, copies_of, moves_values
from kcc.quant.floors import floor_bias, floor_debts
from kcc.quant.kpu_params import LayerRanges, kpu_layer
from kcc.quant.kpu_ram import batch_part
from kcc.quant.params import GridRange, QuantParam, range_param
from kcc.quant.weight_rounding import InputMoments

Ranges = dict[str, tuple[float, float]]


def _required(n: Node, q: QuantParam | None) -> QuantParam:
    if q is None:
        raise KeyError(f"no calibrated range for '{n.name}'")
    return q


def analyze(g: Graph, ranges: Ranges, input_u8: bool, moments: InputMoments | None = None,
            turn_channels: bool = True, pre_activations: dict[str, str] | None = None,
            uint8_binaries: bool = True) -> dict[Node, NodeQuant]:
    """Each node's domain and grid, in one pass over g's topological order (module docstring).

    A node moves uint8 codes (CODES) when its input does and the grid is kept: data movement of a
    uint8 tensor; a pool without clamp whose range is its input's grid; a concatenation of uint8
    tensors on one grid (kcc.quant.policy.share_concat_grids) that its own range, if any, agrees with.
    A binary op between KPU layers computes on codes (kcc.quant.cpu_binary) unless `uint8_binaries`
    is off (ncc's --no-quantized-binary); a PReLU of one channel (kcc.passes.prelu_tables) through a
    table on its input's codes, on its own grid or the grid they move on (kcc.quant.cpu_table)."""
    by_layer = moments.layers if moments is not None else {}
    pre = pre_activations or {}
    table: dict[Node, NodeQuant] = {}

    def on_codes(n: Node) -> bool:
        return table[n].domain in (Domain.KPU, Domain.CODES, Domain.UINT8_INPUT, Domain.CPU_UINT8)

    def own_grid(n: Node) -> QuantParam | None:
        return range_param(ranges[n.name]) if n.name in ranges else None

    users = g.users()
    outputs = {id(o) for o in g.outputs}

    def kpu_read(n: Node) -> bool:  # read as codes by KPU layers only (kcc.quant.cpu_binary)
        return id(n) not in outputs and all(isinstance(u.op, KO.FloatKpuConv) for u in users[n])

    # a KPU layer that writes rows of another's map in place is on that map's grid (KpuRowPatch)
    patched_map = {id(p): r.inputs[0] for r in g.nodes if isinstance(r.op, KO.KpuRowPatch) for p in r.inputs[1:]}
    debts, paid = floor_debts(g, users)
    for n in g.nodes:
        op = n.op
        if isinstance(op, KO.KpuRowPatch):
            table[n] = NodeQuant(Domain.CODES, _required(n.inputs[0], table[n.inputs[0]].grid))
            continue
        if isinstance(op, KO.FloatKpuConv) and isinstance(n.inputs[0].op, (KO.KpuStack, KO.KpuChannelPatch)):
            x, w, b = n.inputs
            if isinstance(x.op, KO.KpuStack):
                stack = [(_required(p, table[p].grid), p.shape[1]) for p in x.inputs]
            else:  # the map's channels before c0 on its grid, the patch's after (KpuChannelPatch)
                m, part = x.inputs
                stack = [(_required(m, table[m].grid), x.op.c0), (_required(part, table[part].grid), part.shape[1])]
            z = ranges[n.name]
            layer = kpu_layer(op, w.data, b.data, LayerRanges(stack[-1][0], z, z), stack=stack)
            table[n] = NodeQuant(Domain.KPU, QuantParam(*layer.out_q), layer)
            continue
        if isinstance(op, KO.FloatKpuConv):
            x, w, b = n.inputs
            z = ranges[n.name]
            y = ranges[pre[n.name]] if n.name in pre else z
            x_grid = _required(x, table[x].grid)
            if keeps_grid(n) and range_param(z) != x_grid:
                # a shifted copy moves codes, an identity mean averages them, only on its input's grid
                # (kcc.quant.policy.copy_grids)
                z = y = GridRange(*x_grid.real_range, x_grid)
            if id(n) in patched_map:
                grid = _required(patched_map[id(n)], table[patched_map[id(n)]].grid)
                z = y = GridRange(*grid.real_range, grid)
            x_bias = 0.0 if averages_codes(n) else floor_bias(x, paid)
            r = LayerRanges(x_grid, y, z, x_bias, debts.get(id(n), 0.0))
            layer = kpu_layer(op, w.data, b.data, r, by_layer.get(n.name), turn_channels)
            table[n] = NodeQuant(Domain.KPU, QuantParam(*layer.out_q), layer)
            continue
        if uint8_matmul(n) and n.name in ranges:
            x = n.inputs[0]
            y_q = _required(n, own_grid(n))
            table[n] = NodeQuant(Domain.CPU_UINT8, y_q, matmul=quant_matmul(n, _required(x, table[x].grid), y_q))
            continue
        if uint8_binaries and uint8_binary(n) and n.name in ranges and clamp_holds(n, own_grid(n)) and kpu_read(n):
            grids = [table[i].grid if on_codes(i) or i.type.size < n.type.size else None for i in n.inputs]
            op = (quant_binary(n, *grids, own_grid(n))
                  if None not in grids and any(on_codes(i) for i in n.inputs) else None)
            if op is not None:
                table[n] = NodeQuant(Domain.CPU_UINT8, own_grid(n), binary=op)
                continue
        if uint8_prelu(n) and n.name in ranges:  # a PReLU channel through a table (kcc.quant.cpu_table)
            x = n.inputs[0]
            x_q = table[x].grid if on_codes(x) else own_grid(x)
            if x_q is not None:
                slope = float(channel_values(x, n.inputs[1])[0])
                y_q = _required(n, own_grid(n))
                table[n] = NodeQuant(Domain.CPU_UINT8, y_q, table=prelu_table(slope, x_q, y_q))
                continue
        # a conv left on the CPU, on its input's codes (kcc.quant.cpu_conv; [] keeps the float conv)
        x_q = table[n.inputs[0]].grid if uint8_conv(n) and on_codes(n.inputs[0]) else None
        convs = (quant_convs(n, x_q, own_grid(n), by_layer.get(n.name))
                 if x_q is not None and n.name in ranges and clamp_holds(n, own_grid(n)) else [])
        if convs:
            table[n] = NodeQuant(Domain.CPU_UINT8, own_grid(n), convs=tuple(convs))
            continue
        codes = False
        if isinstance(op, O.Input):
            table[n] = NodeQuant(Domain.UINT8_INPUT if input_u8 else Domain.FLOAT, own_grid(n))
            continue
        if isinstance(op, KO.KpuChannelPatch):  # two grids, read by one 1x1 layer as a stack
            if table[n.inputs[0]].domain is not Domain.KPU:
                raise KeyError(f"kpu_channel_patch '{n.name}': its map is not a KPU layer's output")
            table[n] = NodeQuant(Domain.CODES, None)
            continue
        if isinstance(op, KO.KpuBatchStack):  # each batch keeps its group's grid, all with one zero point
            grids = [table[p].grid if on_codes(p) else own_grid(p) for p in n.inputs]
            if None in grids or len({q.zero_point for q in grids}) != 1:
                raise KeyError(f"kpu_batch_stack '{n.name}': its parts are not on grids of one zero point")
            if not all(isinstance(u.op, KO.FloatKpuConv) and keeps_grid(u) for u in users[n]):
                raise KeyError(f"kpu_batch_stack '{n.name}': read by a layer that does not copy codes")
            table[n] = NodeQuant(Domain.CODES, grids[0])  # its copying layer is the same on any of them
            continue
        if (part := batch_part(n)) is not None:  # batch j of a batched fan: group j's grid
            table[n] = NodeQuant(Domain.CODES, table[part].grid if on_codes(part) else own_grid(part))
            continue
        if isinstance(op, KO.KpuStack):  # each part keeps its grid: only its 1x1 layer reads it
            # a part of the CPU is uploaded on its grid (kcc.passes.table_stream's skip groups)
            if not all(table[p].domain is Domain.KPU or table[p].grid is not None for p in n.inputs):
                raise KeyError(f"kpu_stack '{n.name}': a part is neither a KPU layer's output nor on a grid")
            table[n] = NodeQuant(Domain.CODES, None)
            continue
        if moves_values(n):
            codes = on_codes(n.inputs[0])
        elif isinstance(op, O.Pool2D) and op.act == O.NO_CLAMP and n.name in ranges:
            x = n.inputs[0]
            codes = on_codes(x) and table[x].grid is not None and own_grid(n) == table[x].grid
        elif isinstance(op, O.Concat) and all(on_codes(i) for i in n.inputs):
            grids = {table[i].grid for i in n.inputs}
            # shifted copies are on their input's grid whatever their (and so the concat's) ranges say
            copies = all(shift_copy(i) is not None for i in n.inputs)
            # along pixels or batches, a concatenation holds its parts' values on their grid (phase_dilated's
            # packed maps and broadcasts)
            codes = None not in grids and len(grids) == 1 and (copies or n.op.axis != 1 or n.name not in ranges
                                                               or {own_grid(n)} == grids)
        elif isinstance(op, O.Concat) and any(table[i].domain is Domain.KPU for i in n.inputs):
            # KPU layers and float CPU convs all on the concatenation's grid (policy.share_concat_grids):
            # the convs are quantized onto it, and uploaded into their channel ranges in KPU RAM
            def cpu_conv(i: Node) -> bool:  # a float conv, or copies of one (a broadcast): quantized once
                return cpu_conv(copies_of(i)) if copies_of(i) is not None else isinstance(i.op, O.Conv2D)
            grids = {table[i].grid for i in n.inputs}
            codes = (len(grids) == 1 and {own_grid(n)} == grids
                     and all(on_codes(i) or cpu_conv(i) for i in n.inputs))
        if codes:
            table[n] = NodeQuant(Domain.CODES, table[n.inputs[0]].grid)
        else:
            table[n] = NodeQuant(Domain.FLOAT, own_grid(n))
    return table
