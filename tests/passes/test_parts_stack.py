"""kcc.passes.parts_stack on the graph part_groups leaves: a sum of parts clamped to either side of 0,
alpha times the low ones, read by a residual stack_kpu (9 shifted copies of it and of its rounding
residual, one stacked conv) and by an add."""

import conv_graphs
import numpy as np
import pytest

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import parts_stack
from kcc.passes.manager import CompileContext


def _graph(rng, c: int = 8) -> Graph:
    return conv_graphs.parts_read_by_a_residual_stack(rng, c, 12)


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
