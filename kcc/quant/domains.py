"""The table kcc.quant.quantize builds over the legalized float graph: where each node computes once
quantized (`Domain`) and on which grid (`NodeQuant`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Node
from kcc.quant.params import QuantParam

LAYOUT_OPS = O.LAYOUT_OPS  # data movement (kcc.ir.ops), on uint8 codes as on floats


class Domain(Enum):
    """Where a node of the float graph computes once quantized."""

    FLOAT = "float"  # float32 on the CPU (a KPU layer reading it gets it quantized on its grid)
    KPU = "kpu"  # a KPU layer: uint8 in KPU RAM
    CODES = "codes"  # data movement, pool or concatenation on the uint8 codes of its input, same grid
    UINT8_INPUT = "uint8_input"  # the graph input, given as uint8
    CPU_UINT8 = "cpu_uint8"  # a uint8 matmul, conv, binary or table on the CPU (kcc.quant.cpu_*), codes in main memory


@dataclass(frozen=True)
class NodeQuant:
    domain: Domain
    #: the grid of the node's uint8 form: a KPU layer's output grid, the grid its codes are moved on,
    #: or the calibrated range's; None when the node has no range (it is then never read as uint8)
    grid: QuantParam | None
    layer: KO.QuantKpuLayer | None = None  # a KPU layer's quantized parameters
    matmul: tuple[KO.QuantMatMul, object] | None = None  # a uint8 matmul and its weight codes
    convs: tuple[tuple[KO.QuantConv, object], ...] = ()  # a uint8 conv: its channel runs and their codes
    binary: KO.QuantBinary | None = None  # a uint8 binary op
    table: object = None  # a PReLU channel's 256 output codes (np.ndarray, kcc.quant.cpu_table)


def moves_values(n: Node) -> bool:
    """n only moves its input's values: data movement (LAYOUT_OPS), or a nearest-neighbour resize
    (FPN's and YOLO's x2 upsampling), which runs on uint8 as on float (resize_image, kmodel_v4.md §8.11)."""
    return isinstance(n.op, LAYOUT_OPS) or (isinstance(n.op, O.Resize) and n.op.mode == "nearest")


def copies_of(n: Node) -> Node | None:
    """The tensor concatenation n copies (every part the same node: kcc.passes.phase_dilated's
    broadcasts), else None. Copies move 8-bit codes as they are, on their source's grid."""
    return n.inputs[0] if isinstance(n.op, O.Concat) and len({id(i) for i in n.inputs}) == 1 else None
