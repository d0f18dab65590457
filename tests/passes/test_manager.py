"""The pass driver: stages run in order over one context, rewrites are verified, dumped and seen by
the hook, and an error names the stage that raised it."""

import numpy as np
import pytest

from kcc.errors import DatasetError
from kcc.ir import ops as O
from kcc.ir.graph import Graph
from kcc.options import CompileOptions
from kcc.passes.manager import CompileContext, PassManager, Stage
from kcc.pipeline import compile_graph, stages


def _graph() -> Graph:
    g = Graph()
    x = g.input(0, (1, 2, 4, 4))
    g.outputs = [g.add(O.Binary("add"), (x, g.constant(np.ones((1, 2, 4, 4), np.float32))), "y")]
    return g


def test_rewrites_are_dumped_and_hooked_in_order_and_analyses_are_not(tmp_path):
    seen = []

    def analysis(g, ctx):
        ctx.ranges["y"] = (0.0, 1.0)
        return g

    manager = PassManager(tmp_path, after=lambda name, g: seen.append((name, len(g.nodes))))
    ctx = CompileContext()
    g = manager.run([Stage("first", lambda g, ctx: g), Stage("look", analysis, rewrites=False),
                     Stage("second", lambda g, ctx: g)], _graph(), ctx)
    assert manager.names == ["first", "second"] and seen == [("first", 3), ("second", 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01-first.dot", "01-first.txt", "02-second.dot",
                                                         "02-second.txt"]
    assert ctx.ranges == {"y": (0.0, 1.0)} and [n.name for n in g.nodes][-1] == "y"


def test_a_kcc_error_keeps_its_class_and_hint_and_names_the_stage():
    def bad(g, ctx):
        raise DatasetError("the calibration dataset is empty", hint="add pictures")

    with pytest.raises(DatasetError) as e:
        PassManager().run([Stage("calibrate", bad)], _graph(), CompileContext())
    assert str(e.value) == "the calibration dataset is empty" and e.value.kcc_stage == "calibrate"
    assert e.value.one_line() == "the calibration dataset is empty (hint: add pictures)"  # the user's terms


def test_an_internal_error_keeps_its_class_and_cause_and_gets_a_note():
    def bug(g, ctx):
        try:
            {}["missing"]
        except KeyError as k:
            raise ValueError("bad shape") from k

    with pytest.raises(ValueError) as e:
        PassManager().run([Stage("lower_to_neutral", bug)], _graph(), CompileContext())
    assert str(e.value) == "bad shape" and e.value.__notes__ == ["in stage lower_to_neutral"]
    assert isinstance(e.value.__cause__, KeyError)


def test_a_failing_verify_names_the_stage_once():
    def broken(g, ctx):
        g.outputs[0].inputs = g.outputs[0].inputs[::-1] + (g.outputs[0],)  # reads itself
        return g

    with pytest.raises(Exception, match=r"^IR verify after stage 'broken': "):
        PassManager().run([Stage("broken", broken)], _graph(), CompileContext())


def test_the_pipeline_reads_as_its_stages():
    k210 = ["canonicalize", "weights_range", "load_samples", "grouped_as_dense", "phase_dilated", "global_mean_sums", "split_channels",
            "eliminate_dilated_conv", "lower_transpose_conv", "concat_activations", "decompose_kernels", "part_groups", "parts_stack", "form_activations", "legalize_kpu", "global_mean_codes", "prelu_tables", "table_stream", "calibrate", "quantize",
            "lower_to_neutral", "emit"]
    assert [s.name for s in stages(CompileOptions())] == k210
    assert [s.name for s in stages(CompileOptions(inference_type="float"))] == \
        ["canonicalize", "weights_range", "lower_to_neutral", "emit"]
    # a uint8 compile without samples or dataset stops where the samples are loaded, and says so
    with pytest.raises(DatasetError, match="^--dataset is required"):
        compile_graph(_graph(), CompileOptions())
