"""compile (uint8, KPU) -> kpu_sim on real models, against TFLite's float outputs.

Fast versions run by default (a few calibration samples); the full measurement is bench/accuracy.py.
Bars: ncc v0.2's own figures on the same models (../shared/reference/ncc-outputs/kit_baseline.json).
"""

import json

import numpy as np
import pytest

import kpu_sim
import refkit
from kcc import kmodel
from kcc.info import describe
from kcc.options import CompileOptions
from kcc.pipeline import compile_model

pytestmark = pytest.mark.skipif(not refkit.available(), reason="../shared/reference/models is not checked out")


def _ncc(name: str, method: str) -> dict:
    data = json.loads((refkit.REFERENCE / "ncc-outputs" / "kit_baseline.json").read_text())
    return next(r for r in data["results"] if r["model"] == name and r["method"] == method)


def _compile_and_score(name, tmp_path, calib, evaluate, method="no_clip"):
    samples = refkit.samples(name)
    ds = tmp_path / "calib"
    ds.mkdir()
    for s in samples[:calib]:
        s.x.astype(np.float32).tofile(ds / f"{s.name}.bin")
    res = compile_model(refkit.tflite_path(name), CompileOptions(
        dataset=ds, dataset_format="raw", calibrate_method=method, input_type="float"))
    kmodel.read(res.kmodel)  # valid kmodel v4
    assert describe(res.kmodel, name)["warnings"] == []  # `kcc info`: registers consistent, as ncc derives them
    program = kpu_sim.load(res.kmodel)
    cos, top1 = [], 0
    for s in samples[:evaluate]:
        outs = program.run([s.x])
        cos.append(min(refkit.compare(o, r)[0] for o, r in zip(outs, s.refs)))
        top1 += int(np.argmax(outs[0]) == np.argmax(s.refs[0]))
    return res, float(np.mean(cos)), top1


def test_mobilenet_all_convs_on_kpu_and_beats_ncc(tmp_path):
    res, cos, top1 = _compile_and_score("mobilenet_v1_0.25_128", tmp_path, calib=10, evaluate=10)
    kpu = [p for p in res.placements if p.on_kpu]
    assert len(kpu) == 28 and all(p.on_kpu for p in res.placements)
    n_layers = sum(n.opcode.kmodel_name == "kpu_conv2d" for n in res.emitted.model.nodes)
    assert n_layers >= 28
    assert cos > _ncc("mobilenet_v1_0.25_128", "no_clip")["cos_mean"]
    assert top1 == 10


@pytest.mark.parametrize("name", ["digits_cnn16_gray", "digits_mbnet32_rgb"])
def test_digits_models_keep_accuracy(name, tmp_path):
    res, cos, top1 = _compile_and_score(name, tmp_path, calib=32, evaluate=64)
    assert cos >= 0.999
    assert top1 >= 63
    assert any(n.opcode.kmodel_name == "kpu_conv2d" for n in res.emitted.model.nodes)


def test_compile_is_deterministic(tmp_path):
    builds = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        builds.append(_compile_and_score("digits_mbnet32_rgb", tmp_path / sub, calib=8, evaluate=1)[0].kmodel)
    assert builds[0] == builds[1]
