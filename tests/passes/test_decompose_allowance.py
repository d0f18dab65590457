"""decompose_kernels' model allowance (`allot`): the kmodel bytes beyond each conv's own cap that
stacks made in KPU RAM may take, spent where they save the most estimated time per byte."""

from types import SimpleNamespace

import numpy as np

from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes import decompose_kernels as D
from kcc.passes import kernel_budget
from kcc.passes import kernel_cost as KC
from kcc.passes import kernel_plans as P
from kcc.passes.manager import CompileContext

rng = np.random.default_rng(17)


def _two_dw5x5(channels=(32, 24), hw=12):
    """1x1 -> 5x5 depthwise (relu6) -> 1x1 -> 5x5 depthwise -> 1x1, every 5x5 read from and by KPU layers."""
    g = Graph()
    x = g.input(0, (1, 8, hw, hw))
    for i, c in enumerate(channels):
        x = g.add(O.Conv2D(act=(0.0, 6.0)), (x, g.constant(rng.uniform(-1, 1, (c, x.shape[1], 1, 1)).astype(np.float32)),
                                             g.constant(rng.uniform(-1, 1, c).astype(np.float32))), f"expand{i}")
        x = g.add(O.Conv2D((1, 1), ((2, 2), (2, 2)), groups=c, act=(0.0, 6.0)),
                  (x, g.constant(rng.uniform(-1, 1, (c, 1, 5, 5)).astype(np.float32)),
                   g.constant(rng.uniform(-1, 1, c).astype(np.float32))), f"dw{i}")
    g.outputs = [g.add(O.Conv2D(), (x, g.constant(rng.uniform(-1, 1, (4, x.shape[1], 1, 1)).astype(np.float32)),
                                    g.constant(np.zeros(4, np.float32))), "head")]
    return g


def test_the_model_allowance_goes_to_the_most_time_saved_per_byte(monkeypatch):
    """A stack made in KPU RAM that needs more than STACK_KPU_BYTES takes it from the model's
    allowance (MODEL_KPU_BYTES, `allot`), which goes to the convs that save the most estimated time
    per extra kmodel byte and is never overspent; without it each conv keeps the form it had."""
    monkeypatch.setattr(P, "STACK_KPU_BYTES", 16 * 1024)  # 24 or 32 channels' stack_kpu no longer fits in it
    kpu_made = ("stack_kpu", "fan_kpu", "copies_kpu")
    state = rng.bit_generator.state

    def compile_with(budget):
        rng.bit_generator.state = state  # the same weights every time
        g = _two_dw5x5()
        ctx = CompileContext(kpu_form_budget=budget)
        D.decompose_kernels(g, ctx)
        return {d.node: d for d in ctx.decisions}, ctx.kpu_form_spent

    none, spent = compile_with(0)
    assert spent == 0 and none.keys() == {"dw0", "dw1"}
    assert all(d.plan is not None and d.plan.combine not in kpu_made for d in none.values())
    for budget in (24 * 1024, 64 * 1024, 1 << 20):
        some, spent = compile_with(budget)
        assert spent <= budget
        assert all(d.plan.combine in kpu_made and d.cycles < none[d.node].cycles
                   for d in some.values() if d.plan != none[d.node].plan)
    assert all(d.plan.combine in kpu_made for d in some.values()) and spent > 0  # 1 MiB: both
    # the ranking: room for the extra bytes of one of the two, the one saving more time per byte
    rng.bit_generator.state = state
    g = _two_dw5x5()
    at = {n: KC.surroundings(g.find(n), g.users(), {id(o) for o in g.outputs}) for n in ("dw0", "dw1")}
    cap = 1 << 20
    candidates = [(g.find(n), D.choose(g.find(n), at=at[n]), [(cap, D.choose(g.find(n), at=at[n], cap=cap))])
                  for n in ("dw0", "dw1")]
    opts = CompileOptions()
    extra = {n.name: KC.kmodel_bytes(n, big.plan, opts) - KC.kmodel_bytes(n, small.plan, opts)
             for n, small, ((_, big),) in candidates}
    gain = {n.name: (small.cycles - big.cycles) / extra[n.name] for n, small, ((_, big),) in candidates}
    best = max(gain, key=gain.get)
    assert gain["dw0"] != gain["dw1"] and max(extra.values()) < sum(extra.values()) - 1
    assert D.allot(candidates, opts, max(extra.values())) == ({best: cap}, extra[best])
    assert D.allot(candidates, opts, sum(extra.values())) == ({"dw0": cap, "dw1": cap}, sum(extra.values()))
    assert D.allot(candidates, opts, min(extra.values()) - 1) == ({}, 0)


def test_the_allowance_climbs_each_convs_ladder_by_time_saved_per_byte(monkeypatch):
    """`allot` takes, step by step, the rung of some conv's ladder (its decisions within rising caps)
    that saves the most time per extra byte: a budget that buys the first rung of two convs goes to
    both, not to the top rung of one (BlazeHand's wide 5x5s: a `fan_kpu` in small groups for each
    rather than in large groups for one, the others left on the CPU)."""
    size = {}

    def decision(name, cycles, nbytes):
        plan = D.Form((1, 1), (0, 0), "fan_kpu", nbytes)  # a distinct plan per rung (group: its bytes)
        size[(name, plan)] = nbytes
        return D.Decision(name, D.Status.DECOMPOSED, plan, cycles, 1000.0, "")

    monkeypatch.setattr(kernel_budget, "kmodel_bytes", lambda n, plan, opts: size.get((n.name, plan), 0))
    nodes = {k: SimpleNamespace(name=k) for k in ("a", "b")}
    kept = {k: D.Decision(k, D.Status.KEPT, None, 1000.0, 1000.0, "") for k in nodes}
    ladders = {"a": [(100, decision("a", 100.0, 100)), (300, decision("a", 60.0, 300))],
               "b": [(120, decision("b", 150.0, 120)), (400, decision("b", 90.0, 400))]}
    candidates = [(nodes[k], kept[k], ladders[k]) for k in ("a", "b")]
    opts = CompileOptions()
    assert D.allot(candidates, opts, 220) == ({"a": 100, "b": 120}, 220)  # both first rungs
    assert D.allot(candidates, opts, 99) == ({}, 0)
    assert D.allot(candidates, opts, 150) == ({"a": 100}, 100)  # 9 cycles a byte, b's first 7.1
    # then the top rungs, b's first (60 cycles for 280 bytes against 40 for 200), if it fits
    assert D.allot(candidates, opts, 420) == ({"a": 300, "b": 120}, 420)
    assert D.allot(candidates, opts, 1000) == ({"a": 300, "b": 400}, 700)


# ------------------------------------------------------------------ phases_kpu: stride phases made by the KPU
