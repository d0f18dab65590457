"""Estimated K210 board time of every kit model as a MaixPy user builds it, beside ncc's kmodels (issue #16).

    python bench/latency.py [--models a,b] [--json OUT]

First table: each model of ../shared/reference/models compiled as bench/board.py's `board` build
(uint8 camera input, the model's own reference pictures as the dataset, --input-mean/--input-std of its
normalisation, no_clip), then `kcc info --estimate` (kcc.latency at 400 MHz KPU and CPU clocks):
total and KPU-only milliseconds, the three costliest CPU opcodes, device RAM (kmodel + working memory)
and the issue's bound, 3 x KPU-only + 10 ms, plus what a CPU resize writing a model output costs (the
issue lets deeplabv3 keep its resize of the logits to the picture on the CPU).

Second table: the slim-320 face detector of ../shared/reference/frontends in its three formats (ONNX,
Caffe, TFLite), compiled as ncc's fast_facedetect example is (uint8 camera input, nncase's face
pictures, x = (u8 - 127) / 128), beside ncc's own kmodel of the Caffe file (nncase-examples).

Third table: MobileNetV2 1.0 224 (bench/mobilenet_v2.py: random weights at He scale, float input; no
MobileNetV2 ships in the kit), the issue's example of a model over the KPU's channels and RAM.

Fourth table: ncc's own kmodels (../shared/reference/ncc-outputs/kmodels, the `_ff` builds, and the
nncase examples) estimated the same way. ncc's MobileNet kmodels were not kept (kit_baseline.json has
only their sizes), so ulffd_landmark is the model both compilers built with the same flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import board  # noqa: E402
import mobilenet_v2  # noqa: E402
import refkit  # noqa: E402

from kcc import kmodel as km  # noqa: E402
from kcc import latency  # noqa: E402
from kcc.errors import KccError  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.pipeline import compile_model  # noqa: E402


def _ncc_rows() -> list[dict]:
    paths = sorted((refkit.REFERENCE / "ncc-outputs" / "kmodels").glob("*_ff.kmodel"))
    paths += sorted((refkit.REFERENCE / "nncase-examples").glob("*.kmodel"))
    rows = []
    for p in paths:
        data = p.read_bytes()
        model = km.read(data)
        est = latency.estimate(model)
        rows.append({"kmodel": str(p.relative_to(refkit.REFERENCE)), "total_ms": est.total_ms,
                     "kpu_ms": est.kpu_ms, "top_cpu": board.top_cpu(est),
                     "device_ram": len(data) + model.main_mem})
    return rows


FRONTEND_FILES = ("version-slim-320_simplified.onnx", "slim-320.caffemodel",
                  "version-slim-320_without_postprocessing.tflite")
SLIM_MEAN, SLIM_STD = 0.498039, 0.501961  # x = (u8 - 127) / 128, the model's normalisation (frontends/README)


def _frontend_rows() -> list[dict]:
    rows = []
    for file in FRONTEND_FILES:
        opts = CompileOptions(dataset=refkit.MODELS / "images" / "nncase_faces", input_mean=SLIM_MEAN,
                              input_std=SLIM_STD)
        res = compile_model(refkit.REFERENCE / "frontends" / file, opts)
        model = km.read(res.kmodel)
        est = latency.estimate(model)
        rows.append({"model": file, "total_ms": est.total_ms, "kpu_ms": est.kpu_ms, "top_cpu": board.top_cpu(est),
                     "device_ram": len(res.kmodel) + model.main_mem})
    return rows


def _top(row: dict) -> str:
    return ", ".join(f"{op} {ms:.0f}" for op, ms in row["top_cpu"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(refkit.model_dirs()))
    ap.add_argument("--json", type=Path, help="also write both tables as JSON")
    args = ap.parse_args()
    kcc_rows = []
    print("| model | est. ms | KPU ms | bound 3xKPU+10 (+ output resize) | costliest CPU opcodes (ms) | device RAM MiB |")
    print("|---|---:|---:|---:|---|---:|")
    for name in args.models.split(","):
        try:
            r = board.measure(name, "board", calib=8)
        except KccError as e:
            print(f"| {name} | error: {e.one_line()} |", flush=True)
            continue
        kcc_rows.append(r)
        bound = 3 * r["kpu_ms"] + 10
        resize = r["output_resize_ms"]
        print(f"| {name} | {r['total_ms']:.1f} | {r['kpu_ms']:.1f} | {bound:.1f}"
              + (f" + {resize:.1f}" if resize else "")
              + f"{'' if r['total_ms'] <= bound + resize else ' (over)'} | {_top(r)} | {r['device_ram'] / 2**20:.2f} |",
              flush=True)
    frontend_rows = _frontend_rows()
    print("\n| slim-320 file | est. ms | KPU ms | costliest CPU opcodes (ms) | device RAM MiB |")
    print("|---|---:|---:|---|---:|")
    for r in frontend_rows:
        print(f"| {r['model']} | {r['total_ms']:.1f} | {r['kpu_ms']:.1f} | {_top(r)} | {r['device_ram'] / 2**20:.2f} |")
    mv2 = mobilenet_v2.measure(1.0, 224)
    print("\n| MobileNetV2 (random weights) | est. ms | KPU ms | bound 3xKPU+10 | costliest CPU opcodes (ms) | "
          "device RAM MiB | kmodel MB |")
    print("|---|---:|---:|---:|---|---:|---:|")
    bound = 3 * mv2["kpu_ms"] + 10
    print(f"| {mv2['model']} | {mv2['total_ms']:.1f} | {mv2['kpu_ms']:.1f} | {bound:.1f}"
          f"{'' if mv2['total_ms'] <= bound else ' (over)'} | {_top(mv2)} | {mv2['device_ram'] / 2**20:.2f} | "
          f"{mv2['kmodel_bytes'] / 1e6:.2f} |", flush=True)
    ncc_rows = _ncc_rows()
    print("\n| ncc kmodel | est. ms | KPU ms | costliest CPU opcodes (ms) | device RAM MiB |")
    print("|---|---:|---:|---|---:|")
    for r in ncc_rows:
        print(f"| {r['kmodel']} | {r['total_ms']:.1f} | {r['kpu_ms']:.1f} | {_top(r)} | "
              f"{r['device_ram'] / 2**20:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"kcc": kcc_rows, "frontends": frontend_rows, "mobilenet_v2": mv2,
                                              "ncc": ncc_rows}, indent=1))


if __name__ == "__main__":
    main()
