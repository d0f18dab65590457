"""How much of a model's accuracy change is noise: bench/accuracy.py's float-input build, its calibrated
ranges nudged by amounts far below any calibration decision, scored on the kit samples and on held-out
pictures.

    python bench/range_noise.py MODEL [--method l2] [--nudge SPEC ...] [--heldout] [--board]

A SPEC changes ranges after calibration (kcc.quant.policy.choose_ranges), before the copies and
concatenations take their grids from them:
  all:F              every range times F (e.g. all:1.001)
  layer:I:F          the I-th (mod count) KPU layer output whose range is a ReLU6 bound [0, 6], times F
  set:SUFFIX:HI      the upper bound of the ranges whose names end with SUFFIX, to HI
No SPEC: the build as it is. Each build prints the mean worst-output cosine over the kit samples
(bench/accuracy.py's figure) and per sample. --heldout also scores every picture of the kit's
images/ folder (resized as the model's meta.json says, PIL bilinear, x = u8 * a + b) against kcc's
float evaluation of the same float graph (checked against the TFLite references of the kit samples).
Calibration uses the kit samples only, as bench/accuracy.py does. --board scores bench/board.py's build
instead (board or l2: the uint8 picture as the kmodel's input, calibrated on the kit samples' pictures).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import refkit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import board  # noqa: E402

import kpu_sim  # noqa: E402
from kcc.eval import interpreter  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.pipeline import compile_model  # noqa: E402
from kcc.quant import policy  # noqa: E402

Ranges = dict[str, tuple[float, float]]


def nudge(ranges: Ranges, spec: str) -> Ranges:
    kind, *args = spec.split(":")
    if kind == "all":
        f = float(args[0])
        return {k: (lo * f, hi * f) for k, (lo, hi) in ranges.items()}
    if kind == "layer":
        bound = [k for k, r in ranges.items() if r == (0.0, 6.0)]
        k = bound[int(args[0]) % len(bound)]
        ranges[k] = (0.0, 6.0 * float(args[1]))
        print(f"   nudged {k}")
        return ranges
    if kind == "set":
        for k, (lo, _) in ranges.items():
            if k.endswith(args[0]):
                ranges[k] = (lo, float(args[1]))
        return ranges
    raise SystemExit(f"unknown nudge '{spec}'")


def build(name: str, method: str, spec: str | None, board_build: bool = False):
    """bench/accuracy.py's build (float input, calibrated on the kit samples) or, with `board_build`,
    bench/board.py's (the uint8 picture as input, calibrated on the kit samples' pictures)."""
    chosen = policy.choose_ranges

    def choose(*args, **kw) -> Ranges:
        ranges = chosen(*args, **kw)
        return nudge(ranges, spec) if spec else ranges

    samples = refkit.samples(name)
    policy.choose_ranges = choose
    try:
        with tempfile.TemporaryDirectory() as d:
            if board_build:
                opts, _ = board._options("l2" if method == "l2" else "board", name, samples, Path(d), len(samples))
                return compile_model(refkit.tflite_path(name), opts)
            for s in samples:
                s.x.astype(np.float32).tofile(Path(d) / f"{s.name}.bin")
            return compile_model(refkit.tflite_path(name), CompileOptions(
                dataset=Path(d), dataset_format="raw", calibrate_method=method, input_type="float"))
    finally:
        policy.choose_ranges = chosen


def picture_u8(x: np.ndarray, name: str) -> np.ndarray:
    """The uint8 picture a board build takes for the float input x = u8 * a + b."""
    inp = refkit.meta(name)["input"]
    return np.clip(np.round((x - inp.get("b", 0.0)) / inp["a"]), 0, 255).astype(np.uint8)


def pictures(name: str) -> np.ndarray:
    m = refkit.meta(name)
    n, h, w, c = m["inputs"][0]["shape"]
    a, b = m["input"]["a"], m["input"]["b"]
    files = sorted(p for p in (refkit.MODELS / "images").rglob("*") if p.suffix.lower() in (".jpg", ".png", ".bmp"))
    mode = "RGB" if c == 3 else "L"
    xs = [np.asarray(Image.open(f).convert(mode).resize((w, h), Image.BILINEAR), np.float32).reshape(h, w, c)
          for f in files]
    return np.stack([(x * np.float32(a) + np.float32(b)).transpose(2, 0, 1)[None] for x in xs])


def worst_cos(program, xs, refs, name: str | None = None) -> np.ndarray:
    """Mean worst-output cosine; with `name`, the kmodel takes the uint8 pictures of xs (a board build)."""
    ins = xs if name is None else [picture_u8(x, name) for x in xs]
    return np.array([min(refkit.compare(o, r)[0] for o, r in zip(program.run([x]), rs)) for x, rs in zip(ins, refs)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--method", default="l2")
    ap.add_argument("--nudge", action="append", default=[None], help="SPEC (repeatable; the plain build always runs)")
    ap.add_argument("--heldout", action="store_true")
    ap.add_argument("--board", action="store_true", help="bench/board.py's build: the uint8 picture as input")
    args = ap.parse_args()
    pic = args.model if args.board else None
    samples = refkit.samples(args.model)
    held = refs = None
    for spec in args.nudge:
        res = build(args.model, args.method, spec, args.board)
        program = kpu_sim.load(res.kmodel)
        kit = worst_cos(program, [s.x for s in samples], [s.refs for s in samples], pic)
        line = f"{args.model} {args.method} {spec or 'as built'}: kit {kit.mean():.5f} ({' '.join(f'{c:.5f}' for c in kit)})"
        if args.heldout:
            if held is None:
                for s in samples:
                    got = interpreter.run(res.float_graph, [s.x])
                    assert min(refkit.compare(o, r)[0] for o, r in zip(got, s.refs)) > 0.99999, s.name
                held = pictures(args.model)
                refs = [interpreter.run(res.float_graph, [x]) for x in held]
            cos = worst_cos(program, held, refs, pic)
            line += (f"; held-out {len(cos)} pictures {cos.mean():.5f} (s.e. {cos.std(ddof=1) / np.sqrt(len(cos)):.5f},"
                     f" median {np.median(cos):.5f})")
        print(line, flush=True)


if __name__ == "__main__":
    main()
