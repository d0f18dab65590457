"""Pre-quantized Coral MobileNets compiled without a dataset, against TFLite's own uint8 kernels.

    python bench/prequantized.py [--models a,b] [--jitter N]

For each `*_quant.tflite`: compile with no dataset (the model's own grids, kcc.quant.prequantized),
run the uint8-input kmodel on kpu_sim with the kit's `ref/*.in_u8.npy` pixels, and compare with
* TFLite uint8: top-1 agreement with meta.json `tflite_uint8_top1`;
* the float twin (`ref/*.float_out0.npy`): cosine of the softmax outputs, per image; the bar is
  meta.json `tflite_uint8_min_cosine` - 0.005; TFLite's own cosines are recomputed here;
* logits: the cosine of kcc's and TFLite uint8's logits against the float twin's (from the
  interpreters' intermediate tensors), a measure that a single close call does not dominate; and
  whether kcc's uint8 logits (the last KPU layer's codes) equal TFLite uint8's bit for bit.

`--jitter N` also runs an *ideal* uint8 implementation of the model in numpy (exact integer
accumulators, real multipliers, round to nearest; float softmax) N times with a uniform jitter of
+-0.002 output steps before every rounding (so ~0.2 % of the roundings flip), and prints the range of
its worst-image cosine: how much of the per-image figure is the implementation's rounding luck.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import refkit  # noqa: E402

import kpu_sim  # noqa: E402
from kcc.eval.kernels import KERNELS  # noqa: E402
from kcc.frontend.tflite.reader import read_tflite  # noqa: E402
from kcc.ir import kpu_ops as KO  # noqa: E402
from kcc.ir import ops as O  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.pipeline import compile_model  # noqa: E402

MODELS = ["mobilenet_v1_0.25_128", "mobilenet_v1_0.5_160", "mobilenet_v1_0.75_192"]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    return it, {t["name"]: t for t in it.get_tensor_details()}


def measure(name: str) -> dict:
    d = refkit.MODELS / name
    qpath = d / f"{name}_quant.tflite"
    meta = refkit.meta(name)
    t0 = time.perf_counter()
    res = compile_model(qpath, CompileOptions())
    compile_s = time.perf_counter() - t0
    program = kpu_sim.load(res.kmodel)
    # logits: the input of the softmax, a KPU layer downloaded then dequantized
    logits_node = next(n for n in res.graph.nodes if isinstance(n.op, KO.Dequantize) and n.type.size == 1001)
    logits_index = res.emitted.node_names.index(logits_node.name)
    codes_node = logits_node.inputs[0]
    while codes_node.name not in res.emitted.node_names:  # a reshape is a view, not a kmodel node
        codes_node = codes_node.inputs[0]
    codes_index = res.emitted.node_names.index(codes_node.name)
    tq, tdet = _interpreter(qpath)
    tf, fdet = _interpreter(d / f"{name}_dequant_float.tflite")
    logit_tensor = next(n for n in tdet if n.endswith("biases1"))
    scale, zp = tdet[logit_tensor]["quantization"]
    out_scale, out_zp = tq.get_output_details()[0]["quantization"]
    rows = []
    for s in refkit.samples(name):
        u8 = np.load(d / "ref" / f"{s.name}.in_u8.npy")
        seen: dict[int, list[np.ndarray]] = {}

        def keep_logits(i, opcode, body, outs, seen=seen):
            if i in (logits_index, codes_index):
                seen[i] = [np.array(o) for o in outs]

        out = program.run([np.ascontiguousarray(u8.transpose(0, 3, 1, 2))], trace=keep_logits)[0]
        tq.set_tensor(tq.get_input_details()[0]["index"], u8)
        tq.invoke()
        t_out = (tq.get_tensor(tq.get_output_details()[0]["index"]).astype(np.float32) - out_zp) * out_scale
        t_logits = (tq.get_tensor(tdet[logit_tensor]["index"]).astype(np.float32) - zp) * scale
        tf.set_tensor(tf.get_input_details()[0]["index"], s.x.transpose(0, 2, 3, 1))
        tf.invoke()
        f_logits = tf.get_tensor(fdet[logit_tensor]["index"])
        rows.append({
            "sample": s.name, "top1": int(np.argmax(out)) == meta["samples"][s.name]["tflite_uint8_top1"],
            "cos": refkit.compare(out, s.refs[0])[0], "tfl_cos": _cos(t_out, s.refs[0]),
            "logit_cos": _cos(seen[logits_index][0], f_logits), "tfl_logit_cos": _cos(t_logits, f_logits),
            "same_logits": bool(np.array_equal(seen[codes_index][0].ravel(),
                                               tq.get_tensor(tdet[logit_tensor]["index"]).ravel()))})
    return {"name": name, "rows": rows, "compile_s": compile_s, "bar": meta["tflite_uint8_min_cosine"] - 0.005,
            "kpu": sum(p.on_kpu for p in res.placements), "placements": len(res.placements), "size": len(res.kmodel)}


# --------------------------------------------------------------------------------- ideal uint8
def ideal_min_cosine(name: str, jitter: float, seed: int) -> float:
    """Worst-image cosine of an exact-then-round uint8 implementation with rounding jitter."""
    d = refkit.MODELS / name
    m = read_tflite(d / f"{name}_quant.tflite")
    rng = np.random.default_rng(seed)

    def rnd(v):
        v = v + rng.uniform(-jitter, jitter, v.shape)
        return np.sign(v) * np.floor(np.abs(v) + 0.5)

    worst = 1.0
    for s in refkit.samples(name):
        vals = {m.inputs[0]: np.load(d / "ref" / f"{s.name}.in_u8.npy").astype(np.float64).transpose(0, 3, 1, 2)}
        t = m.tensors
        for op in m.operators:
            if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                xt, wt, bt = (t[i] for i in op.inputs[:3])
                ot = t[op.outputs[0]]
                x = vals[xt.index] - xt.quant.zero_point[0]
                w = wt.data.astype(np.float64) - wt.quant.zero_point[0]
                dw = op.opcode == "DEPTHWISE_CONV_2D"
                wk, g = (w.transpose(3, 0, 1, 2), w.shape[3]) if dw else (w.transpose(0, 3, 1, 2), 1)
                st, k, h = op.opt("stride_h"), wk.shape[2], x.shape[2]
                total = max(0, (-(-h // st) - 1) * st + k - h)
                conv = O.Conv2D((st, st), ((total // 2, total - total // 2),) * 2, (1, 1), g, O.NO_CLAMP)
                acc = KERNELS[O.Conv2D](conv, x, wk, np.zeros(wk.shape[0])).astype(np.float64)
                acc += bt.data.astype(np.float64)[None, :, None, None]
                so, zo = float(ot.quant.scale[0]), int(ot.quant.zero_point[0])
                y = rnd(acc * float(xt.quant.scale[0]) * float(wt.quant.scale[0]) / so) + zo
                hi = min(255, zo + round(6 / so)) if op.opt("fused_activation_function") == "RELU6" else 255
                vals[ot.index] = np.clip(y, max(zo, 0) if hi < 255 else 0, hi)
            elif op.opcode == "AVERAGE_POOL_2D":
                vals[op.outputs[0]] = rnd(vals[op.inputs[0]].mean(axis=(2, 3), keepdims=True))
            elif op.opcode == "RESHAPE":
                vals[op.outputs[0]] = vals[op.inputs[0]].reshape(1, -1)
            elif op.opcode == "SOFTMAX":
                xt = t[op.inputs[0]]
                z = (vals[op.inputs[0]] - xt.quant.zero_point[0]) * xt.quant.scale[0]
                e = np.exp(z - z.max())
                vals[op.outputs[0]] = e / e.sum()
        worst = min(worst, _cos(vals[m.outputs[0]], s.refs[0]))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--jitter", type=int, default=0, help="runs of the jittered ideal uint8 reference (0: none)")
    args = ap.parse_args()
    print("| model | top-1 vs TFLite uint8 | cos min (bar) | cos mean | TFLite uint8 cos min / mean | "
          "logits cos mean: kcc / TFLite | uint8 logits = TFLite's | KPU layers | kmodel | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    details = []
    for name in args.models.split(","):
        r = measure(name)
        rows = r["rows"]
        cos = [x["cos"] for x in rows]
        tfl = [x["tfl_cos"] for x in rows]
        ok = "ok" if min(cos) >= r["bar"] else "below"
        print(f"| {name} | {sum(x['top1'] for x in rows)}/{len(rows)} | {min(cos):.5f} ({r['bar']:.5f}, {ok}) | "
              f"{np.mean(cos):.5f} | {min(tfl):.5f} / {np.mean(tfl):.5f} | "
              f"{np.mean([x['logit_cos'] for x in rows]):.5f} / {np.mean([x['tfl_logit_cos'] for x in rows]):.5f} | "
              f"{sum(x['same_logits'] for x in rows)}/{len(rows)} images | "
              f"{r['kpu']}/{r['placements']} | {r['size']} B | {r['compile_s']:.1f} |", flush=True)
        details.append(r)
    print("\nper image, cosine vs the float twin: kcc / TFLite uint8")
    for r in details:
        print(f"{r['name']}: " + ", ".join(f"{x['sample']} {x['cos']:.4f}/{x['tfl_cos']:.4f}" for x in r["rows"]))
    if args.jitter:
        print(f"\nideal uint8 reference, rounding jitter +-0.002 step, {args.jitter} runs: worst-image cosine")
        for name in args.models.split(","):
            w = sorted(ideal_min_cosine(name, 0.002, seed) for seed in range(args.jitter))
            bar = refkit.meta(name)["tflite_uint8_min_cosine"] - 0.005
            print(f"{name}: min {w[0]:.5f} median {w[len(w) // 2]:.5f} max {w[-1]:.5f}; "
                  f"below the bar {bar:.5f} in {sum(v < bar for v in w)}/{len(w)} runs", flush=True)


if __name__ == "__main__":
    main()
