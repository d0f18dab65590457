"""The ULFFD slim-320 face detector as its authors export it to ONNX (opset 9, PyTorch 1.2 +
onnx-simplifier; ../shared/reference/frontends), against the kit's onnxruntime outputs (ref_slim-320/).

Bars (issue #17): float path cosine >= 0.99999 and max |err| <= 1e-4 * max |ref| on every output of every
sample (the float IR and the float kmodel in kpu_sim); the uint8 kmodel's mean cosine >= 0.99 against
the float outputs. Inputs: x = (u8 - 127) / 128, ncc's `--input-mean 0.498039 --input-std 0.501961`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import refkit

import kpu_sim
from kcc.eval.interpreter import run
from kcc.frontend import import_model
from kcc.options import CompileOptions
from kcc.passes.canonicalize import canonicalize
from kcc.pipeline import compile_model

pytestmark = [pytest.mark.slow, pytest.mark.kit]

FRONTENDS = refkit.REFERENCE / "frontends"
MODEL = FRONTENDS / "version-slim-320_simplified.onnx"
REFS = FRONTENDS / "ref_slim-320"
MEAN, STD = 0.498039, 0.501961


def samples():
    meta = json.loads((REFS / "meta.json").read_text())
    for name in meta["samples"]:
        u8 = np.load(REFS / f"{name}.in_u8.npy")
        x = (u8.astype(np.float32) - np.float32(127)) / np.float32(128)
        yield name, u8, x, [np.load(REFS / f"{name}.out{k}.npy") for k in range(len(meta["outputs"]))]


def _check(name: str, outs, refs, where: str) -> None:
    assert len(outs) == len(refs) == 2
    for k, (o, r) in enumerate(zip(outs, refs)):
        cos, err = refkit.compare(np.asarray(o).reshape(r.shape), r)
        assert cos >= 0.99999 and err <= 1e-4, f"{where} {name} output {k}: cosine {cos:.7f}, max err {err:.2e}"


def test_float_ir_matches_onnxruntime():
    graph = canonicalize(import_model(MODEL).graph)
    assert [o.name for o in graph.outputs] == ["scores", "boxes"]
    assert [(i.name, i.shape) for i in graph.inputs] == [("input", (1, 3, 240, 320))]
    for name, _, x, refs in samples():
        _check(name, run(graph, [x]), refs, "float IR")


def test_float_kmodel_matches_onnxruntime():
    res = compile_model(MODEL, CompileOptions(inference_type="float"))
    program = kpu_sim.load(res.kmodel)
    for name, _, x, refs in samples():
        _check(name, program.run([x]), refs, "float kmodel")


def test_uint8_kmodel_keeps_accuracy(tmp_path):
    res = compile_model(MODEL, CompileOptions(dataset=refkit.REFERENCE / "models" / "images" / "nncase_faces",
                                              input_mean=MEAN, input_std=STD))
    assert all(p.on_kpu for p in res.placements)  # every conv of the detector on the KPU
    program = kpu_sim.load(res.kmodel)
    cos = {0: [], 1: []}
    for _, u8, _, refs in samples():
        outs = program.run([u8])
        for k, (o, r) in enumerate(zip(outs, refs)):
            cos[k].append(refkit.compare(np.asarray(o).reshape(r.shape), r)[0])
    for k, values in cos.items():
        assert np.mean(values) >= 0.99, f"output {k}: cosines {values}"
