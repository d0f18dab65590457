"""Real PyTorch ONNX exports of the kinds the maintainers hold back (issue #17 item 4), made once by
tests/reference/onnx_exports/make_exports.py (torch 2.13 CPU, TorchScript exporter) and shipped.

* yolox_nano_like (opset 11): Focus slices, SiLU, depthwise CSP blocks, SPP, PAFPN, decoupled heads;
* mbv2_opset9_pt12 (opset 9, PyTorch 1.2 style): initializers as graph inputs, Clip attributes,
  BatchNormalization nodes, Shape->Gather->Unsqueeze->Concat->Reshape, Gemm;
* mask_ssd_like (opset 11): 3x3 stride-2 convs with padding 1, Transpose/Reshape/Concat heads, Softmax;
* misc_ops (opset 14): ConvTranspose, PRelu, LeakyRelu, HardSwish, Sigmoid, Resize bilinear.

Bars (issue #17): float import vs onnxruntime cosine >= 0.99999 and max |err| <= 1e-4 * max |ref| on every
output; uint8 kmodel in kpu_sim vs the float IR: mean cosine >= 0.99 on every output, tightened per model
to what was measured with a ~5 % margin on the error (1 - cosine). Inputs are in the models' range
[-1, 1] = (pixel / 255 - 0.5) / 0.5: seeded uniform noise, and crops of the shipped face photo
(tests/reference/ncc-outputs/infer/inputs/ulffd_img/20.jpg) for image-like inputs.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import refkit
from PIL import Image

import kpu_sim
from kcc import kmodel
from kcc.eval.interpreter import run
from kcc.frontend import import_model
from kcc.latency import estimate
from kcc.options import CompileOptions
from kcc.passes.canonicalize import canonicalize
from kcc.pipeline import compile_graph

EXPORTS = refkit.SHIPPED / "onnx_exports"
PHOTO = refkit.SHIPPED / "ncc-outputs" / "infer" / "inputs" / "ulffd_img" / "20.jpg"
NAMES = ["yolox_nano_like", "mbv2_opset9_pt12", "mask_ssd_like", "misc_ops"]


def _path(name: str):
    return EXPORTS / f"{name}.onnx"


def noise(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def photo_crops(shape, seed: int, count: int) -> list[np.ndarray]:
    """`count` seeded square-ish crops of the photo, resized to the input's H x W, in [-1, 1]."""
    _, _, h, w = shape
    rng = np.random.default_rng(seed)
    with Image.open(PHOTO) as im:
        im = im.convert("RGB")
        out = []
        for _ in range(count):
            side = int(rng.integers(96, min(im.size) + 1))
            x0, y0 = int(rng.integers(0, im.size[0] - side + 1)), int(rng.integers(0, im.size[1] - side + 1))
            crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((w, h), Image.BILINEAR)
            px = np.asarray(crop, np.float32).transpose(2, 0, 1)[None]
            out.append(((px / np.float32(255) - np.float32(0.5)) / np.float32(0.5)).astype(np.float32))
    return out


def run_ort(name: str, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # initializers listed as inputs (mbv2) warn once per weight
    sess = ort.InferenceSession(str(_path(name)), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


# ------------------------------------------------------------------------------ the files themselves
def test_the_files_are_the_kinds_held_back():
    """What the README promises of each file, read from the file: opset, op types, initializers as inputs."""
    def load(name):
        m = onnx.load(str(_path(name)))
        return m, m.opset_import[0].version, Counter(n.op_type for n in m.graph.node)

    total = sum(_path(n).stat().st_size for n in NAMES)
    assert total < 400_000, f"shipped exports are {total} bytes"
    m, opset, ops = load("yolox_nano_like")
    assert opset == 11 and ops["Slice"] >= 4 and ops["MaxPool"] == 3 and ops["Resize"] == 1
    assert ops["Mul"] == ops["Sigmoid"] - 2 * 2  # SiLU everywhere, plus the obj/cls sigmoids of 2 levels
    m, opset, ops = load("mbv2_opset9_pt12")
    inits = {t.name for t in m.graph.initializer}
    assert opset == 9 and len(inits) > 100 and inits <= {i.name for i in m.graph.input}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Clip", "BatchNormalization", "Gemm",
            "GlobalAveragePool"} <= set(ops)
    m, opset, ops = load("mask_ssd_like")
    assert opset == 11 and ops["Transpose"] == 10 and ops["Softmax"] == 1
    m, opset, ops = load("misc_ops")
    assert opset == 14 and {"ConvTranspose", "PRelu", "LeakyRelu", "HardSwish", "Sigmoid", "Resize"} <= set(ops)
    resize = next(n for n in m.graph.node if n.op_type == "Resize")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize.attribute}
    assert attrs["mode"] == b"linear" and attrs["coordinate_transformation_mode"] == b"half_pixel"


