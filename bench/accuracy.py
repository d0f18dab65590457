"""Accuracy of kcc's K210 (uint8, KPU) builds against the float models, beside ncc v0.2's figures.

    python bench/accuracy.py [--methods no_clip,l2] [--models a,b] [--calib N]

Each model is calibrated on its own reference samples (raw float32 NCHW files, as ncc's baseline
was: ../shared/reference/ncc-outputs/kit_baseline.json) and run on kpu_sim; cosine is the worst
output per sample, averaged; top-1 compares argmax with the float model. Digits models also report
accuracy on the 360 held-out labelled digits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import refkit  # noqa: E402

import kpu_sim  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.pipeline import compile_model  # noqa: E402
from kcc.report.info import describe  # noqa: E402

DEFAULT = ["mobilenet_v1_0.25_128", "mobilenet_v1_0.5_160", "ulffd_landmark_320x240", "digits_cnn16_gray",
           "digits_mbnet32_rgb", "digits_ae16_gray", "iris_fc", "mobilenet_v1_0.75_192", "iris_landmark_64",
           "hand_recrop_256", "hand_landmark_lite_224", "palm_detection_lite_192", "deeplabv3_mnv2_257"]


def ncc_figures(name: str, method: str) -> dict:
    data = json.loads((refkit.REFERENCE / "ncc-outputs" / "kit_baseline.json").read_text())
    return next((r for r in data["results"] if r["model"] == name and r["method"] == method), {})


def measure(name: str, method: str, calib: int) -> dict:
    samples = refkit.samples(name)
    with tempfile.TemporaryDirectory() as d:
        for s in samples[:calib]:
            s.x.astype(np.float32).tofile(Path(d) / f"{s.name}.bin")
        t0 = time.perf_counter()
        res = compile_model(refkit.tflite_path(name), CompileOptions(
            dataset=Path(d), dataset_format="raw", calibrate_method=method, input_type="float"))
        compile_s = time.perf_counter() - t0
    warnings = describe(res.kmodel, name)["warnings"]  # `kcc info` validation (raises if invalid)
    assert not warnings, warnings
    program = kpu_sim.load(res.kmodel)
    cos, top1, preds = [], 0, []
    for s in samples:
        outs = program.run([s.x])
        cos.append(min(refkit.compare(o, r)[0] for o, r in zip(outs, s.refs)))
        top1 += int(np.argmax(outs[0]) == np.argmax(s.refs[0]))
        preds.append(int(np.argmax(outs[0])))
    classifier = refkit.meta(name).get("task") in ("imagenet1001", "digits", "iris")
    row = {"model": name, "method": method, "cos_mean": float(np.mean(cos)), "cos_min": float(np.min(cos)),
           "top1": f"{top1}/{len(samples)}" if classifier else "-", "kpu_layers": sum(p.on_kpu for p in res.placements),
           "cpu_fallbacks": sum(not p.on_kpu for p in res.placements),
           "kpu_conv2d_nodes": sum(n.opcode.kmodel_name == "kpu_conv2d" for n in res.emitted.model.nodes),
           "compile_s": compile_s}
    if name.startswith("digits") and name != "digits_ae16_gray":
        labels = np.load(refkit.MODELS / "datasets" / "digits" / "digits_test_labels.npy")
        row["digit_acc"] = float(np.mean(np.array(preds) == labels[: len(preds)]))
        row["float_acc"] = float(np.mean(np.array([np.argmax(s.refs[0]) for s in samples]) == labels[: len(samples)]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="no_clip,l2")
    ap.add_argument("--models", default=",".join(DEFAULT))
    ap.add_argument("--calib", type=int, default=64, help="calibration samples per model (digits: first N)")
    args = ap.parse_args()
    print("| model | method | cos mean | cos min | top-1 | KPU layers | CPU fallbacks | kpu_conv2d | "
          "digits acc (float) | compile s | ncc cos mean | ncc top-1 | ncc nodes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for method in args.methods.split(","):
            try:
                r = measure(name, method, args.calib)
            except Exception as e:  # report and go on: the table is the deliverable
                print(f"| {name} | {method} | failed: {type(e).__name__}: {e} |")
                continue
            ncc = ncc_figures(name, method)
            acc = f"{r['digit_acc']:.4f} ({r['float_acc']:.4f})" if "digit_acc" in r else ""
            ncc_cos = f"{ncc['cos_mean']:.5f}" if "cos_mean" in ncc else (ncc.get("error", "") or "-")
            print(f"| {name} | {method} | {r['cos_mean']:.5f} | {r['cos_min']:.5f} | {r['top1']} | {r['kpu_layers']} | "
                  f"{r['cpu_fallbacks']} | {r['kpu_conv2d_nodes']} | {acc} | {r['compile_s']:.1f} | {ncc_cos} | "
                  f"{ncc.get('top1_agree', '-')} | {ncc.get('nodes', '-')} |", flush=True)


if __name__ == "__main__":
    main()
