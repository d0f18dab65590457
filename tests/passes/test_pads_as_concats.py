"""lower_to_neutral lowers a constant pad to one concatenation per padded axis with constant fill
blocks when the cost model says it is cheaper (nncase's pad: 54 cycles an element, measured; concat:
a memcpy a block), within a model-wide budget of fill bytes; the constants blob holds one fill per
byte value. The kmodel computes the same bytes."""

import numpy as np

from kcc import kmodel
from kcc.emit import emit
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.ir.types import DType
from kcc.passes import lower_to_neutral as L


def _graph(pads: list[tuple], shape=(1, 3, 17, 17), dtype=DType.uint8) -> Graph:
    g = Graph()
    x = g.input(0, shape, dtype)
    g.outputs = [g.add(O.Pad(p, v), (x,), f"pad{k}") for k, (p, v) in enumerate(pads)]
    return g


def test_a_pad_becomes_concatenations_with_shared_fills():
    """A 3x17x17 uint8 map padded top/left by 1 (a stride-2 stem on an odd size) and again by (2, 3)
    with the same value: two concats each (W, then H), no pad node; the blob holds one fill of the
    value, as large as the largest block (3 x 3 x 22 bytes: the second pad's bottom rows), shared by
    every block of that value; the outputs equal numpy's pad."""
    import kpu_sim

    stem = ((0, 0), (0, 0), (1, 0), (1, 0))
    wide = ((0, 0), (0, 0), (2, 3), (2, 3))
    g = L.lower_to_neutral(_graph([(stem, 7), (wide, 7)]))
    assert not any(isinstance(n.op, O.Pad) for n in g.nodes)
    assert sum(isinstance(n.op, O.Concat) for n in g.nodes) == 4
    em = emit(g)
    names = [type(n.body).__name__ for n in em.model.nodes]
    assert names == ["Concat"] * 4, names
    fills = {r for n in em.model.nodes for r in n.body.inputs if r.memory_type == kmodel.MemoryType.CONST}
    assert {r.start for r in fills} == {0} and max(r.size for r in fills) == 3 * 3 * 22  # one fill
    assert len(em.model.constants) < 2 * 3 * 3 * 22
    xi = np.random.default_rng(7).integers(0, 256, (1, 3, 17, 17), dtype=np.uint8)
    got = kpu_sim.load(kmodel.write(em.model)).run([xi])
    for (p, _), o in zip(((stem, 7), (wide, 7)), got):
        np.testing.assert_array_equal(o.reshape(xi.shape[:2] + (-1,)).ravel(),
                                      np.pad(xi, p, constant_values=7).ravel())


def test_pads_stay_where_concatenations_cost_more_or_fills_exceed_the_budget(monkeypatch):
    """A column added to a one-column map is cheaper as nncase's pad (three blocks a row for two
    bytes); pads of distinct values whose fills exceed PAD_FILL_BYTES keep the pad op for the values
    with the least saved per fill byte; float pads are lowered as well."""
    narrow = _graph([(((0, 0), (0, 0), (0, 0), (1, 1)), 0)], shape=(1, 1, 64, 1))
    assert L.pads_as_concats(narrow) == set()
    xi = np.random.default_rng(8).uniform(-1, 1, (1, 7, 24, 24)).astype(np.float32)
    fg = _graph([(((0, 0), (0, 0), (1, 1), (0, 2)), -0.5)], shape=(1, 7, 24, 24), dtype=DType.float32)
    low = L.lower_to_neutral(fg)
    assert not any(isinstance(n.op, O.Pad) for n in low.nodes)
    np.testing.assert_array_equal(run(low, [xi])[0], run(fg, [xi])[0])
    pads = [(((0, 0), (0, 0), (2, 3), (2, 3)), v) for v in range(4)]
    g = _graph(pads, shape=(1, 7, 24, 24))
    assert len(L.pads_as_concats(g)) == 4
    monkeypatch.setattr(L, "PAD_FILL_BYTES", 2 * 7 * 3 * 29)  # room for the fills of two values
    chosen = L.pads_as_concats(g)
    assert len(chosen) == 2
    lowered = L.lower_to_neutral(g)
    assert sum(isinstance(n.op, O.Pad) for n in lowered.nodes) == 2


def test_a_window_of_a_pad_that_keeps_its_input_whole_is_a_pad_of_it():
    """BlazePalm's CPU stacks pad a 24x24 group to 29x29 and crop 26x26 windows at (0, 0), (0, 3),
    (3, 0) and (3, 3): the first keeps all 24x24 (a pad of 2 rows and columns before, none after),
    so lower_to_neutral makes it a pad of the group itself (then concatenations); the others cut
    into the group and stay slices of the pad. The values are the same."""
    g = Graph()
    x = g.input(0, (1, 7, 24, 24), DType.uint8)
    p = g.add(O.Pad(((0, 0), (0, 0), (2, 3), (2, 3)), 9), (x,), "pad")
    g.outputs = [g.add(O.StridedSlice((0, 0, b, c), (1, 7, b + 26, c + 26), (1, 1, 1, 1)), (p,), f"w{b}{c}")
                 for b, c in ((0, 0), (0, 3), (3, 3))]
    folded = L.crop_as_pad(g.outputs[0])
    assert folded == O.Pad(((0, 0), (0, 0), (2, 0), (2, 0)), 9)
    assert L.crop_as_pad(g.outputs[1]) is None and L.crop_as_pad(g.outputs[2]) is None
    low = L.lower_to_neutral(g)
    ops = [type(n.op).__name__ for n in low.nodes if n.name.startswith("w") and not n.is_constant]
    assert ops == ["Concat", "Concat", "StridedSlice", "StridedSlice"], ops
    xi = np.random.default_rng(9).integers(0, 256, (1, 7, 24, 24), dtype=np.uint8)
    for a, b in zip(run(low, [xi]), run(g, [xi])):
        np.testing.assert_array_equal(a, b)


def test_the_fill_budget_goes_by_graph_order_between_equal_pads(monkeypatch):
    """Pads of two values that save as much per fill byte: with room for one fill, the first in the
    graph is lowered, whatever the nodes' ids (the kmodel must not depend on memory addresses)."""
    pads = [(((0, 0), (0, 0), (2, 3), (2, 3)), v) for v in (5, 6)]
    g = _graph(pads, shape=(1, 7, 24, 24))
    monkeypatch.setattr(L, "PAD_FILL_BYTES", 7 * 3 * 29)
    assert L.pads_as_concats(g) == {id(g.outputs[0])}
