"""What a K210 user gets from each kit model: estimated board time, device RAM, accuracy, kmodel hash.

    python bench/board.py [--models a,b] [--builds board,l2,float_in,float] [--calib N] [--json OUT]

Builds (each model of the reference kit, ../shared/reference/models):
  board     as a MaixPy user compiles it: uint8 camera input, the model's own reference pictures as
            the dataset (written as PNG, so the pixels are exactly the reference's uint8 input), and
            --input-mean/--input-std of its normalisation (x = u8*a + b from meta.json), no_clip;
  l2        the same with --calibrate-method l2;
  float_in  float32 input, a raw dataset of the model's reference inputs (bench/accuracy.py's build);
  float     --inference-type float (bench/memory.py's build).
Per build: the kmodel's sha256 (a refactor must leave every one unchanged), `kcc info --estimate`'s
total, KPU and CPU milliseconds and its three costliest CPU opcodes, device RAM (kmodel + working
memory: what the K210 must hold), and the worst-output cosine against the TFLite float reference,
averaged over the model's reference samples (run on kpu_sim). Models without 2-D picture input
(iris_fc, digits) take raw inputs in every build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import refkit  # noqa: E402

import kpu_sim  # noqa: E402
from kcc import kmodel as km  # noqa: E402
from kcc import latency  # noqa: E402
from kcc.errors import KccError  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.pipeline import compile_model  # noqa: E402

BUILDS = ("board", "l2", "float_in", "float")


def _pictures(name: str, samples: list, folder: Path) -> tuple[float, float] | None:
    """Write the reference uint8 inputs as PNG pictures; (mean, std) of the model's normalisation,
    or None when the model does not take an RGB/gray picture."""
    m = refkit.meta(name)
    inp = m.get("input", {})
    stems = sorted(p.name[: -len(".in_u8.npy")] for p in (refkit.MODELS / name).glob("ref/*.in_u8.npy"))
    if not stems or "a" not in inp:
        return None
    for stem in stems:
        u8 = np.load(refkit.MODELS / name / "ref" / f"{stem}.in_u8.npy")[0]
        if u8.ndim != 3 or u8.shape[-1] not in (1, 3):
            return None
        Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8).save(folder / f"{stem}.png")
    a, b = float(inp["a"]), float(inp.get("b", 0.0))
    std = 1.0 / (255.0 * a)  # x = (u8/255 - mean)/std = u8*a + b
    return -b * std, std


def _options(build: str, name: str, samples: list, folder: Path, calib: int) -> tuple[CompileOptions, bool]:
    """(options, whether the kmodel takes the uint8 picture)."""
    if build == "float":
        return CompileOptions(inference_type="float"), False
    if build in ("board", "l2"):
        norm = _pictures(name, samples, folder)
        if norm is not None:
            return CompileOptions(dataset=folder, dataset_format="image", input_mean=norm[0], input_std=norm[1],
                                  calibrate_method="l2" if build == "l2" else "no_clip"), True
    for s in samples[:calib]:
        s.x.astype(np.float32).tofile(folder / f"{s.name}.bin")
    method = "l2" if build == "l2" else "no_clip"
    return CompileOptions(dataset=folder, dataset_format="raw", input_type="float", calibrate_method=method), False


def top_cpu(est: latency.LatencyEstimate, count: int = 3) -> list[list]:
    """The `count` costliest CPU opcodes of an estimate, [opcode, ms] (kpu_conv2d is the KPU's)."""
    return [[op, ms] for op, ms in est.by_opcode().items() if op != "kpu_conv2d"][:count]


def output_resize_ms(model: km.KModel, est: latency.LatencyEstimate) -> float:
    """Estimated ms of the CPU resizes that write a model output: issue #16 lets deeplabv3 keep its
    resize of the logits to the picture's size (and its float output) on the CPU."""
    outs = {(o.memory_type, o.start, o.size) for o in model.outputs}
    return sum(e.ms for e, n in zip(est.nodes, model.nodes) if e.opcode == "resize_image"
               and (n.body.output.memory_type, n.body.output.start, n.body.output.size) in outs)


def measure(name: str, build: str, calib: int) -> dict:
    samples = refkit.samples(name)
    with tempfile.TemporaryDirectory() as d:
        opts, pictures = _options(build, name, samples, Path(d), calib)
        t0 = time.perf_counter()
        res = compile_model(refkit.tflite_path(name), opts)
        compile_s = time.perf_counter() - t0
    model = km.read(res.kmodel)
    est = latency.estimate(model)
    program = kpu_sim.load(res.kmodel)
    cos = []
    for s in samples:
        if pictures:
            u8 = np.load(refkit.MODELS / name / "ref" / f"{s.name}.in_u8.npy")
            x = np.ascontiguousarray(u8.transpose(0, 3, 1, 2))
        else:
            x = s.x
        outs = program.run([x])
        cos.append(min(refkit.compare(o, r)[0] for o, r in zip(outs, s.refs)))
    return {"model": name, "build": build, "sha256": hashlib.sha256(res.kmodel).hexdigest(),
            "total_ms": est.total_ms, "kpu_ms": est.kpu_ms, "cpu_ms": est.cpu_ms,
            "top_cpu": top_cpu(est), "output_resize_ms": output_resize_ms(model, est),
            "device_ram": len(res.kmodel) + model.main_mem, "kmodel_bytes": len(res.kmodel),
            "main_mem": model.main_mem, "cos_mean": float(np.mean(cos)), "compile_s": compile_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(refkit.model_dirs()))
    ap.add_argument("--builds", default=",".join(BUILDS))
    ap.add_argument("--calib", type=int, default=8, help="raw calibration samples (float_in, raw-input models)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    rows = []
    print("| model | build | est. ms | KPU ms | costliest CPU opcodes (ms) | device RAM MiB | cos mean | sha256 |")
    print("|---|---|---:|---:|---|---:|---:|---|")
    for name in args.models.split(","):
        for build in args.builds.split(","):
            try:
                r = measure(name, build, args.calib)
            except KccError as e:
                print(f"| {name} | {build} | error: {e.one_line()} |", flush=True)
                rows.append({"model": name, "build": build, "error": e.one_line()})
                continue
            rows.append(r)
            top = ", ".join(f"{op} {ms:.0f}" for op, ms in r["top_cpu"])
            print(f"| {name} | {build} | {r['total_ms']:.1f} | {r['kpu_ms']:.1f} | {top} | "
                  f"{r['device_ram'] / 2**20:.2f} | {r['cos_mean']:.5f} | {r['sha256'][:16]} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
