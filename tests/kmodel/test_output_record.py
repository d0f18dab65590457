"""kcc/kmodel/output_record.py on hand-built kmodels: an output's shape derived from the nodes that write
it, and the record kcc appends to the constants blob only where the nodes do not tell (kmodel v4 stores
no output shapes, kmodel_v4.md §5). `kcc info` on real kmodels is tests/report/test_info_shapes.py."""

from __future__ import annotations

import struct

import kcc.kmodel as km
from kcc.kmodel.output_record import RECORD_MAGIC, output_shape, recorded_shapes, with_output_shapes

F32, MAIN = km.DataType.FLOAT32, km.MemoryType.MAIN


def _two_pieces(h2: int, c2: int = 1) -> km.KModel:
    """Inputs (1,1,2,3) and (1,c2,h2,3); each negated straight into its half of one output range."""
    a, n2 = km.MemoryRange(MAIN, F32, 0, 24), c2 * h2 * 3 * 4
    b = km.MemoryRange(MAIN, F32, 24, n2)
    y = km.MemoryRange(MAIN, F32, 24 + n2, 24 + n2)
    lo, hi = km.MemoryRange(MAIN, F32, y.start, 24), km.MemoryRange(MAIN, F32, y.start + 24, n2)
    nodes = [km.Unary(input=a, output=lo, unary_op=km.UnaryOp.NEG),
             km.Unary(input=b, output=hi, unary_op=km.UnaryOp.NEG)]
    return km.KModel(main_mem=y.end, inputs=[a, b], input_shapes=[(1, 1, 2, 3), (1, c2, h2, 3)], outputs=[y],
                     nodes=nodes)


def test_pieces_that_differ_in_one_axis_join_along_it() -> None:
    model = _two_pieces(h2=4)
    assert output_shape(model, model.outputs[0]) == ((1, 1, 6, 3), "concatenation of nodes 0, 1")
    assert with_output_shapes(model, [(1, 6, 3)]) is model  # the nodes tell: bytes unchanged
    recorded = with_output_shapes(model, [(1, 18)])  # a reshape after the concat: they do not
    assert recorded is not model and recorded_shapes(km.read(km.write(recorded))) == [(1, 1, 1, 18)]
    assert len(recorded.constants) % 8 == 0  # §5: the blob stays a multiple of 8


def test_ambiguous_pieces_are_unknown() -> None:
    same = _two_pieces(h2=2)  # (1,1,2,3) twice: 1x2x2x3, 1x1x4x3 or 2x1x2x3?
    assert output_shape(same, same.outputs[0])[0] is None
    two_axes = _two_pieces(h2=4, c2=2)  # (1,1,2,3) and (1,2,4,3): only a reshape joins them
    assert output_shape(two_axes, two_axes.outputs[0])[0] is None


def test_a_record_that_disagrees_is_ignored() -> None:
    model = _two_pieces(h2=4)
    good = with_output_shapes(model, [(1, 18)]).constants  # no other constants: shape4, then the footer

    def shapes(blob: bytes):
        return recorded_shapes(km.KModel(main_mem=model.main_mem, inputs=model.inputs, outputs=model.outputs,
                                          input_shapes=model.input_shapes, nodes=model.nodes, constants=blob))

    assert shapes(good) == [(1, 1, 1, 18)]
    assert shapes(good[:-16] + struct.pack("<2I", 2, 32) + RECORD_MAGIC) is None  # 2 recorded, 1 output
    bad_dims = struct.pack("<4i", 1, 1, 1, 17) + good[16:]
    assert shapes(bad_dims) is None  # 17 floats != the 72-byte output
    assert shapes(good[:-1] + b"5") is None  # no magic


def test_a_constant_that_looks_like_a_record_is_not_one() -> None:
    model = _two_pieces(h2=4)
    blob = with_output_shapes(model, [(1, 18)]).constants
    used = km.MemoryRange(km.MemoryType.CONST, F32, 0, 4)  # a node reads the record's first bytes
    out = model.outputs[0]
    node = km.Binary(input_a=used, input_b=used, output=km.MemoryRange(MAIN, F32, out.end, 4),
                     binary_op=km.BinaryOp.ADD, in_a_shape=(1, 1, 1, 1), in_b_shape=(1, 1, 1, 1),
                     out_shape=(1, 1, 1, 1), fused_activation=km.ValueRange(-3.4e38, 3.4e38))
    clash = km.KModel(main_mem=out.end + 8, inputs=model.inputs, input_shapes=model.input_shapes,
                      outputs=model.outputs, nodes=[*model.nodes, node], constants=blob)
    assert recorded_shapes(clash) is None
