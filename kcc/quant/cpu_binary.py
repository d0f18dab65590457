"""A binary op left on the CPU, on uint8 codes: nncase's quantized_binary (issue #16 item 3).

A residual add the KPU does not take, or a squeeze-excite gate (x * s, s per channel), used to run in
float: its operands dequantized (4 bytes an element), the result quantized again for the next KPU
layer. nncase's quantized_binary (kmodel_v4.md §8.17) computes on the codes in int32 and rounds once:

    a' = mcs(a - z_a, m_a, k_a),  b' = mcs(b - z_b, m_b, k_b),  v = op(a', b')
    y  = clamp(mcs(v, m_y, k_y) + z_y, 0, 255)        mcs(v, m, k) = (v * m + 2^(k-1)) >> k

    mul        a' = a - z_a, b' = b - z_b exactly; v = a' b' (|v| <= 255^2); m_y 2^-k_y ~ s_a s_b / s_y
    add, sub,  both onto a common step s_c = min(s_a, s_b) / 2^e, e as large as keeps |a' +- b'| in
    min, max   int32 (at most 2^20): a' ~ (a - z_a) s_a / s_c, rounded to s_c (2^-e of the finer
               input step); m_y 2^-k_y ~ s_c / s_y

(s: a grid's step, 1/QuantParam.scale). Every multiplier m < 2^31 and |v| m + 2^(k-1) < 2^63: the
kernel's int64 product does not overflow. The fused activation must be no tighter than the output
grid (cpu_conv.clamp_holds): the clamp to codes 0..255 is the only one the kernel does.
"""

from __future__ import annotations

import math

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Node
from kcc.ir.types import DType, TensorType
from kcc.passes.lower_to_neutral import repeats
from kcc.quant.params import QuantParam

OPS = ("add", "sub", "mul", "min", "max")
#: at most 2^COMMON_BITS of the common step in an operand of add/sub/min/max (module docstring)
COMMON_BITS = 20
MUL_BITS = 31  # multipliers below 2^31 (int32)


def uint8_binary(n: Node) -> bool:
    """n is an op quantized_binary computes: two non-constant 4-D operands, of n's shape or (a gate)
    one that lower_to_neutral repeats to it (nncase's broadcasting loop costs more than the float op)."""
    return (isinstance(n.op, O.Binary) and n.op.op in OPS and len(n.inputs) == 2 and n.type.rank == 4
            and not any(i.is_constant for i in n.inputs)
            and all(i.shape == n.shape or repeats(TensorType(i.shape, DType.uint8), n.shape, "quantized_binary")
                    for i in n.inputs))


def _fixed(value: float) -> tuple[int, int] | None:
    """(m, k) with m 2^-k ~ value > 0, m < 2^31 with 30 or 31 significant bits, k in 0..62."""
    _, e = math.frexp(value)  # value = f 2^e, f in [0.5, 1)
    k = min(MUL_BITS - e, 62)
    if k < 0:
        return None
    m = round(value * 2.0 ** k)
    if m >= 1 << MUL_BITS:
        m, k = round(value * 2.0 ** (k - 1)), k - 1
    return (m, k) if m > 0 else None


def quant_binary(n: Node, a_q: QuantParam, b_q: QuantParam, y_q: QuantParam) -> KO.QuantBinary | None:
    """The QuantBinary computing binary n from operands on grids a_q, b_q to its output grid y_q
    (module docstring); None where the grids are too far apart for int32."""
    s_a, s_b, s_y = 1.0 / a_q.scale, 1.0 / b_q.scale, 1.0 / y_q.scale
    op = n.op.op
    if op == "mul":
        out = _fixed(s_a * s_b / s_y)
        a, b = (-a_q.zero_point, 1, 0), (-b_q.zero_point, 1, 0)
    else:
        ratio = max(s_a, s_b) / min(s_a, s_b)
        e = min(COMMON_BITS, math.floor(math.log2(2.0 ** COMMON_BITS / ratio)))
        if e < 0:
            return None
        s_c = min(s_a, s_b) / 2.0 ** e
        fa, fb, out = _fixed(s_a / s_c), _fixed(s_b / s_c), _fixed(s_c / s_y)
        if fa is None or fb is None:
            return None
        a, b = (-a_q.zero_point, *fa), (-b_q.zero_point, *fb)
    if out is None:
        return None
    return KO.QuantBinary(op, a, b, (y_q.zero_point, *out), (y_q.zero_point, y_q.scale))
