"""Every float model of the reference kit imports, canonicalizes and reproduces TFLite's outputs.

Reference: `<models>/<dir>/ref/<sample>.float_out<k>.npy` (LiteRT, NHWC for 4-D) on the first sample
input, x = float32(u8) * a + b (meta.json "input"). Bar: cosine >= 0.99999 and max |err| <= 1e-4 *
max |ref| per output (the kit's README: the reference itself is noisy at ~2e-5). The default suite
runs the models that ship in tests/reference; the slow suite the others of the full kit (`kit`) and
every stored sample of every model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import refkit

from kcc.eval.interpreter import run
from kcc.frontend import import_tflite
from kcc.ir import ops as O
from kcc.passes.canonicalize import canonicalize

SHIPPED = refkit.SHIPPED_NAMES
KIT_ONLY = refkit.kit_params([n for n in refkit.model_dirs() if n not in SHIPPED])
EVERY = refkit.kit_params(refkit.model_dirs())


def load_sample(d: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(NHWC float input, reference outputs) of the first sample of model dir `d`."""
    meta = json.loads((d / "meta.json").read_text())
    inp = meta.get("input", {})
    if "u8_source" in inp:  # digits: row 0 of the held-out set; refs hold all rows
        u8 = np.load(d.parent / inp["u8_source"])[0]
        u8 = u8[..., None] if u8.ndim == 2 else u8
        u8 = np.repeat(u8, meta["inputs"][0]["shape"][-1] // u8.shape[-1], axis=-1)
        refs = [np.load(p)[:1] for p in sorted(d.glob("ref/*.float_out*.npy"))]
        return u8[None].astype(np.float32) * np.float32(inp["a"]) + np.float32(inp["b"]), refs
    if not meta.get("samples"):  # iris: raw features, first csv row
        with open(d.parent / "datasets" / "iris" / "iris.csv") as f:
            row = next(r for i, r in enumerate(csv.reader(f)) if i == 1)
        return np.array([row[:4]], np.float32), [np.load(p)[:1] for p in sorted(d.glob("ref/*.float_out*.npy"))]
    first = next(iter(meta["samples"]))
    u8 = np.load(d / "ref" / f"{first}.in_u8.npy")
    x = u8.astype(np.float32) * np.float32(inp["a"]) + np.float32(inp["b"])
    return (x if x.ndim == 4 else x[None]), [np.load(p) for p in sorted(d.glob(f"ref/{first}.float_out*.npy"))]


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(cosine, max |err| / max |ref|) computed in float64."""
    o, r = out.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    cos = float(o @ r / (np.linalg.norm(o) * np.linalg.norm(r)))
    return cos, float(np.abs(o - r).max() / np.abs(r).max())


def evaluate(name: str, models: Path):
    d = models / name
    meta = json.loads((d / "meta.json").read_text())
    graph = canonicalize(import_tflite(refkit.tflite_path(name, models)))
    graph.verify("canonicalize")
    x, refs = load_sample(d)
    outs = run(graph, [x.transpose(0, 3, 1, 2) if x.ndim == 4 else x])
    results = []
    for out, ref in zip(outs, refs):
        ref = ref.transpose(0, 3, 1, 2) if ref.ndim == 4 else ref
        assert out.shape == ref.shape
        results.append(compare(out, ref))
    assert len(outs) == len(refs) == len(meta["outputs"])
    assert [o.name for o in graph.outputs] == [o["name"] for o in meta["outputs"]]
    assert [i.name for i in graph.inputs] == [i["name"] for i in meta["inputs"]]
    return graph, results


def _matches_tflite(name: str, models: Path) -> None:
    graph, results = evaluate(name, models)
    for k, (cos, err) in enumerate(results):
        assert cos >= 0.99999, f"{name} output {k}: cosine {cos}"
        assert err <= 1e-4, f"{name} output {k}: max error {err} of max |ref|"


def _only_needed_transposes_remain(name: str, models: Path) -> None:
    """The importer's NHWC<->NCHW pairs cancel; what is left flattens a channels-last map."""
    graph = canonicalize(import_tflite(refkit.tflite_path(name, models)))
    users = graph.users()
    for n in graph.nodes:
        if isinstance(n.op, O.Transpose):
            assert users[n] and all(isinstance(u.op, O.Reshape) for u in users[n]), n.name
    if name.startswith(("mobilenet", "digits", "deeplab", "hand", "iris")):
        assert not any(isinstance(n.op, O.Transpose) for n in graph.nodes)


@pytest.mark.parametrize("name", SHIPPED)
def test_real_model_matches_tflite(name):
    _matches_tflite(name, refkit.SHIPPED_MODELS)


@pytest.mark.parametrize("name", SHIPPED)
def test_only_needed_transposes_remain(name):
    _only_needed_transposes_remain(name, refkit.SHIPPED_MODELS)


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("name", KIT_ONLY)
def test_kit_model_matches_tflite(name):
    _matches_tflite(name, refkit.MODELS)


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("name", KIT_ONLY)
def test_kit_model_has_only_needed_transposes(name):
    _only_needed_transposes_remain(name, refkit.MODELS)


def all_samples(d: Path):
    """Yield (NHWC input, refs, argmax_ref) for every stored sample of model dir `d`."""
    meta = json.loads((d / "meta.json").read_text())
    inp = meta.get("input", {})
    if "u8_source" in inp or not meta.get("samples"):
        x0, _ = load_sample(d)
        refs = [np.load(p) for p in sorted(d.glob("ref/*.float_out*.npy"))]
        if "u8_source" in inp:
            u8 = np.load(d.parent / inp["u8_source"])
            u8 = u8[..., None] if u8.ndim == 3 else u8
            u8 = np.repeat(u8, x0.shape[-1] // u8.shape[-1], axis=-1)
            xs = u8.astype(np.float32) * np.float32(inp["a"]) + np.float32(inp["b"])
        else:
            with open(d.parent / "datasets" / "iris" / "iris.csv") as f:
                xs = np.array([r[:4] for r in list(csv.reader(f))[1:]], np.float32)
        for k in range(len(xs)):
            yield xs[k:k + 1], [r[k:k + 1] for r in refs], None
        return
    for sample in meta["samples"]:
        u8 = np.load(d / "ref" / f"{sample}.in_u8.npy")
        x = u8.astype(np.float32) * np.float32(inp["a"]) + np.float32(inp["b"])
        refs = [np.load(p) for p in sorted(d.glob(f"ref/{sample}.float_out*.npy"))]
        argmax = d / "ref" / f"{sample}.float_argmax.npy"
        yield (x if x.ndim == 4 else x[None]), refs, (np.load(argmax) if argmax.exists() and not refs else None)


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("name", EVERY)
def test_real_model_all_samples(name):
    """Every stored sample (10 images per MobileNet, 360 digits, 150 iris rows...), same bar;
    samples stored only as a class map (deeplab 'squat') must agree on >= 99.9% of the pixels."""
    d = refkit.MODELS / name
    graph = canonicalize(import_tflite(refkit.tflite_path(name)))
    for x, refs, argmax in all_samples(d):
        outs = run(graph, [x.transpose(0, 3, 1, 2) if x.ndim == 4 else x])
        if argmax is not None:
            agree = np.mean(outs[0][0].argmax(axis=0) == argmax.reshape(outs[0].shape[2:]))
            assert agree >= 0.999, f"{name}: class map agreement {agree}"
        for out, ref in zip(outs, refs):
            cos, err = compare(out, ref.transpose(0, 3, 1, 2) if ref.ndim == 4 else ref)
            assert cos >= 0.99999 and err <= 1e-4, (name, cos, err)


@pytest.mark.slow
@pytest.mark.kit
def test_shipped_models_are_the_kits_files():
    """tests/reference/models is a verbatim subset of the kit (same relative paths), and the files the
    repo holds elsewhere (refkit.ELSEWHERE) are byte-identical to the kit's: the default suite tests on
    the kit's own bytes."""
    shipped = [p for p in refkit.SHIPPED_MODELS.rglob("*") if p.is_file()]
    assert len(shipped) >= 40
    for path in shipped:
        rel = path.relative_to(refkit.SHIPPED_MODELS)
        assert path.read_bytes() == (refkit.MODELS / rel).read_bytes(), rel
    assert sorted(p.parent.name for p in refkit.SHIPPED_MODELS.glob("*/meta.json")) == refkit.SHIPPED_NAMES
    for name, path in refkit.ELSEWHERE.items():
        (kit_file,) = refkit.MODELS.glob(f"*/{name}")
        assert path.read_bytes() == kit_file.read_bytes(), name
