"""KPU coverage of convolutions, before and after decompose_kernels, with the accuracy of both builds.

    python bench/kpu_coverage.py [--models a,b] [--calib N] [--method no_clip]

"before" is the same compiler with decompose_kernels switched off (kernels the KPU lacks stay on
the CPU in float, as in ncc); "after" is the default build. Each model is calibrated on its own
reference samples (the first N, as float32 NCHW arrays, `input_type="float"`, like
bench/accuracy.py) and run on kpu_sim; cosine is the worst output per sample, averaged over every
sample. The KPU share counts the model's convolution MACs the CPU no longer does
(kcc.passes.coverage); the latency column is kcc.latency's estimate when that module is present.
Convolutions left on the CPU are listed with legalize_kpu's reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import refkit  # noqa: E402

import kpu_sim  # noqa: E402
from kcc import pipeline  # noqa: E402
from kcc.frontend.importer import import_tflite  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.passes.coverage import conv_coverage, model_conv_macs  # noqa: E402

DEFAULT = ["palm_detection_lite_192", "hand_landmark_lite_224", "iris_landmark_64", "hand_recrop_256"]


class _Capture(pipeline._Checkpoints):
    """Checkpoints that remember the model's conv MACs (after canonicalize) and the legalized graph."""

    def __init__(self):
        super().__init__(None)
        self.model_macs = 0
        self.legalized = None

    def __call__(self, name, g):
        g = super().__call__(name, g)
        if name == "canonicalize":
            self.model_macs = model_conv_macs(g)
        elif name == "legalize_kpu":
            self.legalized = g
        return g


def _latency_ms(res) -> float | None:
    try:
        from kcc.latency import estimate
    except ImportError:
        return None
    return estimate(res.emitted.model).total_ms


def measure(name: str, decompose: bool, calib: int, method: str) -> dict:
    samples = refkit.samples(name)
    cap = _Capture()
    saved = pipeline.decompose_kernels
    if not decompose:
        pipeline.decompose_kernels = lambda g, options=None: g
    try:
        t0 = time.perf_counter()
        res = pipeline.compile_graph(import_tflite(refkit.tflite_path(name)),
                                     CompileOptions(input_type="float", calibrate_method=method), checkpoint=cap,
                                     samples=[[s.x.astype(np.float32)] for s in samples[:calib]])
        compile_s = time.perf_counter() - t0
    finally:
        pipeline.decompose_kernels = saved
    cov = conv_coverage(cap.legalized, cap.model_macs)
    program = kpu_sim.load(res.kmodel)
    cos = [min(refkit.compare(o, r)[0] for o, r in zip(program.run([s.x]), s.refs)) for s in samples]
    cpu = [p for p in res.placements if not p.on_kpu and p.op == "conv2d"]
    return {"cov": cov, "cos_mean": float(np.mean(cos)), "cos_min": float(np.min(cos)), "n": len(cos),
            "kpu_layers": sum(n.opcode.kmodel_name == "kpu_conv2d" for n in res.emitted.model.nodes),
            "kmodel_kb": len(res.kmodel) / 1024, "latency_ms": _latency_ms(res), "compile_s": compile_s,
            "cpu_convs": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT))
    ap.add_argument("--calib", type=int, default=64, help="calibration samples per model")
    ap.add_argument("--method", default="no_clip")
    args = ap.parse_args()
    print("| model | build | KPU share of conv MACs | CPU conv MACs | KPU MACs executed / useful | kpu_conv2d | "
          "cos mean | cos min | est. latency ms | kmodel KiB | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for name in args.models.split(","):
        for decompose in (False, True):
            build = "after" if decompose else "before"
            try:
                r = measure(name, decompose, args.calib, args.method)
            except Exception as e:  # report and go on: the table is the deliverable
                print(f"| {name} | {build} | failed: {type(e).__name__}: {e} |", flush=True)
                continue
            cov = r["cov"]
            lat = f"{r['latency_ms']:.0f}" if r["latency_ms"] is not None else "-"
            print(f"| {name} | {build} | {cov.kpu_share:.1%} | {cov.cpu_macs / 1e6:.2f} M of {cov.model_macs / 1e6:.1f} M | "
                  f"{cov.kpu_overhead:.2f} | {r['kpu_layers']} | {r['cos_mean']:.5f} | {r['cos_min']:.5f} | {lat} | "
                  f"{r['kmodel_kb']:.0f} | {r['compile_s']:.1f} |", flush=True)
            notes += [f"{name} ({build}): {p.node} stays on the CPU: {p.reason}" for p in r["cpu_convs"]]
    for line in notes:
        print(f"* {line}")


if __name__ == "__main__":
    main()
