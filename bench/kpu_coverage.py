"""KPU coverage of convolutions, before and after decompose_kernels, with the accuracy of both builds.

    python bench/kpu_coverage.py [--models a,b] [--builds before,after] [--calib N] [--method no_clip]

"before" is the same compiler with `--decompose off` (kernels the KPU lacks stay on the CPU in
float, as in ncc); "after" is the default build (`--decompose accurate`); `--builds` picks them.
Each model is calibrated on its own reference samples (the first N, as float32 NCHW arrays,
`input_type="float"`, like bench/accuracy.py, with --input-mean/--input-std putting the input grid
on the pixels: pixel_grid) and run on kpu_sim; cosine is the worst output per sample against the
TFLite reference, averaged over the samples. These models have 3 reference samples each, and the worst
output is often a 63-value landmark vector, so that cosine moves by +-0.005 with any small change of
rounding; the `extra` columns therefore also compare both builds with the float model (kcc's float
interpreter) on up to --extra further pictures of ../shared/reference/models/images (resized like
the references; `--extra-source jitter`: perturbed copies of the model's own reference pictures,
jittered_references; `--extra-source crops`: each picture and its four corners, picture_crops, with
standard errors over pictures, the largest independent set): SQNR of the worst output in dB,
averaged, and the same cosine; per model, the after - before difference of that SQNR paired
picture by picture, with its standard error (a few-output model's per-picture SQNR moves by several
dB with any rounding, so a mean difference within ~2 standard errors says little), and the same for
each output of a multi-output model, for each build against "before".
The KPU share counts the model's convolution MACs the CPU no longer does (bench/conv_coverage.py);
the latency column is kcc.latency's estimate when that module is present. Convolutions left on
the CPU are listed with the placement's reason. `--attribute` adds, per model, the SQNR of the float
model with only the decomposed convs' inputs rounded to 8 bits, and of the default build's float
graph with only their weights rounded (weight_rounding_sqnr): the parts of the "after" build's error
that decomposition itself brings (a float conv on the CPU reads its inputs unrounded and keeps its
float weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import refkit  # noqa: E402
from conv_coverage import conv_coverage, model_conv_macs  # noqa: E402

import kpu_sim  # noqa: E402
from kcc import pipeline  # noqa: E402
from kcc.dataset import IMAGE_SUFFIXES, load_image  # noqa: E402
from kcc.eval.interpreter import run  # noqa: E402
from kcc.frontend.tflite.importer import import_tflite  # noqa: E402
from kcc.ir import ops as O  # noqa: E402
from kcc.ir.graph import Graph  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.passes.canonicalize import canonicalize  # noqa: E402

DEFAULT = ["palm_detection_lite_192", "hand_landmark_lite_224", "iris_landmark_64", "hand_recrop_256"]


class _Capture:
    """A stage hook (kcc.passes.manager.StageHook) that remembers the model's conv MACs (after
    canonicalize), the convs decompose_kernels rewrote, and the legalized graph."""

    def __init__(self):
        self.model_macs = 0
        self.legalized = None
        self.decomposed: set[str] = set()  # names of the convs decompose_kernels replaced
        self._convs: dict[int, str] = {}

    def __call__(self, name, g):
        if name == "canonicalize":
            self.model_macs = model_conv_macs(g)
        elif name == "lower_transpose_conv":  # the stage before decompose_kernels
            self._convs = {id(n): n.name for n in g.nodes if isinstance(n.op, O.Conv2D)}
        elif name == "decompose_kernels":  # a replaced conv is gone; its replacement took its name
            present = {id(n) for n in g.nodes}
            self.decomposed = {conv for key, conv in self._convs.items() if key not in present}
        elif name == "legalize_kpu":
            self.legalized = g


def _latency_ms(res) -> float | None:
    try:
        from kcc.latency import estimate
    except ImportError:
        return None
    return estimate(res.emitted.model).total_ms


def _pixel_model(name: str) -> tuple[np.float32, np.float32, Graph]:
    """(a, b, float graph) of a model whose input is x = u8 * a + b (its meta.json)."""
    inp = refkit.meta(name).get("input", {})
    a, b = np.float32(inp.get("a", 1.0)), np.float32(inp.get("b", 0.0))
    return a, b, canonicalize(import_tflite(refkit.tflite_path(name)))


def extra_inputs(name: str, count: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(input, float outputs) for up to `count` pictures: x = u8 * a + b of the resized picture."""
    if count <= 0:
        return []
    a, b, g = _pixel_model(name)
    files = sorted(p for p in (refkit.MODELS / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for p in files[:count]:
        x = (load_image(p, g.inputs[0].shape, np.uint8).astype(np.float32) * a + b).astype(np.float32)
        out.append((x, run(g, [x])))
    return out


def jittered_references(name: str, count: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(input, float outputs) for `count` perturbed copies of the model's reference pictures, in the
    model's own domain (a hand crop stays a hand crop): each the pixels of reference k % n, mirrored
    for odd k, shifted by up to 8 pixels (edges repeated) and scaled by 0.85..1.15 in brightness,
    from a fixed seed."""
    if count <= 0:
        return []
    a, b, g = _pixel_model(name)
    refs = refkit.samples(name)
    rng = np.random.default_rng(7)
    out = []
    for k in range(count):
        u8 = np.rint((refs[k % len(refs)].x - b) / a)  # NCHW pixels
        if k % 2:
            u8 = u8[..., ::-1]
        dy, dx = rng.integers(-8, 9, 2)
        u8 = np.pad(u8, ((0, 0), (0, 0), (8, 8), (8, 8)), mode="edge")[..., 8 + dy:8 + dy + u8.shape[2], 8 + dx:8 + dx + u8.shape[3]]
        u8 = np.clip(np.rint(u8 * rng.uniform(0.85, 1.15)), 0, 255)
        x = np.ascontiguousarray(u8.astype(np.float32) * a + b, np.float32)
        out.append((x, run(g, [x])))
    return out


#: views per picture of `picture_crops`: the whole picture and its four corners
CROP_VIEWS = 5


def picture_crops(name: str, count: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(input, float outputs) for CROP_VIEWS views of each of up to `count` pictures of
    ../shared/reference/models/images, consecutive per picture: the picture, then its four corner
    windows of 70% of its width and height, each resized to the input. Five times the pictures of
    extra_inputs; views of one picture are alike, so differences are judged per picture
    (`_clustered`)."""
    if count <= 0:
        return []
    from PIL import Image

    a, b, g = _pixel_model(name)
    _, c, h, w = g.inputs[0].shape
    files = sorted(p for p in (refkit.MODELS / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for p in files[:count]:
        with Image.open(p) as im:
            im = im.convert("L" if c == 1 else "RGB")
            cw, ch = round(im.width * 0.7), round(im.height * 0.7)
            boxes = [(0, 0, im.width, im.height)] + [(x0, y0, x0 + cw, y0 + ch) for y0 in (0, im.height - ch)
                                                      for x0 in (0, im.width - cw)]
            for box in boxes:
                pixels = np.asarray(im.crop(box).resize((w, h), Image.BILINEAR), np.uint8)
                chw = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
                x = np.ascontiguousarray((chw[None].astype(np.float32) * a + b).astype(np.float32))
                out.append((x, run(g, [x])))
    return out


def pixel_grid(name: str) -> dict:
    """--input-mean/--input-std that put the input grid on the model's pixels, x = u8*a + b.

    A K210 camera delivers uint8 pixels, and ncc users give mean/std for exactly that. Without them
    the input range would be calibrated on these few samples (e.g. [0, 254/255]) and the first KPU
    layer would round every pixel, a loss the CPU-fallback build, whose stem reads the float input,
    never has: comparing the two builds would then mostly measure the input grid."""
    inp = refkit.meta(name).get("input", {})
    if "a" not in inp:
        return {}
    std = 1.0 / (255.0 * float(inp["a"]))
    return {"input_mean": -float(inp["b"]) * std, "input_std": std}


def _sqnr_db(got: np.ndarray, ref: np.ndarray) -> float:
    err = float(np.sum((got.reshape(ref.shape).astype(np.float64) - ref) ** 2))
    return 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / max(err, 1e-30))


def _paired(before: np.ndarray, after: np.ndarray) -> str:
    """Mean after - before over the same pictures, with its standard error."""
    d = after - before
    return f"{d.mean():+.2f} dB +- {d.std(ddof=1) / np.sqrt(len(d)):.2f} (standard error)"


def _clustered(before: np.ndarray, after: np.ndarray, views: int) -> str:
    """Mean after - before over pictures of `views` consecutive views each, with the standard error
    of the per-picture means (views of one picture are not independent)."""
    d = (after - before).reshape(-1, views).mean(axis=1)
    return f"{d.mean():+.2f} dB +- {d.std(ddof=1) / np.sqrt(len(d)):.2f} (over {len(d)} pictures)"


BUILDS = {"before": "off", "after": "accurate"}  # build -> --decompose


def measure(name: str, build: str, calib: int, method: str, extra: list | None = None) -> dict:
    samples = refkit.samples(name)
    cap = _Capture()
    t0 = time.perf_counter()
    res = pipeline.compile_graph(import_tflite(refkit.tflite_path(name)),
                                 CompileOptions(input_type="float", calibrate_method=method, decompose=BUILDS[build],
                                                **pixel_grid(name)),
                                 after=cap, samples=[[s.x.astype(np.float32)] for s in samples[:calib]])
    compile_s = time.perf_counter() - t0
    cov = conv_coverage(cap.legalized, cap.model_macs)
    program = kpu_sim.load(res.kmodel)
    cos = [min(refkit.compare(o, r)[0] for o, r in zip(program.run([s.x]), s.refs)) for s in samples]
    cpu = [p for p in res.placements if not p.on_kpu and p.op == "conv2d"]
    snr, ext_cos, per_output = [], [], []
    for x, refs in extra or []:
        outs = program.run([x])
        per_output.append([_sqnr_db(o, r) for o, r in zip(outs, refs)])
        snr.append(min(per_output[-1]))
        ext_cos.append(min(refkit.compare(o, r)[0] for o, r in zip(outs, refs) if r.size > 1))
    return {"cov": cov, "cos_mean": float(np.mean(cos)), "cos_min": float(np.min(cos)), "n": len(cos),
            "cos_samples": {s.name: c for s, c in zip(samples, cos)},
            "ext_snr": float(np.mean(snr)) if snr else None, "ext_cos": float(np.mean(ext_cos)) if ext_cos else None,
            "n_extra": len(snr), "snr_outputs": np.array(per_output),
            "kpu_layers": sum(n.opcode.kmodel_name == "kpu_conv2d" for n in res.emitted.model.nodes),
            "kmodel_kb": len(res.kmodel) / 1024, "latency_ms": _latency_ms(res), "compile_s": compile_s,
            "cpu_convs": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT))
    ap.add_argument("--builds", default=",".join(BUILDS), help="before (--decompose off), after (accurate)")
    ap.add_argument("--calib", type=int, default=64, help="calibration samples per model")
    ap.add_argument("--method", default="no_clip")
    ap.add_argument("--extra", type=int, default=24, help="further pictures compared with the float model")
    ap.add_argument("--extra-source", choices=tuple(SOURCES), default="images",
                    help="images: ../shared/reference/models/images; jitter: perturbed copies of the model's "
                         "own reference pictures (jittered_references); crops: each picture and its four "
                         "corners (picture_crops, --extra pictures)")
    ap.add_argument("--attribute", action="store_true",
                    help="also: the float model with only the decomposed convs' inputs rounded "
                         "(input_rounding_sqnr), and only their weights (weight_rounding_sqnr)")
    args = ap.parse_args()
    print("| model | build | KPU share of conv MACs | CPU conv MACs | KPU MACs executed / useful | kpu_conv2d | "
          "cos mean | cos min | extra: SQNR dB | extra: cos | est. latency ms | kmodel KiB | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for name in args.models.split(","):
        extra = SOURCES[args.extra_source](name, args.extra)
        outputs, per_sample = {}, {}
        for build in args.builds.split(","):
            try:
                r = measure(name, build, args.calib, args.method, extra)
            except Exception as e:  # report and go on: the table is the deliverable
                print(f"| {name} | {build} | failed: {type(e).__name__}: {e} |", flush=True)
                continue
            cov = r["cov"]
            lat = f"{r['latency_ms']:.0f}" if r["latency_ms"] is not None else "-"
            print(f"| {name} | {build} | {cov.kpu_share:.1%} | {cov.cpu_macs / 1e6:.2f} M of {cov.model_macs / 1e6:.1f} M | "
                  f"{cov.kpu_overhead:.2f} | {r['kpu_layers']} | {r['cos_mean']:.5f} | {r['cos_min']:.5f} | "
                  f"{_fmt(r['ext_snr'], '.1f')} | {_fmt(r['ext_cos'], '.5f')} | {lat} | "
                  f"{r['kmodel_kb']:.0f} | {r['compile_s']:.1f} |", flush=True)
            outputs[build] = r["snr_outputs"]  # [pictures, outputs]
            per_sample[build] = r["cos_samples"]
            reasons = Counter(p.reason for p in r["cpu_convs"])
            notes += [f"{name} ({build}): {k} conv(s) stay on the CPU: {why}" for why, k in reasons.items()]
        if len(per_sample) > 1:  # the cosine columns average 3 pictures: which one moved
            notes.append(f"{name}: worst-output cosine per reference sample ({' / '.join(per_sample)}): " + "; ".join(
                f"{sample} " + " / ".join(f"{cos[sample]:.5f}" for cos in per_sample.values())
                for sample in next(iter(per_sample.values()))))
        for build in [b for b in outputs if b != "before"] if "before" in outputs else []:
            before, after = outputs["before"], outputs[build]
            if len(after) < 2:
                continue
            worst_b, worst_a = before.min(axis=1), after.min(axis=1)
            notes.append(f"{name}: extra SQNR {build} - before, paired over {len(worst_a)} pictures: "
                         f"{_paired(worst_b, worst_a)}; {build} better on {(worst_a > worst_b).sum()}")
            sizes = [r.size for r in extra[0][1]]
            if len(sizes) > 1:  # the worst output is often a 1-value score, whose SQNR swings most
                notes.append(f"{name}: per output, {build} (size: before -> {build}, paired difference): " + "; ".join(
                    f"{size}: {before[:, j].mean():.1f} -> {after[:, j].mean():.1f}, "
                    f"{_paired(before[:, j], after[:, j])}" for j, size in enumerate(sizes)))
            if args.extra_source == "crops":
                notes.append(f"{name}: per output, {build} - before, per picture ({CROP_VIEWS} views each): " + "; ".join(
                    f"{size}: {_clustered(before[:, j], after[:, j], CROP_VIEWS)}" for j, size in enumerate(sizes)))
            if args.extra_source == "jitter":  # copies of one scene are alike: the standard errors
                scenes = refkit.samples(name)  # above understate the spread, so each scene on its own
                d = after - before
                per_scene = [f"{sc.name} " + " / ".join(f"{v:+.2f}" for v in d[k::len(scenes)].mean(axis=0))
                             for k, sc in enumerate(scenes)]
                notes.append(f"{name}: per reference scene, {build} - before, per output "
                             f"({', '.join(map(str, sizes))}): " + "; ".join(per_scene))
        if args.attribute:
            for method in ("no_clip", "l2"):
                count, db = input_rounding_sqnr(name, method, extra, args.calib)
                notes.append(f"{name}: float model with only the {count} inputs of its >3x3 convs rounded to "
                             f"8 bits ({method} ranges): extra SQNR {db:.1f} dB")
            count, dbs = weight_rounding_sqnr(name, extra, args.calib)
            if count:
                notes.append(f"{name}: the default build's float graph with only the weights of the {count} KPU "
                             f"layers of its decomposed convs in 8 bits (as kcc rounds them): extra SQNR per output "
                             + " / ".join(f"{v:.1f}" for v in dbs) + " dB")
    for line in notes:
        print(f"* {line}")


def input_rounding_sqnr(name: str, method: str, extra: list, calib: int) -> tuple[int, float]:
    """What a decomposition costs by itself: the float model with only the inputs of its kernels
    larger than 3x3 (the convs decompose_kernels puts on the KPU) rounded to 8 bits on the grid
    `method` calibrates, everything else float. Returns (tensors rounded, SQNR dB of the worst output,
    averaged over `extra`). The graph input is left alone (its grid is the pixels', pixel_grid)."""
    from kcc.ir import kpu_ops as KO
    from kcc.quant.calibrate import calibrate
    from kcc.quant.params import get_quant_param

    g = canonicalize(import_tflite(refkit.tflite_path(name)))
    convs = [n for n in g.nodes if isinstance(n.op, O.Conv2D) and n.inputs[1].is_constant
             and max(n.inputs[1].shape[2:]) > 3 and not isinstance(n.inputs[0].op, O.Input)]
    points = list({id(c.inputs[0]): c.inputs[0] for c in convs}.values())
    ranges = calibrate(g, [[s.x.astype(np.float32)] for s in refkit.samples(name)[:calib]], points, method)
    for x in points:
        q = get_quant_param(*ranges[x.name])
        first = next(u for u in g.nodes if any(i is x for i in u.inputs))
        rounded = g.insert_before(first, KO.Dequantize(q.zero_point, q.scale),
                                  (g.insert_before(first, KO.Quantize(q.zero_point, q.scale), (x,), x.name + "/q"),),
                                  x.name + "/dq")
        for c in convs:
            if c.inputs[0] is x:
                c.inputs = (rounded, *c.inputs[1:])
    snr = [min(_sqnr_db(o, r) for o, r in zip(run(g, [x]), refs)) for x, refs in extra]
    return len(points), float(np.mean(snr)) if snr else float("nan")


SOURCES = {"images": extra_inputs, "jitter": jittered_references, "crops": picture_crops}


def weight_rounding_sqnr(name: str, extra: list, calib: int) -> tuple[int, list[float]]:
    """What the 8-bit weights of a decomposition cost by themselves (a float conv on the CPU keeps
    its float weights): the default build's legalized float graph, calibrated as the compiler does,
    with only the KPU layers of decomposed convs computing with their weights as kcc.quant.kpu_params
    rounds them (equalized, data-aware rounding, bias correction); everything else float. Returns
    (layers, SQNR dB of each output against the unrounded graph, averaged over `extra`)."""
    import dataclasses

    from kcc.ir import kpu_ops as KO
    from kcc.passes.manager import CompileContext
    from kcc.quant.kpu_params import layer_weights
    from kcc.quant.policy import calibrate_ranges

    options = CompileOptions(input_type="float", **pixel_grid(name))
    samples = [[s.x.astype(np.float32)] for s in refkit.samples(name)[:calib]]
    cap = _Capture()  # the default build's own stages, up to its legalized float graph
    pipeline.compile_graph(import_tflite(refkit.tflite_path(name)), options, after=cap, samples=samples)
    g = cap.legalized
    ctx = CompileContext(options, samples=samples)
    calibrate_ranges(g, ctx)  # the calibration's input statistics, as the compile collected them
    moments = ctx.moments
    refs = [run(g, [x]) for x, _ in extra]
    prefixes = tuple(conv + "/" for conv in cap.decomposed)
    layers = [n for n in g.nodes if isinstance(n.op, KO.FloatKpuConv)
              and (n.name in cap.decomposed or n.name.startswith(prefixes))]
    rounded = {}  # id(constant) -> (node, rounded data), all from the float weights (stacks share weights)
    for n in layers:
        _, w, b = n.inputs
        lw = layer_weights(w.data, b.data, n.op.depthwise, moments.layers.get(n.name))
        rounded[id(w)] = (w, lw.dequantized().astype(np.float32))
        rounded[id(b)] = (b, lw.bias.astype(np.float32))
    for node, data in rounded.values():
        node.op = dataclasses.replace(node.op, data=data)
    snr = [[_sqnr_db(o, r) for o, r in zip(run(g, [x]), ref)] for (x, _), ref in zip(extra, refs)]
    return len(layers), [float(v) for v in np.mean(snr, axis=0)] if snr else []


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


if __name__ == "__main__":
    main()
