"""kpu_sim against the real ncc: every `ncc infer` run of ncc-outputs/README.md reproduced byte for byte.

Each run's kmodel is run in kpu_sim on the run's own inputs and the outputs, concatenated as raw
float32 in output order (as `ncc infer` writes them), must equal ncc's file byte for byte; then the
same run goes through `kcc infer` (dataset loading, file naming). Everything is read from
tests/reference (refkit.SHIPPED), so these run in the default suite.

The image run (`ulffd_no_clip_ff_img`) used `$EX/facedetect_landmark/images/20.jpg` of nncase
v0.2.0-beta4, alone in a folder, with `--input-mean 0.5 --input-std 1`. The picture is already
320x240, so ncc only decoded it to RGB and stored it CHW as uint8 (the KPU input takes uint8, so mean
and std do not apply); it ships as infer/inputs/ulffd_img/20.jpg (tests/reference/README.md).
"""

from __future__ import annotations

import re
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import refkit

import kpu_sim
from kcc.cli import main
from kcc.dataset import load_image

NCC = refkit.SHIPPED / "ncc-outputs"
FACE20_RAW = NCC / "infer/inputs/ulffd_raw/face20_rgb_chw_320x240_u8.bin"
FACE20_JPG = NCC / "infer/inputs/ulffd_img/20.jpg"

# The `ncc infer` runs of ncc-outputs/README.md: output folder -> (kmodel, dataset relative to
# ncc-outputs, --dataset-format, extra flags).
INFER_RUNS = {
    "ulffd_no_clip_ff_raw": ("ulffd_landmark_no_clip_ff", "infer/inputs/ulffd_raw", "raw", []),
    "ulffd_no_clip_ff_img": ("ulffd_landmark_no_clip_ff", "infer/inputs/ulffd_img", "image",
                             ["--input-mean", "0.5", "--input-std", "1"]),
    "ulffd_l2_ff_raw": ("ulffd_landmark_l2_ff", "infer/inputs/ulffd_raw", "raw", []),
    "ulffd_no_clip_cpsat_raw": ("ulffd_landmark_no_clip", "infer/inputs/ulffd_raw", "raw", []),
    "iris_float_ff": ("iris_float_ff", "datasets/iris_raw", "raw", []),
    "iris_u8_no_clip_ff": ("iris_u8_no_clip_ff", "datasets/iris_raw_u8", "raw", []),
}  # fmt: skip


@cache
def _program(kmodel: str) -> kpu_sim.Program:
    return kpu_sim.load(NCC / "kmodels" / f"{kmodel}.kmodel")


def _input(program: kpu_sim.Program, path: Path, fmt: str) -> np.ndarray:
    (info,) = program.inputs
    if fmt == "image":
        return load_image(path, tuple(info.shape), info.dtype)
    return np.fromfile(path, info.dtype).reshape(tuple(info.shape))


def _expected(run: str) -> list[Path]:
    return sorted((NCC / "infer/outputs" / run).glob("*.bin"))


def test_every_run_is_listed() -> None:
    assert sorted(p.name for p in (NCC / "infer/outputs").iterdir()) == sorted(INFER_RUNS)


@pytest.mark.parametrize("run", INFER_RUNS)
def test_kpu_sim_output_is_ncc_infer_output_byte_for_byte(run: str) -> None:
    kmodel, dataset, fmt, _ = INFER_RUNS[run]
    program = _program(kmodel)
    expected = _expected(run)
    inputs = sorted((NCC / dataset).iterdir())
    # ncc names each output after its input file: the pairing is by stem, the count must match
    assert [p.stem for p in inputs] == [p.stem for p in expected]
    for source, ref in zip(inputs, expected):
        outputs = program.run([_input(program, source, fmt)])
        assert [o.size for o in outputs] == [o.count for o in program.outputs]
        got = b"".join(o.astype("<f4").tobytes() for o in outputs)
        size = ref.stat().st_size
        assert len(got) == size, f"{run}/{ref.name}: {len(got)} bytes, ncc wrote {size}"
        if got != ref.read_bytes():
            diff = np.frombuffer(got, "<f4") != np.fromfile(ref, "<f4")
            pytest.fail(f"{run}/{ref.name}: {int(diff.sum())} of {diff.size} float32 values differ from "
                        f"ncc infer, first at {int(np.argmax(diff))}")


