"""kcc.passes.parts_stack on the graph part_groups leaves: a sum of parts clamped to either side of 0,
alpha times the low ones, read by a residual stack_kpu (9 shifted copies of it and of its rounding
residual, one stacked conv) and by an add."""

import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import parts_stack
from kcc.passes.kernel_forms import shift_weights
from kcc.passes.manager import CompileContext

SHIFTS = [(cy, cx) for cy in (-1, 0, 1) for cx in (-1, 0, 1)]


def _graph(rng, c: int = 8) -> Graph:
    g = Graph()
    x = g.input(0, (1, 3, 12, 12))
    w = g.constant(rng.uniform(-0.5, 0.5, (c, 3, 3, 3)).astype(np.float32), "w")
    parts = [g.add(O.Conv2D(padding=((1, 1), (1, 1)), act=act), (x, w, g.constant(np.full(c, b, np.float32), f"b{i}")),
                   f"part{i}")
             for i, (act, b) in enumerate([((-np.inf, 0.0), 0.3), ((-0.3, 0.0), 0.0), ((0.0, 0.3), 0.0), ((0.0, np.inf), -0.3)])]
    low = g.add(O.Binary("add"), parts[:2], "low")
    alpha = g.constant(rng.uniform(-1.5, 1.5, (1, c, 1, 1)).astype(np.float32), "alpha")
    y = g.add(O.Binary("add"), (g.add(O.Binary("add"), (g.add(O.Binary("mul"), (low, alpha), "neg"), parts[2]), "s1"),
                                parts[3]), "prelu")
    zero = g.constant(np.zeros(c, np.float32), "zero")

    def copies(src, tag):
        return [g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), (1, 1), c), (src, g.constant(shift_weights(c, s), f"{tag}w{k}"), zero),
                      f"{tag}{k}") for k, s in enumerate(SHIFTS)]

    lost = g.add(KO.QuantResidual(16.0), (y,), "residual")
    views = copies(lost, "r") + copies(y, "s")
    ws = np.zeros((c, 9 * c, 3, 3), np.float32)
    for v in range(9):
        ws[np.arange(c), v * c + np.arange(c)] = rng.uniform(-0.4, 0.4, (c, 3, 3))
    stk = g.add(O.Concat(1), tuple(views), "stack")
    sc = g.add(O.Conv2D(padding=((1, 1), (1, 1))), (stk, g.constant(np.concatenate([ws / 16, ws], axis=1), "ws"),
                                                    g.constant(rng.uniform(-0.1, 0.1, c).astype(np.float32), "bs")), "dw")
    g.outputs = [g.add(O.Binary("add"), (y, sc), "add")]
    return g


@pytest.mark.parametrize("step", [8, 3])
def test_the_stack_reads_the_parts_and_the_add_their_recombination(monkeypatch, step):
    rng = np.random.default_rng(5)
    g = _graph(rng)
    monkeypatch.setattr(parts_stack, "sub_group", lambda c, h, w: step)
    subs = -(-8 // step)
    samples = [[rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32)] for _ in range(3)]
    ctx = CompileContext(CompileOptions(), samples=samples)
    out = parts_stack.parts_stack(g, ctx)
    out.verify("parts_stack")
    x = rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(run(out, [x])[0], run(g, [x])[0], rtol=1e-5, atol=1e-5)
    # every part turned >= 0 and stretched to the widest one's reach on the samples: one grid for all
    parts = [n for n in out.nodes if n.name.startswith("part")]
    seen = {}
    run(out, samples[0], lambda n, v: seen.__setitem__(n.name, v) if n.name.startswith("part") else None)
    reach = [float(np.max(seen[p.name])) for p in parts if p.name.endswith("/p0")]
    assert min(float(np.min(v)) for v in seen.values()) >= 0.0
    assert max(reach) / min(reach) < 1.5, reach
    assert len(ctx.phase_classes) == subs and all(len(c) == 4 + 1 + 4 + 1 for c in ctx.phase_classes)  # parts, their concatenation, fans, stack
    kinds = [n.op.kind for n in out.nodes]
    assert "quant_residual" not in kinds and kinds.count("binary") == 1  # the add alone: no sums, no product
    fans = [n for n in out.nodes if "/fan" in n.name]
    assert len(fans) == 4 * subs and all(n.inputs[0].name.startswith("part") for n in fans)
    assert all(n.shape[1] == 9 * n.inputs[0].shape[1] for n in fans)  # one layer makes a part's nine copies
    add = out.outputs[0]
    assert [i.op.kind for i in add.inputs] == ["concat" if subs > 1 else "conv2d"] * 2


def test_parts_without_a_residual_stack_are_left_as_they_are():
    rng = np.random.default_rng(6)
    g = _graph(rng)
    y = next(n for n in g.nodes if n.name == "prelu")
    g.outputs = [g.add(O.Pool2D("mean", (12, 12), (12, 12)), (y,), "mean")]
    g.remove_dead()
    assert parts_stack.parts_stack(g) is g
