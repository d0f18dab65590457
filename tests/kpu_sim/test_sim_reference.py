"""kpu_sim against the real ncc: `ncc infer` outputs and every real kmodel (ncc-outputs/README.md)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

import kpu_sim
from kcc.errors import KmodelError

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"
NCC = REFERENCE / "ncc-outputs"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference kit not found at {REFERENCE}")


def _files(pattern: str) -> list[Path]:
    return sorted(REFERENCE.rglob(pattern)) if REFERENCE.is_dir() else []


ALL_KMODELS = _files("*.kmodel")
V4 = [p for p in ALL_KMODELS if p.read_bytes()[:8] == b"LDMK\x04\x00\x00\x00"]
V3 = [p for p in ALL_KMODELS if p.read_bytes()[:4] == b"\x03\x00\x00\x00"]


@cache
def _program(path: Path) -> kpu_sim.Program:
    return kpu_sim.load(path)


@pytest.mark.parametrize(
    "kmodel, dataset, infer_dir, dtype",
    [
        ("iris_float_ff", "iris_raw", "iris_float_ff", "<f4"),
        ("iris_float", "iris_raw", "iris_float_ff", "<f4"),  # same graph, other memory plan
        ("iris_u8_no_clip_ff", "iris_raw_u8", "iris_u8_no_clip_ff", "u1"),
    ],
)
def test_matches_ncc_infer(kmodel: str, dataset: str, infer_dir: str, dtype: str) -> None:
    program = kpu_sim.load(NCC / "kmodels" / f"{kmodel}.kmodel")
    rows = sorted((NCC / "datasets" / dataset).glob("*.bin"))
    assert len(rows) == 12
    for row in rows:
        (got,) = program.run([np.fromfile(row, dtype=dtype).reshape(1, 4)])
        ref = np.fromfile(NCC / "infer" / "outputs" / infer_dir / row.name, dtype="<f4")
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0, err_msg=f"{kmodel} on {row.name}")


def test_iris_readme_logits() -> None:
    """ncc-outputs/README.md: iris_03 (5.1, 3.8, 1.9, 0.4) gives 16.0777969, 5.607656, -2.0717456."""
    program = kpu_sim.load(NCC / "kmodels" / "iris_float_ff.kmodel")
    (got,) = program.run([np.array([5.1, 3.8, 1.9, 0.4], np.float32)])
    np.testing.assert_allclose(got, [16.0777969, 5.607656, -2.0717456], rtol=1e-6)


@pytest.mark.parametrize("path", V4, ids=lambda p: str(p.relative_to(REFERENCE)))
def test_every_v4_file_loads_and_cpu_only_ones_run(path: Path) -> None:
    program = _program(path)
    assert program.outputs and all(o.dtype == np.float32 for o in program.outputs)
    if {n.opcode for n in program.model.nodes} & kpu_sim.NOT_SIMULATED:
        return  # needs kpu_conv2d / quantized kernels
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal(i.count).astype(np.float32)
        if i.dtype == np.float32
        else rng.integers(0, 256, i.count).astype(np.uint8)
        for i in program.inputs
    ]
    outputs = program.run(inputs)
    assert [o.size for o in outputs] == [o.count for o in program.outputs]
    assert all(np.isfinite(o).all() for o in outputs)


def test_some_files_are_fully_simulated() -> None:
    runnable = [p for p in V4 if not ({n.opcode for n in _program(p).model.nodes} & kpu_sim.NOT_SIMULATED)]
    assert len(runnable) >= 8


@pytest.mark.parametrize("path", V3, ids=lambda p: str(p.relative_to(REFERENCE)))
def test_v3_files_are_rejected(path: Path) -> None:
    with pytest.raises(KmodelError, match=r"kmodel v3 \(nncase v0.1\) is not supported; recompile with kcc or ncc"):
        kpu_sim.load(path)
