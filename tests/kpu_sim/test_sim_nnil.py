"""nnil_unary_method (kmodel_v4.md §8.20, §10)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from sim_helpers import F32, run_one

import kcc.kmodel as km
from kcc.errors import SimulatorError

N = km.NnilOpcode


def _asm(*items) -> bytes:
    out = bytearray()
    for item in items:
        if isinstance(item, float):
            out += bytes([N.LDC_R4]) + struct.pack("<f", item)
        else:
            out.append(int(item))
    return bytes(out)


def _run(program: bytes, x: np.ndarray) -> np.ndarray:
    return run_one(lambda ins, out: km.NnilUnaryMethod(input=ins[0], output=out, program=program), [x], F32, x.size)


def test_relu6_of_affine() -> None:
    x = np.linspace(-5, 5, 11, dtype=np.float32)
    prog = _asm(N.LDA_0, 2.0, N.MUL, N.LDC_R4_1, N.ADD, N.LDC_R4_0, 6.0, N.CLAMP, N.RET)
    np.testing.assert_array_equal(_run(prog, x), np.clip(x * 2 + 1, 0, 6))


def test_sigmoid_with_dup_and_unary_ops() -> None:
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    prog = _asm(N.LDC_R4_1, N.LDC_R4_1, N.LDA_0, N.NEG, N.EXP, N.ADD, N.DIV, N.DUP, N.POP, N.RET)
    ref = (np.float32(1) / (np.float32(1) + np.exp(-x.astype(np.float64)).astype(np.float32))).astype(np.float32)
    np.testing.assert_array_equal(_run(prog, x), ref)


def test_bytes_after_ret_are_not_decoded() -> None:
    x = np.array([1.5, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(_run(_asm(N.LDA_0, N.SQUARE, N.RET, 0xFF, 0xEE), x), x * x)


def test_program_without_ret_leaves_the_output_untouched() -> None:
    x = np.array([1.5, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(_run(_asm(N.LDA_0, N.NOP), x), np.zeros(2, np.float32))


@pytest.mark.parametrize(
    "program, message",
    [
        (_asm(N.ADD, N.RET), "underflow"),
        (_asm(0x07, N.RET), "Invalid nnil op 0x07"),
        # 8 program bytes: no body padding follows, so the ldc_r4 operand really is cut short.
        (bytes([N.NOP] * 5 + [N.LDC_R4, 0, 0]), "operand"),
    ],
)
def test_errors_name_the_node(program, message) -> None:
    with pytest.raises(SimulatorError, match=rf"node 0 \(nnil_unary_method\): .*{message}"):
        _run(program, np.ones(3, np.float32))
