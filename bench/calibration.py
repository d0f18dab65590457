"""Calibration speed: kcc's no_clip and l2 vs ncc v0.2's compile times (ecosystem.md §2 P12).

    python bench/calibration.py [--verbose]
    OPENBLAS_NUM_THREADS=1 python bench/calibration.py     # on a busy 2-core machine

(Multi-threaded OpenBLAS waits for a core another process holds: on a loaded 2-core machine the
interpreter's convolutions and the l2 search's matrix products get ~5x slower with 2 threads.)

Per model and method it prints the wall time of each calibration stage (pass 1: ranges, pass 2:
histograms, l2 threshold search), with every Conv2D output of the canonicalized float graph as a
quantization point, next to ncc's whole-compile wall time for the same method (ncc's l2 is dominated
by its exhaustive threshold search). The ncc figures come from the reference kit:
`ncc-outputs/kit_baseline.json` (`compile_s`, the model's own sample inputs as a raw dataset) and
`ncc-outputs/README.md` (ulffd with the 20 example face images, first-fit allocator).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from refkit import REFERENCE

from kcc.dataset import iter_dataset, list_files
from kcc.frontend.tflite.importer import import_tflite
from kcc.ir import ops as O
from kcc.passes.canonicalize import canonicalize
from kcc.quant import calibrate as C
from kcc.quant.l2_search import l2_threshold

# ncc v0.2.0-beta4 wall seconds (whole compile, first-fit allocator) from ncc-outputs/README.md
NCC_README = {("ulffd_landmark_320x240", "no_clip"): 3.66, ("ulffd_landmark_320x240", "l2"): 375.83}


@dataclass
class Case:
    name: str
    tflite: Path
    images: list[Path]
    mean: float
    std: float


def cases() -> list[Case]:
    mnet = ROOT / "datasets" / "mobilenet_v1_0.25_128"
    faces = REFERENCE / "models" / "images" / "nncase_faces"
    return [
        Case("mobilenet_v1_0.25_128", mnet / "mobilenet_v1_0.25_128.tflite",
             list_files(mnet / "images", "image"), 0.5, 0.5),
        # ncc's facedetect_landmark/images are the 20 numbered pictures (not fast_facedetect_face.jpg)
        Case("ulffd_landmark_320x240", REFERENCE / "models" / "ulffd_landmark_320x240" / "ulffd_landmark.tflite",
             [p for p in list_files(faces, "image") if p.stem.isdigit()], 0.5, 1.0),
    ]


def ncc_times() -> dict[tuple[str, str], float]:
    out = dict(NCC_README)
    kit = REFERENCE / "ncc-outputs" / "kit_baseline.json"
    if kit.exists():
        for r in json.loads(kit.read_text())["results"]:
            out.setdefault((r["model"], r["method"]), r["compile_s"])
            out[(r["model"], r["method"], "kit")] = r["compile_s"]
    return out


class StageClock:
    """A progress callback that records when each calibration stage ends."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.ends: dict[str, float] = {}

    def __call__(self, done: int, total: int | None, stage: str) -> None:
        self.ends[stage] = time.perf_counter() - self.start

    def durations(self) -> dict[str, float]:
        out, prev = {}, 0.0
        for stage in (C.STAGE_RANGE, C.STAGE_HISTOGRAM, C.STAGE_SEARCH):
            if stage in self.ends:
                out[stage] = self.ends[stage] - prev
                prev = self.ends[stage]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true", help="per-tensor l2 search statistics")
    args = ap.parse_args()
    ncc = ncc_times()
    print(f"{'model':24s} {'method':8s} {'pts':>4s} {'imgs':>4s} {'ranges':>7s} {'histo':>7s} {'search':>7s} "
          f"{'total':>7s} {'cpu':>7s} {'ncc':>8s} {'ncc/kcc':>8s}   (seconds; total/ncc are wall)")
    for case in cases():
        g = canonicalize(import_tflite(case.tflite))
        shape = g.inputs[0].shape
        data = [[s.data] for s in iter_dataset(None, "image", shape, mean=case.mean, std=case.std, files=case.images)]
        points = [n for n in g if isinstance(n.op, O.Conv2D)]
        for method in ("no_clip", "l2"):
            cpu = time.process_time()
            clock = StageClock()
            C.calibrate(g, data, points, method=method, progress=clock)
            total = time.perf_counter() - clock.start
            cpu = time.process_time() - cpu
            d = clock.durations()
            ref = ncc.get((case.name, method))
            print(f"{case.name:24s} {method:8s} {len(points):4d} {len(data):4d} {d.get(C.STAGE_RANGE, 0):7.2f} "
                  f"{d.get(C.STAGE_HISTOGRAM, 0):7.2f} {d.get(C.STAGE_SEARCH, 0):7.2f} {total:7.2f} {cpu:7.2f} "
                  f"{ref if ref is not None else float('nan'):8.2f} {ref / total if ref else float('nan'):7.1f}x")
            if method == "l2" and args.verbose:
                verbose_search(g, data, points)
    kit = {k[:2]: v for k, v in ncc.items() if len(k) == 3}
    print("\nncc: whole-compile wall s. kit_baseline.json compile_s: "
          + ", ".join(f"{m}/{meth} {s:.1f}" for (m, meth), s in kit.items() if m in {c.name for c in cases()}))
    print("ncc-outputs/README.md (ulffd, 20 face images): no_clip 3.66 s, l2 375.83 s")


def verbose_search(g, data, points) -> None:
    """Redo the l2 search per tensor and print what each stage of it had to evaluate."""
    no_clip = C.calibrate(g, data, points)
    hist = C.HistogramObserver(no_clip)
    C.run_observer(g, data, points, hist)
    for name, h in hist.histograms.items():
        t = time.perf_counter()
        r = l2_threshold(h.counts, h.lo, h.hi)
        dt = time.perf_counter() - t
        print(f"    {name[:44]:44s} zb={h.zero_bin:4d} nz={np.count_nonzero(h.counts):4d} "
              f"candidates={r.candidates:8d} screened={r.screened:6d} summed={r.evaluated:3d} "
              f"-> [{r.lower}, {r.upper}] {dt * 1e3:6.0f} ms")


if __name__ == "__main__":
    main()
