"""kpu_live: the KPU RAM alive at each step of a legalized graph, as kcc.emit will pack it."""

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.kmodel import kpu_bytes
from kcc.passes.kpu_live import KpuLive


def _layer(g, x, oc, name, k=1):
    w = g.constant(np.ones((oc, x.shape[1], k, k), np.float32), name + "/w")
    b = g.constant(np.zeros(oc, np.float32), name + "/b")
    return g.add(KO.FloatKpuConv(k), (x, w, b), name)


def test_layers_live_to_their_last_kpu_reader_and_a_concatenation_is_one_buffer():
    """a (8 ch) is read by the KPU layers b and c and by a CPU add; b and c write one concatenation
    (one buffer from b's step to its reader d); the add reads a copy in main memory."""
    g = Graph()
    x = g.input(0, (1, 8, 64, 64))
    a = _layer(g, x, 8, "a")
    b = _layer(g, a, 4, "b")
    c = _layer(g, a, 4, "c")
    cat = g.add(O.Concat(1), (b, c), "cat")
    d = _layer(g, cat, 8, "d")
    g.outputs = [g.add(O.Binary("add"), (a, d), "sum")]
    live = KpuLive(g)
    step = {n.name: i for i, n in enumerate(g.nodes)}
    one = kpu_bytes((1, 1, 64, 64))  # 4096 B a channel at width 64
    want = {"a": 8 * one, "b": 16 * one, "c": 16 * one, "cat": 8 * one, "d": 16 * one, "sum": 0}
    assert {k: live.live[step[k]] for k in want} == want
    # a held in one 16-channel buffer from a to sum instead: its own 8 channels counted once
    assert live.peak_keeping((a,), a, d, 16 * one) == 16 * one + 8 * one + 8 * one
