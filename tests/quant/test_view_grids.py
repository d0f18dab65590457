"""kcc.quant.policy.share_view_grids: the views KPU layers read of one float tensor share its grid,
but for disjoint channel slices (a decomposed depthwise conv's channel groups), each on its own."""

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.quant.policy import share_view_grids


def _float_map(channels=8):
    g = Graph()
    x = g.input(0, (1, channels, 6, 6))
    y = g.add(O.PRelu(), (x, g.constant(np.full((1, channels, 1, 1), 0.25, np.float32))), "y")
    return g, y


def _slice(g, y, c0, c1, name):
    return g.add(O.StridedSlice((0, c0, 0, 0), (1, c1, 6, 6), (1, 1, 1, 1)), (y,), name)


def test_disjoint_channel_slices_keep_their_own_grids():
    g, y = _float_map()
    a, b = _slice(g, y, 0, 4, "a"), _slice(g, y, 4, 8, "b")
    ranges = {"a": (-0.1, 0.2), "b": (-8.0, 5.0)}
    share_view_grids([a, b], ranges, g.users())
    assert ranges == {"a": (-0.1, 0.2), "b": (-8.0, 5.0)}


def test_a_slice_and_the_views_of_its_residual_share_one_grid():
    """The exact forms' residual (QuantResidual) of a slice is taken on the grid the slice is read on."""
    g, y = _float_map()
    a, b = _slice(g, y, 0, 4, "a"), _slice(g, y, 4, 8, "b")
    lost = g.add(KO.QuantResidual(16.0), (a,), "lost")
    padded = g.add(O.Pad(((0, 0), (0, 0), (1, 1), (1, 1)), 0.0), (lost,), "lost_view")
    ranges = {"a": (-0.1, 0.2), "b": (-8.0, 5.0), "lost_view": (-0.01, 0.01)}
    share_view_grids([a, b, padded], ranges, g.users())
    assert ranges == {"a": (-0.1, 0.2), "b": (-8.0, 5.0), "lost_view": (-0.1, 0.2)}


def test_the_tensor_read_whole_or_slices_that_overlap_make_one_grid():
    g, y = _float_map()
    a, b, c = _slice(g, y, 0, 4, "a"), _slice(g, y, 4, 8, "b"), _slice(g, y, 2, 6, "c")
    g.add(KO.FloatKpuConv(1, False), (y, g.constant(np.ones((2, 8, 1, 1), np.float32)),
                                      g.constant(np.zeros(2, np.float32))))  # reads y whole
    ranges = {"a": (-0.1, 0.2), "b": (-8.0, 5.0), "y": (-8.0, 5.0)}
    share_view_grids([a, b, y], ranges, g.users())
    assert set(ranges.values()) == {(-8.0, 5.0)}
    ranges = {"a": (-0.1, 0.2), "b": (-8.0, 5.0), "c": (-1.0, 1.0)}
    share_view_grids([a, b, c], ranges, g.users())
    assert set(ranges.values()) == {(-8.0, 5.0)}


def test_a_tensor_no_kpu_layer_reads_whole_leaves_its_slices_their_grids():
    """A float add is a calibration point as a quantized_binary candidate (kcc.quant.calibration_view)
    whether or not it runs on codes; read by the CPU, its own range is no view's business: its
    channels, sliced for kcc.passes.prelu_tables, keep theirs."""
    g, y = _float_map()
    a, b = _slice(g, y, 0, 4, "a"), _slice(g, y, 4, 8, "b")
    ranges = {"a": (-0.1, 0.2), "b": (-8.0, 5.0), "y": (-8.0, 5.0)}
    share_view_grids([a, b, y], ranges, g.users())
    assert ranges == {"a": (-0.1, 0.2), "b": (-8.0, 5.0), "y": (-8.0, 5.0)}


def test_disjoint_slices_averaged_on_their_grid_make_one_grid():
    """An upsampling's mean layers in channel groups (kcc.passes.kpu_pools) keep their input's grid and
    are concatenated again: their slices of the float take one grid, so that the means make one map."""
    g, y = _float_map()
    a, b = _slice(g, y, 0, 4, "a"), _slice(g, y, 4, 8, "b")
    for s in (a, b):
        eye = g.constant(np.eye(4, dtype=np.float32)[:, :, None, None])
        g.add(KO.FloatKpuConv(1, False, "mean_2_s1"), (s, eye, g.constant(np.zeros(4, np.float32))))
    ranges = {"a": (-0.1, 0.2), "b": (-8.0, 5.0)}
    share_view_grids([a, b], ranges, g.users())
    assert set(ranges.values()) == {(-8.0, 5.0)}
