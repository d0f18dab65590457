"""MobileNetV2 1.0 224 with random weights, compiled for the K210: kmodel size, working memory, estimate.

    python bench/mobilenet_v2.py [--width 1.0] [--size 224] [--samples 4] [--json OUT]

No MobileNetV2 ships in the reference kit; this builds the network (Sandler et al. 2018, table 2:
expansion 6, channels 32-16-24-32-64-96-160-320, then a 1x1 conv to 1280, a global average pool and
a 1001-way fully-connected layer) directly as kcc IR, batch-norms folded into the convolutions, TFLite
SAME padding, relu6. Weights are drawn at He scale so activations keep their range through the depth;
the calibration samples are uniform pictures in [-1, 1]. What it measures is the K210 form of the
layers (how much stays on the KPU, what falls back to the CPU, how big the kmodel is), not accuracy:
its 1280-channel 1x1 conv, its 1280-input fully-connected layer, its 224x224 stem and the 112x112x96
depthwise conv exceed the KPU's 1024 channels or its 2 MiB of KPU RAM (issue #16 item 4): kcc cuts the
conv and the stem into channel groups, reads the classifier's input as a 3x3 map (docs/kpu.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kpu_sim  # noqa: E402
from kcc import latency  # noqa: E402
from kcc.eval.interpreter import run  # noqa: E402
from kcc.ir import ops as O  # noqa: E402
from kcc.ir.graph import Graph  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.pipeline import compile_graph  # noqa: E402

RELU6 = (0.0, 6.0)
# (expansion t, channels c, repeats n, stride s) of the inverted residual blocks (table 2)
BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _depth(c: float) -> int:
    """TF's _make_divisible(c, 8)."""
    v = max(8, int(c + 4) // 8 * 8)
    return v + 8 if v < 0.9 * c else v


def _same(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max(0, (out - 1) * s + k - size)
    return total // 2, total - total // 2


def build(width: float = 1.0, size: int | tuple[int, int] = 224, seed: int = 0) -> Graph:
    """The network at `width`, on a size x size (or (height, width)) picture."""
    r = np.random.default_rng(seed)
    g = Graph()
    h, w = (size, size) if isinstance(size, int) else size
    x = g.input(0, (1, 3, h, w))

    def conv(x, oc, k, s=1, groups=1, act=RELU6, name=""):
        c, h = x.shape[1], x.shape[2]
        fan_in = (c // groups) * k * k
        w = (r.standard_normal((oc, c // groups, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = r.uniform(-0.1, 0.1, oc).astype(np.float32)
        pad = (_same(h, k, s), _same(x.shape[3], k, s))
        op = O.Conv2D((s, s), pad, groups=groups, act=act)
        return g.add(op, (x, g.constant(w, name + "/w"), g.constant(b, name + "/b")), name)

    y = conv(x, _depth(32 * width), 3, 2, name="stem")
    block = 0
    for t, c, n, s in BLOCKS:
        oc = _depth(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            inp, cin = y, y.shape[1]
            name = f"block{block}"
            if t != 1:
                y = conv(y, cin * t, 1, name=name + "/expand")
            y = conv(y, y.shape[1], 3, stride, groups=y.shape[1], name=name + "/depthwise")
            y = conv(y, oc, 1, act=O.NO_CLAMP, name=name + "/project")
            if stride == 1 and cin == oc:
                y = g.add(O.Binary("add"), (inp, y), name + "/add")
            block += 1
    last = _depth(1280 * max(1.0, width))
    y = conv(y, last, 1, name="head")
    y = g.add(O.Reduce("mean", (2, 3), False), (y,), "pool")
    w = (r.standard_normal((last, 1001)) * np.sqrt(1.0 / last)).astype(np.float32)
    logits = g.add(O.MatMul(), (y, g.constant(w, "fc/w"), g.constant(np.zeros(1001, np.float32), "fc/b")), "fc")
    g.outputs = [logits]
    return g


def measure(width: float = 1.0, size: int = 224, n_samples: int = 4) -> dict:
    g = build(width, size)
    r = np.random.default_rng(1)
    samples = [[r.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)] for _ in range(n_samples)]
    res = compile_graph(g, CompileOptions(input_type="float"), samples=samples)
    est = latency.estimate(res.emitted.model)
    cpu_convs = [p for p in res.placements if not p.on_kpu and p.op in ("conv2d", "matmul")]
    want = run(g, samples[0])[0]  # the float graph against kpu_sim, on a calibration picture
    got = kpu_sim.load(res.kmodel).run(samples[0])[0].reshape(want.shape)
    cosine = float(np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)))
    return {"model": f"mobilenet_v2_{width:g}_{size}", "kmodel_bytes": len(res.kmodel),
            "main_mem": res.emitted.model.main_mem, "device_ram": len(res.kmodel) + res.emitted.model.main_mem,
            "total_ms": est.total_ms, "kpu_ms": est.kpu_ms, "cosine": cosine,
            "top1_agrees": bool(np.argmax(got) == np.argmax(want)),
            "top_cpu": [[op, round(ms, 1)] for op, ms in est.by_opcode().items() if op != "kpu_conv2d"][:4],
            "cpu_convs": [f"{p.node}: {p.reason}" for p in cpu_convs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    m = measure(a.width, a.size, a.samples)
    mib = 1 << 20
    print(f"{m['model']}: kmodel {m['kmodel_bytes'] / 1e6:.2f} MB, working memory {m['main_mem'] / mib:.2f} MiB, "
          f"device RAM {m['device_ram'] / mib:.2f} MiB, estimated {m['total_ms']:.1f} ms (KPU {m['kpu_ms']:.1f} ms)")
    print(f"  cosine to float {m['cosine']:.5f}, top-1 {'agrees' if m['top1_agrees'] else 'differs'}")
    print("  costliest CPU opcodes:", ", ".join(f"{op} {ms:g} ms" for op, ms in m["top_cpu"]))
    for line in m["cpu_convs"]:
        print("  on the CPU:", line)
    if a.json:
        a.json.write_text(json.dumps(m, indent=1))


if __name__ == "__main__":
    main()
