"""Program-level behaviour: inputs, outputs, KPU inputs, trace hook, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import F32, U8, MainMemory

import kcc.kmodel as km
import kpu_sim
from kcc.errors import KmodelError, SimulatorError

KPU = km.MemoryType.K210_KPU


def _model(nodes, inputs, shapes, outputs, main_mem, constants=b""):
    return km.KModel(
        main_mem=main_mem, inputs=inputs, input_shapes=shapes, outputs=outputs, nodes=nodes, constants=constants
    )


def test_program_describes_inputs_and_outputs() -> None:
    mem = MainMemory()
    x, y = mem.alloc(F32, 6), mem.alloc(F32, 6)
    model = _model([km.Unary(input=x, output=y, unary_op=km.UnaryOp.NEG)], [x], [(1, 1, 2, 3)], [y], mem.top)
    program = kpu_sim.load(km.write(model))
    (inp,), (out,) = program.inputs, program.outputs
    assert (inp.shape, inp.dtype, inp.memory, inp.count) == ((1, 1, 2, 3), np.float32, x, 6)
    assert (out.dtype, out.size, out.count, out.shape) == (np.float32, 24, 6, None)
    result = program.run([np.arange(6).reshape(2, 3)])  # ints are accepted for float inputs
    np.testing.assert_array_equal(result[0], -np.arange(6, dtype=np.float32))
    assert result[0].ndim == 1


def test_kpu_input_is_uploaded_in_kpu_layout_and_trace_sees_every_node() -> None:
    shape = (1, 3, 4, 20)  # W = 20: two channels per 64-byte line
    kin = km.MemoryRange(KPU, U8, 0, km.kpu_bytes(shape))
    mem = MainMemory()
    raw = mem.alloc(U8, kin.size)
    out = mem.alloc(F32, kin.size)
    nodes = [
        km.Transpose(input=kin, output=raw, in_shape=(1, 1, 1, kin.size), perm=(0, 1, 2, 3)),
        km.Dequantize(input=raw, output=out, quant_param=km.QuantParam(0, 1.0)),
    ]
    program = kpu_sim.load(_model(nodes, [kin], [shape], [out], mem.top))
    x = np.random.default_rng(5).integers(0, 256, shape).astype(np.uint8)
    seen = []
    (result,) = program.run([x], trace=lambda i, op, body, outs: seen.append((i, op, [o.dtype for o in outs])))
    expected = np.zeros(kin.size, np.float32)
    expected[km.kpu_offsets(shape).reshape(-1)] = x.reshape(-1)
    np.testing.assert_array_equal(result, expected)
    assert seen == [(0, km.Opcode.TRANSPOSE, [np.uint8]), (1, km.Opcode.DEQUANTIZE, [np.float32])]


def test_each_run_starts_from_clean_memory() -> None:
    mem = MainMemory()
    x, y = mem.alloc(F32, 2), mem.alloc(F32, 4)
    program = kpu_sim.load(_model([km.MemoryCopy(input=x, output=y)], [x], [(1, 1, 1, 2)], [y], mem.top))
    program.run([np.ones(2)])
    np.testing.assert_array_equal(program.run([np.full(2, 3.0)])[0], [3, 3, 0, 0])


def test_every_opcode_is_simulated_and_runtime_errors_name_the_node() -> None:
    assert set(kpu_sim.KERNELS) == set(km.Opcode)
    r = km.MemoryRange(km.MemoryType.MAIN, U8, 0, 4)
    f = km.MemoryRange(km.MemoryType.MAIN, F32, 0, 4)
    body = km.TableLookup1D(input=f, table=r, output=r)  # the runtime returns kcr_error for a float input
    program = kpu_sim.load(_model([body], [r], [(1, 1, 1, 4)], [r], 8))
    with pytest.raises(SimulatorError, match=r"^node 0 \(table_lookup1d\): table_lookup1d input must be uint8"):
        program.run([np.zeros(4, np.uint8)])


def test_input_errors() -> None:
    mem = MainMemory()
    x, y = mem.alloc(U8, 4), mem.alloc(F32, 4)
    node = km.Dequantize(input=x, output=y, quant_param=km.QuantParam(0, 1.0))
    program = kpu_sim.load(_model([node], [x], [(1, 1, 1, 4)], [y], mem.top))
    with pytest.raises(SimulatorError, match="takes 1 inputs, got 2"):
        program.run([np.zeros(4, np.uint8)] * 2)
    with pytest.raises(SimulatorError, match="expected 4 elements"):
        program.run([np.zeros(5, np.uint8)])
    with pytest.raises(SimulatorError, match="expected uint8"):
        program.run([np.full(4, 300)])
    with pytest.raises(SimulatorError, match="expected uint8"):
        program.run([np.zeros(4, np.float32)])


def test_range_too_small_for_the_shape_is_a_simulator_error() -> None:
    mem = MainMemory()
    x, y = mem.alloc(F32, 4), mem.alloc(F32, 2)
    body = km.Binary(input_a=x, input_b=x, output=y, binary_op=km.BinaryOp.ADD,
                     in_a_shape=(1, 1, 1, 4), in_b_shape=(1, 1, 1, 4), out_shape=(1, 1, 1, 4))  # fmt: skip
    program = kpu_sim.load(_model([body], [x], [(1, 1, 1, 4)], [y], mem.top))
    with pytest.raises(SimulatorError, match=r"node 0 \(binary\): needs 16 bytes of main/float32@16\+8"):
        program.run([np.zeros(4)])


def test_load_rejects_bad_files() -> None:
    with pytest.raises(KmodelError, match="not a kmodel"):
        kpu_sim.load(b"hello world, this is not a model at all.")
    with pytest.raises(KmodelError, match="cannot read"):
        kpu_sim.load("/nonexistent/model.kmodel")