# ------------------------------------------------------------------------------ float
@pytest.mark.parametrize("name", NAMES)
def test_float_import_matches_onnxruntime(name):
    graph = import_model(_path(name)).graph
    canon = canonicalize(import_model(_path(name)).graph)
    shape = graph.inputs[0].shape
    feeds = [noise(shape, seed) for seed in (1, 2)] + photo_crops(shape, 3, 2)
    for k, x in enumerate(feeds):
        refs = run_ort(name, x)
        for where, g in (("as imported", graph), ("canonicalized", canon)):
            outs = run(g, [x])
            assert len(outs) == len(refs)
            for j, (o, r) in enumerate(zip(outs, refs)):
                cos, err = refkit.compare(np.asarray(o), r)
                assert np.asarray(o).shape == r.shape
                assert cos >= 0.99999 and err <= 1e-4, f"{name} {where} input {k} output {j}: {cos:.7f}, {err:.2e}"


# ------------------------------------------------------------------------------ uint8 on the KPU
@lru_cache(maxsize=None)
def compiled(name: str):
    """(compile result, float canonical graph) calibrated on 6 photo crops."""
    graph = import_model(_path(name)).graph
    shape = graph.inputs[0].shape
    calib = [[x] for x in photo_crops(shape, 10, 6)]
    res = compile_graph(graph, CompileOptions(input_type="float", input_mean=0.5, input_std=0.5), samples=calib)
    return res, canonicalize(import_model(_path(name)).graph)


# 1 - mean cosine per output, bars: measured (comment) + ~5 %; every one far under the 0.01
# (the YOLOX's output is mostly its sigmoids' ~0.5: its figure says less than the others', see README).
# Measured with the float interpreter's contractions in float64 (kcc.eval.kernels), the same on every
# machine; before, in float32, the figures moved with numpy's BLAS kernels: the YOLOX's 3.14e-3 with
# OpenBLAS' Haswell kernels, 3.21e-3 with SkylakeX, 3.92e-3 with Prescott, misc_ops' 2.37e-5 / 2.53e-5
UINT8_BARS = {
    # measured 3.38e-3 with a CSP add on the KPU writing its range of the concat (3.83e-3 with it on the
    # CPU; 4.20e-3 with SiLU on the CPU, in float32)
    "yolox_nano_like": [3.55e-3],
    # 2.31e-3 with its 4 residual adds on the KPU (kcc.passes.residual_kpu: 6.8 -> 2.0 ms est.), 2.04e-3
    # with them on the CPU in float
    "mbv2_opset9_pt12": [2.43e-3],
    "mask_ssd_like": [4.47e-4, 2.83e-5],  # 4.25e-4 (loc), 2.69e-5 (conf, after softmax)
    "misc_ops": [2.36e-5],  # 2.24e-5 (2.37e-5 before a concatenation's parts shared its grid, kcc.quant.policy)
}


@pytest.mark.parametrize("name", NAMES)
def test_uint8_kmodel_keeps_accuracy(name):
    res, canon = compiled(name)
    kmodel.read(res.kmodel)
    program = kpu_sim.load(res.kmodel)
    shape = canon.inputs[0].shape
    cos = []
    for x in photo_crops(shape, 20, 6):
        outs, refs = program.run([x]), run(canon, [x])
        cos.append([refkit.compare(np.asarray(o), np.asarray(r))[0] for o, r in zip(outs, refs)])
    err = 1 - np.mean(cos, axis=0)
    print(name, "1 - mean cosine", err, "worst", 1 - np.min(cos, axis=0),
          "latency %.3f ms" % estimate(res.emitted.model).total_ms)
    for j, (e, bar) in enumerate(zip(err, UINT8_BARS[name])):
        assert e <= min(bar, 0.01), f"{name} output {j}: 1 - mean cosine {e:.3e} > {bar}"


def test_convs_land_on_the_kpu():
    """No conv of these exports falls back to the CPU for lack of KPU support: the YOLOX leaves only
    its SPP max pools (5/9/13 at stride 1, no KPU pool) and the concats of those pools, of CPU adds and
    resizes, or of parts on different grids (copies), the MobileNet only its 10-class Gemm (under the
    output-quantize threshold, as ncc), the misc net only a concat of a CPU HardSwish."""
    for name in NAMES:
        res, _ = compiled(name)
        off = Counter(p.op for p in res.placements if not p.on_kpu)
        on = Counter(p.op for p in res.placements if p.on_kpu)
        assert on["conv2d"] > 0 and off["conv2d"] == 0, f"{name}: {off}"
    res, canon = compiled("yolox_nano_like")
    # and one CSP add, whose skip has 6 channels (not a multiple of the 4 one line holds at its width),
    # with the concat its sum is part of; the other CSP add is a KPU layer writing its range of the
    # concat in KPU RAM (kcc.passes.residual_kpu: a concat of codes is no float reader)
    assert Counter(p.op for p in res.placements if not p.on_kpu) == {"pool2d": 3, "concat": 4, "add": 1}
    # its 60 SiLUs (Sigmoid * Mul) are one silu each (canonicalize fuse_silu) and each conv's KPU table
    # activation: the CPU computes only the head's 4 obj/cls sigmoids (60 + 4 nnil programs without it)
    assert Counter(n.op.op for n in canon.nodes if n.op.kind == "unary") == {"silu": 60, "logistic": 4}
    assert Counter(n.opcode.kmodel_name for n in res.emitted.model.nodes)["nnil_unary_method"] == 4
    assert [p.op for p in compiled("mbv2_opset9_pt12")[0].placements if not p.on_kpu] == ["matmul"]
    assert all(p.on_kpu for p in compiled("mask_ssd_like")[0].placements)
