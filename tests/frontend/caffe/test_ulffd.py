"""The ULFFD slim-320 face detector as its authors ship it for Caffe (../shared/reference/frontends),
against OpenCV's outputs (ref_slim-320_caffe/) and against ncc's own kmodel of the same .caffemodel;
and its RFB-320 sibling (nncase-examples/RFB-320.caffemodel, no .prototxt: OpenCV reads the definition
kcc's schema writes back from the .caffemodel) the same way.

Input: 1x3x240x320 RGB, x = (u8 - 127) / 128 (ncc flags --input-mean 0.498039 --input-std 0.501961).
* float import (the .caffemodel alone, and with its .prototxt): cosine >= 0.99999 and max |err| <=
  1e-4 * max |ref| on both outputs of every reference sample;
* kcc's uint8 kmodel (calibrated on the nncase face pictures, as ncc's example is) on kpu_sim: worst-output
  cosine vs the float model >= 0.99 on average, at least that of nncase's example `slim-320.kmodel`
  (fed the same uint8 pictures), and a smaller estimated K210 latency (kcc.latency).
"""

from __future__ import annotations

import numpy as np
import pytest
import refkit

import kpu_sim
from kcc import kmodel as km
from kcc import latency
from kcc.eval.interpreter import run
from kcc.frontend.caffe import import_caffe
from kcc.options import CompileOptions
from kcc.passes.canonicalize import canonicalize
from kcc.pipeline import compile_model

pytestmark = [pytest.mark.slow, pytest.mark.kit]

FRONTENDS = refkit.REFERENCE / "frontends"
REFS = FRONTENDS / "ref_slim-320_caffe"
STEMS = ("20", "31", "astronaut", "face")
MEAN, STD = 0.498039, 0.501961


def _x(stem: str) -> tuple[np.ndarray, np.ndarray]:
    u8 = np.load(REFS / f"{stem}.in_u8.npy")
    return u8, (u8.astype(np.float32) - np.float32(127)) / np.float32(128)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("with_prototxt", [False, True], ids=["caffemodel", "with-prototxt"])
def test_float_import_matches_opencv(with_prototxt) -> None:
    proto = FRONTENDS / "slim-320.prototxt" if with_prototxt else None
    g = canonicalize(import_caffe(FRONTENDS / "slim-320.caffemodel", prototxt=proto))
    assert [o.name for o in g.outputs] == ["boxes", "scores"]
    for stem in STEMS:
        outs = run(g, [_x(stem)[1]])
        for k, out in enumerate(outs):
            ref = np.load(REFS / f"{stem}.out{k}.npy")
            assert out.shape == ref.shape
            err = np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max()
            assert _cos(out, ref) >= 0.99999 and err <= 1e-4, (stem, k, _cos(out, ref), err)


def _accuracy(kmodel: bytes, float_graph) -> float:
    """Worst-output cosine vs the float model, averaged over the samples (outputs matched by size:
    a kmodel v4 stores no output shapes, and ncc's example lists scores first)."""
    program = kpu_sim.load(kmodel)
    cos = []
    for stem in STEMS:
        u8, x = _x(stem)
        by_size = {o.size: o for o in program.run([u8])}
        cos.append(min(_cos(by_size[r.size], r) for r in run(float_graph, [x])))
    return float(np.mean(cos))


def test_rfb320_float_import_matches_opencv(tmp_path) -> None:
    cv2 = pytest.importorskip("cv2")
    from google.protobuf import text_format

    from kcc.frontend.caffe import schema as S

    model = refkit.REFERENCE / "nncase-examples" / "RFB-320.caffemodel"
    definition = S.NetParameter()
    definition.ParseFromString(model.read_bytes())
    for layer in definition.layer:
        del layer.blobs[:]
    (tmp_path / "rfb.prototxt").write_text(text_format.MessageToString(definition))
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "rfb.prototxt"), str(model))
    g = canonicalize(import_caffe(model))
    for stem in STEMS:
        x = _x(stem)[1]
        net.setInput(x)
        refs = net.forward([o.name for o in g.outputs])
        for out, ref in zip(run(g, [x]), refs):
            err = np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max()
            assert _cos(out, ref) >= 0.99999 and err <= 1e-4, (stem, _cos(out, ref), err)


# RFB-320's three dilated convs (d = 2, 3, 5 at 30x40) run in phase space (kcc.passes.phase_dilated):
# the d=3 one as two KPU layers, its phases being 10x14 and 10x13
@pytest.mark.parametrize("model, kpu_layers", [(FRONTENDS / "slim-320.caffemodel", 42),
                                               (refkit.REFERENCE / "nncase-examples" / "RFB-320.caffemodel", 53)],
                         ids=["slim-320", "RFB-320"])
def test_uint8_kmodel_beats_nccs_own(model, kpu_layers) -> None:
    opts = CompileOptions(dataset=refkit.MODELS / "images" / "nncase_faces", input_mean=MEAN, input_std=STD,
                          max_allocator_solve_secs=0)
    res = compile_model(model, opts)
    assert sum(p.on_kpu for p in res.placements) == kpu_layers  # every convolution on the KPU
    g = import_caffe(model)
    kcc_cos = _accuracy(res.kmodel, g)
    ncc = (refkit.REFERENCE / "nncase-examples" / f"{model.stem}.kmodel").read_bytes()
    ncc_cos = _accuracy(ncc, g)
    kcc_ms = latency.estimate(km.read(res.kmodel)).total_ms
    ncc_ms = latency.estimate(km.read(ncc)).total_ms
    print(f"{model.stem} uint8: kcc cos {kcc_cos:.5f}, est {kcc_ms:.1f} ms; ncc cos {ncc_cos:.5f}, est {ncc_ms:.1f} ms")
    assert kcc_cos >= 0.99
    assert kcc_cos >= ncc_cos
    assert kcc_ms < ncc_ms
