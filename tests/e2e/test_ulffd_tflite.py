"""The TFLite third of the ULFFD triple (../shared/reference/frontends, issue #17 item 5): the
authors' own TF2/Keras export of the slim-320 face detector, whose eight Reshapes compute their target
with SHAPE -> STRIDED_SLICE -> PACK (folded by kcc.frontend.tflite.fold).

References: ai-edge-litert's outputs for four pictures (ref_slim-320_tflite/, inputs stored NCHW
uint8, x = (u8 - 127) / 128, fed NHWC). Bars of issue #17: float path cosine >= 0.99999 and max error
<= 1e-4 * max |ref| per output; the uint8 kmodel (run on kpu_sim) mean cosine >= 0.99 against the float
path. The kmodel is calibrated on the four reference pictures themselves, as bench/board.py does.
"""

from __future__ import annotations

import numpy as np
import pytest
import refkit
from PIL import Image

import kpu_sim
from kcc import kmodel as km
from kcc import latency
from kcc.eval.interpreter import run
from kcc.frontend import import_tflite
from kcc.options import CompileOptions
from kcc.passes.canonicalize import canonicalize
from kcc.pipeline import compile_model
from kcc.report.info import describe

pytestmark = [pytest.mark.slow, pytest.mark.kit]

FRONTENDS = refkit.REFERENCE / "frontends"
MODEL = FRONTENDS / "version-slim-320_without_postprocessing.tflite"
REFS = FRONTENDS / "ref_slim-320_tflite"
# README of ../shared/reference/frontends: x = (u8 - 127) / 128, as ncc's flags say it
MEAN, STD = 0.498039, 0.501961


def _samples() -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """(picture, 1x3x240x320 uint8 input, [boxes 1x4420x4, scores 1x4420x2])."""
    out = []
    for f in sorted(REFS.glob("*.in_u8.npy")):
        stem = f.name[: -len(".in_u8.npy")]
        out.append((stem, np.load(f), [np.load(REFS / f"{stem}.out{k}.npy") for k in range(2)]))
    assert len(out) == 4
    return out


def _float_graph():
    graph = canonicalize(import_tflite(MODEL))
    graph.verify("canonicalize")
    return graph


def test_float_path_matches_tflite():
    graph = _float_graph()
    assert [o.name for o in graph.outputs] == ["Identity", "Identity_1"]
    for stem, u8, refs in _samples():
        outs = run(graph, [(u8.astype(np.float32) - 127.0) / 128.0])
        for k, (out, ref) in enumerate(zip(outs, refs)):
            assert out.shape == ref.shape
            cos, err = refkit.compare(out, ref)
            # measured: cosine >= 0.9999999999993, max error <= 2.5e-6 of max |ref|
            assert cos >= 0.99999, f"{stem} output {k}: cosine {cos}"
            assert err <= 1e-4, f"{stem} output {k}: max error {err} of max |ref|"


def test_uint8_kmodel_agrees_with_the_float_path(tmp_path):
    samples = _samples()
    for stem, u8, _ in samples:
        Image.fromarray(u8[0].transpose(1, 2, 0)).save(tmp_path / f"{stem}.png")
    res = compile_model(MODEL, CompileOptions(dataset=tmp_path, dataset_format="image", input_mean=MEAN,
                                              input_std=STD))
    assert describe(res.kmodel, "slim-320")["warnings"] == []
    assert sum(p.on_kpu for p in res.placements) == 42  # every conv of the detector on the KPU
    # The converter's shared ZeroPadding2D PADs are absorbed by each conv (kcc.passes.legalize_kpu): no
    # CPU pad, and the estimate stays far below ncc's kmodel of the Caffe twin (61.2 ms, same estimator).
    model = km.read(res.kmodel)
    assert "pad" not in [n.opcode.kmodel_name for n in model.nodes]
    # measured 22.9 ms (27.0 with its odd-size stride-2 layer sliced on the CPU, 184.6 with the pads too)
    assert latency.estimate(model).total_ms <= 24.1
    graph = _float_graph()
    program = kpu_sim.load(res.kmodel)
    cos = []
    for _, u8, _ in samples:
        want = run(graph, [(u8.astype(np.float32) - 127.0) / 128.0])
        got = program.run([u8])
        cos.append([refkit.compare(g, w)[0] for g, w in zip(got, want)])
    mean = np.mean(cos, axis=0)
    # measured: boxes 0.99482, scores 0.99999 (ncc's slim-320.kmodel of the Caffe twin: 0.98934, 0.99953)
    assert mean.min() >= 0.99, f"mean cosine per output {mean}"
