"""kpu_sim against the real ncc: byte-identical `ncc infer` outputs, and every real kmodel runs
(ncc-outputs/README.md, nncase-examples/README.md)."""

from __future__ import annotations

import shutil
import struct
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import kpu_sim
from kcc.cli import main
from kcc.errors import KmodelError

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"
NCC = REFERENCE / "ncc-outputs"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference kit not found at {REFERENCE}")


def _files(pattern: str) -> list[Path]:
    return sorted(REFERENCE.rglob(pattern)) if REFERENCE.is_dir() else []


ALL_KMODELS = _files("*.kmodel")
V4 = [p for p in ALL_KMODELS if p.read_bytes()[:8] == b"LDMK\x04\x00\x00\x00"]
V3 = [p for p in ALL_KMODELS if p.read_bytes()[:4] == b"\x03\x00\x00\x00"]

# The `ncc infer` runs of ncc-outputs/README.md: kmodel, dataset (relative to ncc-outputs), format,
# output folder. The image run uses the jpg the README names, copied alone into a folder.
INFER_RUNS = [
    ("ulffd_landmark_no_clip_ff", "infer/inputs/ulffd_raw", "raw", "ulffd_no_clip_ff_raw"),
    ("ulffd_landmark_no_clip_ff", "../models/images/nncase_faces/20.jpg", "image", "ulffd_no_clip_ff_img"),
    ("ulffd_landmark_l2_ff", "infer/inputs/ulffd_raw", "raw", "ulffd_l2_ff_raw"),
    ("ulffd_landmark_no_clip", "infer/inputs/ulffd_raw", "raw", "ulffd_no_clip_cpsat_raw"),
    ("iris_float_ff", "datasets/iris_raw", "raw", "iris_float_ff"),
    ("iris_u8_no_clip_ff", "datasets/iris_raw_u8", "raw", "iris_u8_no_clip_ff"),
]


@cache
def _program(path: Path) -> kpu_sim.Program:
    return kpu_sim.load(path)


@pytest.mark.parametrize("kmodel, dataset, fmt, outputs", INFER_RUNS, ids=[r[3] for r in INFER_RUNS])
def test_kcc_infer_writes_the_files_ncc_infer_wrote(kmodel, dataset, fmt, outputs, tmp_path) -> None:
    source = NCC / dataset
    if fmt == "image":  # ncc ran on a folder holding only this picture, with --input-mean 0.5 --input-std 1
        (tmp_path / "images").mkdir()
        shutil.copy(source, tmp_path / "images")
        source, extra = tmp_path / "images", ["--input-mean", "0.5", "--input-std", "1"]
    else:
        extra = []
    out = tmp_path / "out"
    argv = ["infer", str(NCC / "kmodels" / f"{kmodel}.kmodel"), str(out), "--dataset", str(source),
            "--dataset-format", fmt, "-q", *extra]  # fmt: skip
    assert main(argv) == 0
    expected = sorted((NCC / "infer" / "outputs" / outputs).glob("*.bin"))
    assert expected and sorted(p.name for p in out.iterdir()) == [p.name for p in expected]
    for ref in expected:
        assert (out / ref.name).read_bytes() == ref.read_bytes(), f"{outputs}/{ref.name} differs"


def test_kpu_sim_matches_ncc_infer_byte_for_byte() -> None:
    program = _program(NCC / "kmodels" / "ulffd_landmark_no_clip_ff.kmodel")
    x = np.fromfile(NCC / "infer/inputs/ulffd_raw/face20_rgb_chw_320x240_u8.bin", np.uint8).reshape(1, 3, 240, 320)
    outputs = program.run([x])
    assert [o.size for o in outputs] == [3160 * 4, 3160 * 10, 3160 * 2]
    ref = (NCC / "infer/outputs/ulffd_no_clip_ff_raw/face20_rgb_chw_320x240_u8.bin").read_bytes()
    assert b"".join(o.tobytes() for o in outputs) == ref
    assert int(np.argmax(outputs[2].reshape(-1, 2)[:, 1])) == 751  # the README's top-scoring anchor


def test_iris_readme_logits() -> None:
    """ncc-outputs/README.md: iris_03 (5.1, 3.8, 1.9, 0.4) gives 16.0777969, 5.607656, -2.0717456."""
    program = kpu_sim.load(NCC / "kmodels" / "iris_float_ff.kmodel")
    (got,) = program.run([np.array([5.1, 3.8, 1.9, 0.4], np.float32)])
    np.testing.assert_allclose(got, [16.0777969, 5.607656, -2.0717456], rtol=1e-6)


def _signature(path: Path) -> tuple:
    """The opcode sequence, read from the node headers only (kmodel_v4.md §2), so collection stays fast."""
    data = path.read_bytes()
    n_const, _, n_nodes, n_in, n_out = struct.unpack_from("<5I", data, 16)
    headers = 40 + 32 * n_in + 16 * n_out + n_const
    return tuple(struct.unpack_from("<I", data, headers + 8 * i)[0] for i in range(n_nodes))


def _representatives() -> set[Path]:
    """One file per distinct node sequence (the others are re-quantised or re-planned copies)."""
    seen: dict[tuple, Path] = {}
    for p in V4:
        seen.setdefault(_signature(p), p)
    return set(seen.values())


REPRESENTATIVE = _representatives() if V4 else set()


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=() if p in REPRESENTATIVE else pytest.mark.slow) for p in V4],
    ids=lambda p: str(p.relative_to(REFERENCE)),
)
def test_every_v4_file_loads_and_runs_on_a_random_input(path: Path) -> None:
    program = _program(path)
    assert program.outputs and all(o.dtype == np.float32 for o in program.outputs)
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


def test_there_are_many_real_files() -> None:
    assert len(V4) >= 30 and len(REPRESENTATIVE) >= 10 and V3


@pytest.mark.parametrize("path", V3, ids=lambda p: str(p.relative_to(REFERENCE)))
def test_v3_files_are_rejected(path: Path) -> None:
    with pytest.raises(KmodelError, match=r"kmodel v3 \(nncase v0.1\) is not supported; recompile with kcc or ncc"):
        kpu_sim.load(path)
