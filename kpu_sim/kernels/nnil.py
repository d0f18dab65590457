"""nnil_unary_method (kmodel_v4.md §8.20, §10): a float32 stack machine run once per element.

The program has no branches, so every element executes the same instruction sequence: the
interpreter decodes the program once and runs it over the whole input as vector operations.
Errors the runtime raises when it reaches them (stack under/overflow, unknown op) are raised
here the same way, and only if there is at least one element.
"""

from __future__ import annotations

import struct

import numpy as np

from kcc.errors import SimulatorError
from kcc.kmodel import NnilOpcode, NnilUnaryMethod
from kcc.kmodel.spec import NNIL_STACK_DEPTH
from kpu_sim.kernels.fp32 import F32, UNARY_FUNCTIONS, c_clamp, c_max, c_min
from kpu_sim.memory import Memory

_BINARY = {
    NnilOpcode.ADD: lambda a, b: a + b,
    NnilOpcode.SUB: lambda a, b: a - b,
    NnilOpcode.MUL: lambda a, b: a * b,
    NnilOpcode.DIV: lambda a, b: a / b,
    NnilOpcode.MIN: c_min,
    NnilOpcode.MAX: c_max,
}


def decode(program: bytes) -> list[tuple[NnilOpcode, float | None]]:
    """Instructions up to and including the first `ret` (or to the end of the body)."""
    out: list[tuple[NnilOpcode, float | None]] = []
    pos = 0
    while pos < len(program):
        byte = program[pos]
        pos += 1
        try:
            op = NnilOpcode(byte)
        except ValueError:
            raise SimulatorError(f"Invalid nnil op 0x{byte:02x} at program offset {pos - 1}") from None
        operand = None
        if op is NnilOpcode.LDC_R4:
            if pos + 4 > len(program):
                raise SimulatorError(f"nnil ldc_r4 at program offset {pos - 1} is missing its 4-byte operand")
            operand = struct.unpack_from("<f", program, pos)[0]
            pos += 4
        out.append((op, operand))
        if op is NnilOpcode.RET:
            break
    return out


def run(program: bytes, x: np.ndarray) -> np.ndarray | None:
    """Evaluate the program on every element of `x`; None if it never reaches `ret`."""
    stack: list[np.ndarray] = []

    def push(value: np.ndarray) -> None:
        if len(stack) >= NNIL_STACK_DEPTH:
            raise SimulatorError("nnil stack overflow")
        stack.append(np.asarray(value, dtype=F32))

    def pop() -> np.ndarray:
        if not stack:
            raise SimulatorError("nnil stack underflow")
        return stack.pop()

    for op, operand in decode(program):
        if op is NnilOpcode.NOP:
            continue
        if op is NnilOpcode.DUP:
            if not stack:
                raise SimulatorError("nnil dup on an empty stack")
            push(stack[-1])
        elif op is NnilOpcode.POP:
            pop()
        elif op is NnilOpcode.LDA_0:
            push(x)
        elif op is NnilOpcode.LDC_R4_0:
            push(F32(0.0))
        elif op is NnilOpcode.LDC_R4_1:
            push(F32(1.0))
        elif op is NnilOpcode.LDC_R4:
            push(F32(operand))
        elif op in _BINARY:
            b, a = pop(), pop()
            push(_BINARY[op](a, b))
        elif op is NnilOpcode.CLAMP:
            high, low, v = pop(), pop(), pop()
            push(c_clamp(v, low, high))
        elif op is NnilOpcode.RET:
            return np.broadcast_to(pop(), x.shape).astype(F32)
        else:  # the unary ops 0x20..0x29
            push(UNARY_FUNCTIONS[op.name.lower()](pop()))
    return None


def nnil_unary_method(mem: Memory, body: NnilUnaryMethod) -> None:
    """count = input.size / 4; elements whose program ends without `ret` are left unwritten."""
    x = mem.read(body.input, F32)
    if x.size == 0:
        return
    result = run(body.program, x)
    if result is not None:
        mem.write(body.output, result)