@pytest.mark.parametrize("run", INFER_RUNS)
def test_kcc_infer_writes_the_files_ncc_infer_wrote(run: str, tmp_path: Path) -> None:
    kmodel, dataset, fmt, extra = INFER_RUNS[run]
    source = NCC / dataset
    if fmt == "image":  # a copy, so that a stray file in the source folder cannot join the dataset
        source = tmp_path / "images"
        shutil.copytree(NCC / dataset, source)
    out = tmp_path / "out"
    argv = ["infer", str(NCC / "kmodels" / f"{kmodel}.kmodel"), str(out), "--dataset", str(source),
            "--dataset-format", fmt, "-q", *extra]  # fmt: skip
    assert main(argv) == 0
    expected = _expected(run)
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in expected]
    for ref in expected:
        assert (out / ref.name).read_bytes() == ref.read_bytes(), f"{run}/{ref.name} differs"


def test_the_shipped_picture_is_the_raw_input_ncc_used() -> None:
    """ncc-outputs/README.md: the raw input is 20.jpg decoded to RGB, CHW, uint8, and the image run
    wrote the same file as the raw run. Both hold for the shipped picture and ncc's two files."""
    x = load_image(FACE20_JPG, (1, 3, 240, 320), np.dtype(np.uint8))
    assert x.tobytes() == FACE20_RAW.read_bytes()
    img, raw = _expected("ulffd_no_clip_ff_img"), _expected("ulffd_no_clip_ff_raw")
    assert img[0].read_bytes() == raw[0].read_bytes()


def _scores(run: str) -> np.ndarray:
    """Identity_2, the face scores: the last 3160 x 2 floats of the output file (README "Output")."""
    return np.fromfile(_expected(run)[0], "<f4")[-3160 * 2 :].reshape(3160, 2)


def test_readme_facts_about_the_ulffd_runs() -> None:
    """README: first-fit and CP-SAT kmodels give identical outputs; l2 differs but has the same
    top-scoring anchor, #751."""
    ff, cpsat, l2 = (_expected(r)[0].read_bytes() for r in ("ulffd_no_clip_ff_raw", "ulffd_no_clip_cpsat_raw",
                                                                 "ulffd_l2_ff_raw"))  # fmt: skip
    assert ff == cpsat and ff != l2
    assert int(np.argmax(_scores("ulffd_no_clip_ff_raw")[:, 1])) == 751
    assert int(np.argmax(_scores("ulffd_l2_ff_raw")[:, 1])) == 751


def test_iris_readme_logits() -> None:
    """README: iris_03 (5.1, 3.8, 1.9, 0.4) gives 16.0777969, 5.607656, -2.0717456."""
    x = np.fromfile(NCC / "datasets/iris_raw/iris_03.bin", np.float32)
    assert x.tolist() == pytest.approx([5.1, 3.8, 1.9, 0.4])
    (got,) = _program("iris_float_ff").run([x])
    np.testing.assert_allclose(got, [16.0777969, 5.607656, -2.0717456], rtol=1e-6)


def _log_ops(run: str) -> list[str]:
    """The node names `ncc infer` printed with its timings (infer/logs), normalised: 'KPUConv2D' ->
    'kpuconv2d'; the final 'Total' line dropped."""
    lines = (NCC / "infer/logs" / f"{run}.log").read_text().splitlines()
    names = [re.sub(r"[^a-z0-9]", "", line.split(":")[0].lower()) for line in lines if ":" in line]
    assert names[-1] == "total"
    return names[:-1]


@pytest.mark.parametrize("run", INFER_RUNS)
def test_the_logs_show_the_kmodel_each_run_used(run: str) -> None:
    """The printed node sequence, once per input file, is the node sequence of the kmodel this file
    pairs with the run: the pairing above is the one ncc ran."""
    kmodel, dataset, _, _ = INFER_RUNS[run]
    nodes = [node.name.replace("_", "") for node in _program(kmodel).model.nodes]
    assert _log_ops(run) == nodes * len(list((NCC / dataset).iterdir()))
