"""Ranges of a pre-quantized model's quantization points, from the model itself (kcc.quant.prequantized).

Why: without a dataset, every point `quantize` needs (graph input, each KPU layer's input, output
and pre-activation) must get exactly the tflite grid of the tensor it stands for, although
legalization renamed or wrapped some of them (`X/kpu`, `X/kpu_pad`, `L/pre_act`).
"""

from __future__ import annotations

import numpy as np
import pytest
import refkit
from quantized_models import conv_logistic, mobilenet_block

import kcc.passes.legalize_kpu as legalize_module
from kcc.errors import DatasetError
from kcc.frontend import import_model
from kcc.frontend.quantization import ModelQuantization, TensorQuant
from kcc.ir import kpu_ops as KO
from kcc.options import CompileOptions
from kcc.passes import row_pick
from kcc.passes.canonicalize import canonicalize
from kcc.passes.legalize_kpu import legalize_kpu
from kcc.passes.manager import CompileContext
from kcc.quant.calibration_view import calibration_view
from kcc.quant.params import GridRange, get_quant_param, range_param
from kcc.quant.prequantized import grid_range, model_ranges, target_param


def _points(data: bytes, own_grids: bool = False):
    imported = import_model(data)
    g = legalize_kpu(canonicalize(imported.graph), CompileContext(CompileOptions(), own_grids=own_grids))
    return calibration_view(g), imported.quantization


def test_the_grid_passes_through_exactly_where_get_quant_param_would_miss_it():
    """For this scale, 255 / (hi - lo) in float32 lands one ulp off 1/scale; the GridRange keeps it."""
    tq = TensorQuant(0.07350680977106094, 130, "UINT8")
    want = target_param(tq)
    assert want.zero_point == 130 and want.scale == 1 / float(np.float32(tq.scale))
    assert np.float32(get_quant_param(*tq.real_range).scale) != np.float32(want.scale)
    r = grid_range(tq)
    assert range_param(r) == want and tuple(r) == pytest.approx(tq.real_range)


def _plain_ranges_give_the_grids(path) -> int:
    """Every uint8 activation grid of the model survives get_quant_param exactly; returns how many."""
    n = 0
    for tq in import_model(path).quantization.activations.values():
        plain, want = get_quant_param(*tq.real_range), target_param(tq)
        assert plain.zero_point == want.zero_point and plain.scale == np.float32(want.scale)
        n += 1
    return n


def test_plain_ranges_already_give_the_coral_grids():
    """The claim in kcc.quant.prequantized's docstring, on the Coral MobileNet 0.25 (tests/reference):
    its 32 uint8 activation grids survive get_quant_param exactly (GridRange is only a guard)."""
    name = "mobilenet_v1_0.25_128"
    assert _plain_ranges_give_the_grids(refkit.SHIPPED_MODELS / name / f"{name}_quant.tflite") == 32


@pytest.mark.slow
@pytest.mark.kit
def test_plain_ranges_give_the_grids_of_all_three_corals():
    """The same claim on all 96 grids of the three Coral MobileNets of the full kit."""
    names = ("mobilenet_v1_0.25_128", "mobilenet_v1_0.5_160", "mobilenet_v1_0.75_192")
    assert sum(_plain_ranges_give_the_grids(refkit.MODELS / n / f"{n}_quant.tflite") for n in names) == 96


def test_every_point_of_a_rotated_model_finds_its_tensor(monkeypatch):
    """The same model computed turned by 180° (kcc.passes.rotate180, taken when no pick layer serves
    the stem): its stem needs no pad or crop."""
    monkeypatch.setattr(row_pick, "serves", lambda *a: False)
    view, q = _points(mobilenet_block(True))
    assert any(n.name.endswith("/rot180") for n in view.graph.nodes)
    ranges = model_ranges(view, q)
    assert set(ranges) == {p.name for p in view.points} and "conv0/kpu_pad" not in ranges
    assert all(isinstance(r, GridRange) for r in ranges.values())


def test_the_stem_and_its_pick_layer_find_the_stems_tensor(monkeypatch):
    """Unrotated (as a pre-quantized model compiles), the SAME stride-2 stem runs at stride 1 as
    `conv0/full` and a pick layer `conv0` (kcc.passes.row_pick) copying its odd rows: both are on
    conv0's grid (TFLite's uint8 conv at every pixel), and the stem reads the input itself."""
    monkeypatch.setattr(legalize_module, "rotate180", lambda g: g)
    view, q = _points(mobilenet_block(True))
    ranges = model_ranges(view, q)
    grids = {name: grid_range(tq) for name, tq in q.activations.items()}
    assert set(ranges) == {p.name for p in view.points} and "conv0/kpu_pad" not in ranges
    assert ranges["conv0/full"] == grids["conv0"] and ranges["conv0"] == grids["conv0"]
    assert all(isinstance(r, GridRange) for r in ranges.values())


def test_every_point_of_a_legalized_model_finds_its_tensor(monkeypatch):
    monkeypatch.setattr(legalize_module, "rotate180", lambda g: g)  # keep the stem's pad and crop
    monkeypatch.setattr(row_pick, "serves", lambda *a: False)  # rather than the pick layer
    view, q = _points(mobilenet_block(True))
    ranges = model_ranges(view, q)
    grids = {name: grid_range(tq) for name, tq in q.activations.items()}
    assert set(ranges) == {p.name for p in view.points}
    # the stride-2 stem runs as a full-size KPU layer `conv0/kpu` cropped to the tensor conv0, and
    # reads its input through a pre-pad `conv0/kpu_pad`; the 1x1-map logits layer likewise
    assert ranges["conv0/kpu"] == grids["conv0"] and ranges["logits/kpu"] == grids["logits"]
    assert ranges["conv0/kpu_pad"] == grids["input"] and ranges["logits/kpu_pad"] == grids["pool"]
    assert ranges["input"] == grids["input"] and ranges["dw1"] == grids["dw1"]
    assert all(isinstance(r, GridRange) for r in ranges.values())  # the exact grids, not re-derived


def test_a_fused_activation_reads_the_grid_of_the_conv_before_it():
    view, q = _points(conv_logistic(True))
    (layer,) = [p for p in view.points if isinstance(p.op, KO.FloatKpuConv) and p.op.fn is not None]
    assert layer.name == "sigmoid" and layer.op.fn[0] == "logistic"
    assert view.pre_activations == {"sigmoid": "sigmoid/pre_act"}  # the link, not the name, finds it
    ranges = model_ranges(view, q)
    assert ranges["sigmoid/pre_act"] == grid_range(q.activations["conv"])
    assert ranges["sigmoid"] == grid_range(q.activations["sigmoid"])


def test_a_point_without_a_tensor_names_itself_and_suggests_a_dataset():
    view, q = _points(mobilenet_block(True))
    partial = ModelQuantization({k: v for k, v in q.activations.items() if k not in ("dw1", "pw1")}, q.producers)
    with pytest.raises(DatasetError, match=r"no grid for 2 tensor\(s\) the KPU layers need: 'dw1', 'pw1'") as e:
        model_ranges(view, partial)
    assert "--dataset" in e.value.hint
