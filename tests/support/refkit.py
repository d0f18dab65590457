"""Access to the reference kit: each model's float inputs and TFLite reference outputs.

Two roots with the same layout: REFERENCE, the full kit (../shared/reference, beside the checkout; only the
slow suite's tests marked `kit` read it), and SHIPPED, the part of it that ships in tests/reference (what
the default suite reads; its README says what is there and where it comes from). Functions take the
`models` folder of either (default: the full kit's, as bench/ scripts use it).

Shared by the real-model tests and bench/ scripts. Inputs follow the kit's README: `x = float32(u8)*a + b`
from `ref/*.in_u8.npy` (or the digits/iris data sets), NHWC -> NCHW; 4-D reference outputs are
transposed to NCHW, the layout of kcc's outputs.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = (ROOT / ".." / "shared" / "reference").resolve()
MODELS = REFERENCE / "models"
# tests/reference: the part of the kit that ships with kcc (same relative paths as REFERENCE), so the
# default suite runs the same tests on a clone without ../shared as in CI. See its README for origins.
SHIPPED = ROOT / "tests" / "reference"
SHIPPED_MODELS = SHIPPED / "models"
# Files the repo already holds elsewhere, byte-identical to the kit's, so tests/reference does not copy them:
# the README's example model is the Coral MobileNet 0.25's float twin.
ELSEWHERE = {
    "mobilenet_v1_0.25_128_dequant_float.tflite":
        ROOT / "datasets" / "mobilenet_v1_0.25_128" / "mobilenet_v1_0.25_128.tflite",
}
# The models whose test inputs and reference outputs ship (tests/reference/models/*/meta.json).
SHIPPED_NAMES = [
    "digits_ae16_gray", "digits_cnn16_gray", "digits_mbnet32_rgb", "iris_fc", "mobilenet_v1_0.25_128"]


@dataclass
class Sample:
    name: str
    x: np.ndarray  # NCHW (or [1, features]) float32, batch 1
    refs: list[np.ndarray]  # float outputs, 4-D ones NCHW, batch 1


def require_kit(path: Path = REFERENCE) -> None:
    """Call in a test that needs the full kit: in CI (`CI` set) a missing kit is an error, elsewhere a
    skip that says what is missing. Tests marked `kit` get this call from tests/conftest.py."""
    if path.exists():
        return
    import pytest

    msg = f"reference kit not found at {path} (the slow suite needs ../shared/reference beside the checkout)"
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def available() -> bool:
    return MODELS.is_dir()


def kit_params(values: list) -> list:
    """Parameters of a `kit` test taken from the kit's files: without the kit, one placeholder, so the
    test is still collected and its missing kit is reported (an error in CI), never zero silent items."""
    if available():
        return values
    import pytest

    return [pytest.param(None, id="kit-missing")]


def model_dirs(models: Path = MODELS) -> list[str]:
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir() if (p / "meta.json").exists())


def meta(name: str, models: Path = MODELS) -> dict:
    return json.loads((models / name / "meta.json").read_text())


def tflite_path(name: str, models: Path = MODELS) -> Path:
    path = models / name / meta(name, models)["model"]
    return path if path.exists() or path.name not in ELSEWHERE else ELSEWHERE[path.name]


def _nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def samples(name: str, limit: int | None = None, models: Path = MODELS) -> list[Sample]:
    """The model's reference samples (at most `limit`), each with its float input and outputs."""
    d = models / name
    m = meta(name, models)
    inp = m.get("input", {})
    a, b = np.float32(inp.get("a", 1.0)), np.float32(inp.get("b", 0.0))
    out: list[Sample] = []
    if "u8_source" in inp:  # digits: one .npy holding all 360 test images, refs batched likewise
        u8 = np.load(models / inp["u8_source"])[:limit]
        x = u8.astype(np.float32) * a + b
        x = x[..., None]
        if m["inputs"][0]["shape"][-1] == 3:
            x = np.repeat(x, 3, axis=-1)
        refs = [np.load(p)[:limit] for p in sorted(d.glob("ref/*.float_out*.npy"))]
        for i in range(len(x)):
            out.append(Sample(f"{name}_{i:03d}", _nchw(x[i:i + 1]), [_nchw(r[i:i + 1]) for r in refs]))
        return out
    if name == "iris_fc":
        with open(models / "datasets" / "iris" / "iris.csv") as f:
            rows = [list(map(float, r[:4])) for r in list(csv.reader(f))[1:]]
        ref = np.load(d / "ref" / "iris150.float_out0.npy")
        return [Sample(f"iris_{i:03d}", np.array([r], np.float32), [ref[i:i + 1]]) for i, r in enumerate(rows[:limit])]
    for p in sorted(d.glob("ref/*.in_u8.npy"))[:limit]:
        stem = p.name[: -len(".in_u8.npy")]
        refs = sorted(d.glob(f"ref/{stem}.float_out*.npy"))
        if not refs:
            continue  # e.g. deeplab 'squat' keeps only an argmax map
        x = np.load(p).astype(np.float32) * a + b
        out.append(Sample(stem, np.ascontiguousarray(_nchw(x)), [_nchw(np.load(r)) for r in refs]))
    return out


def compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(cosine similarity, max abs error / max |ref|)."""
    g = got.reshape(ref.shape).astype(np.float64)
    r = ref.astype(np.float64)
    cos = float((g * r).sum() / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-30))
    return cos, float(np.abs(g - r).max() / (np.abs(r).max() + 1e-30))
