"""Backbones K210 users train, at the input sizes they train them for: compiled, estimated, checked.

    python bench/input_sizes.py [--json OUT]

The kit's models come at one size each. Users' own detectors and classifiers come at their camera's:
320x240 (QVGA, the MaixPy default), 224x224, and squares up to 320. Three networks with random
weights at He scale (as bench/mobilenet_v2.py), float input, one calibration picture:

* MobileNet v1 (Howard et al. 2017, table 1) at width 0.5 and 1.0: a 3x3 stride-2 stem with TFLite
  SAME padding, 13 depthwise-separable blocks, a global average pool and a 1001-way classifier;
* MobileNetV2 (bench/mobilenet_v2.py) at width 0.5 and 1.0;
* a tiny YOLOv2 (Redmon and Farhadi 2017) cut to the K210's RAM: 3x3 convs of 16..512 channels with
  leaky ReLUs, each of the first five followed by a 2x2 max pool, and a 1x1 head of 125 channels
  (5 anchors x 25).

Per model and size: whether it compiles (else the error line), the estimated board time (kcc.latency)
with its KPU part, issue #16's bound (3 x KPU + 10 ms), device RAM (kmodel + working memory), the
cosine of kpu_sim's output against the float graph on the calibration picture, and the costliest CPU
opcodes. A model over the K210's RAM still compiles here (compile_graph does not enforce the budget
`kcc compile` does), so that its time can be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mobilenet_v2  # noqa: E402

import kpu_sim  # noqa: E402
from kcc import latency  # noqa: E402
from kcc.errors import KccError  # noqa: E402
from kcc.eval.interpreter import run  # noqa: E402
from kcc.ir import ops as O  # noqa: E402
from kcc.ir.graph import Graph  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.pipeline import compile_graph  # noqa: E402

RELU6 = (0.0, 6.0)
#: MobileNet v1's depthwise-separable blocks (output channels, stride), table 1
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
SIZES = [(224, 224), (240, 320), (320, 240), (256, 256), (288, 288), (320, 320)]


class _Builder:
    """Random He-scale convs with TFLite SAME padding, into one graph."""

    def __init__(self, shape: tuple[int, int, int, int], seed: int = 0):
        self.r = np.random.default_rng(seed)
        self.g = Graph()
        self.x = self.g.input(0, shape)

    def conv(self, x, oc: int, k: int, s: int = 1, groups: int = 1, act=RELU6, name: str = ""):
        c = x.shape[1]
        fan_in = (c // groups) * k * k
        w = (self.r.standard_normal((oc, c // groups, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = self.r.uniform(-0.1, 0.1, oc).astype(np.float32)
        pad = (mobilenet_v2._same(x.shape[2], k, s), mobilenet_v2._same(x.shape[3], k, s))
        return self.g.add(O.Conv2D((s, s), pad, groups=groups, act=act),
                          (x, self.g.constant(w, name + "/w"), self.g.constant(b, name + "/b")), name)

    def classifier(self, y):
        g = self.g
        y = g.add(O.Reduce("mean", (2, 3), False), (y,), "pool")
        w = (self.r.standard_normal((y.shape[1], 1001)) * np.sqrt(1.0 / y.shape[1])).astype(np.float32)
        g.outputs = [g.add(O.MatMul(), (y, g.constant(w, "fc/w"), g.constant(np.zeros(1001, np.float32), "fc/b")), "fc")]
        return g


def mobilenet_v1(width: float, h: int, w: int) -> Graph:
    b = _Builder((1, 3, h, w))
    y = b.conv(b.x, int(32 * width), 3, 2, name="stem")
    for i, (c, s) in enumerate(V1_BLOCKS):
        y = b.conv(y, y.shape[1], 3, s, groups=y.shape[1], name=f"block{i}/depthwise")
        y = b.conv(y, int(c * width), 1, name=f"block{i}/pointwise")
    return b.classifier(y)


def tiny_yolo_v2(h: int, w: int) -> Graph:
    b = _Builder((1, 3, h, w))
    y = b.x
    for i, c in enumerate((16, 32, 64, 128, 256, 512, 512)):
        y = b.g.add(O.LeakyRelu(0.1), (b.conv(y, c, 3, act=O.NO_CLAMP, name=f"conv{i}"),), f"leaky{i}")
        if i < 5:
            y = b.g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,), f"pool{i}")
    b.g.outputs = [b.conv(y, 125, 1, act=O.NO_CLAMP, name="head")]
    return b.g


MODELS = {
    "mobilenet_v1_0.5": lambda h, w: mobilenet_v1(0.5, h, w),
    "mobilenet_v1_1.0": lambda h, w: mobilenet_v1(1.0, h, w),
    "mobilenet_v2_0.5": lambda h, w: mobilenet_v2.build(0.5, (h, w)),
    "mobilenet_v2_1.0": lambda h, w: mobilenet_v2.build(1.0, (h, w)),
    "tiny_yolo_v2": tiny_yolo_v2,
}


def measure(name: str, h: int, w: int) -> dict:
    g = MODELS[name](h, w)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
    row = {"model": name, "input": f"{w}x{h}"}
    try:
        res = compile_graph(g, CompileOptions(input_type="float"), samples=[[x]])
    except KccError as exc:
        return {**row, "error": str(exc)}
    est = latency.estimate(res.emitted.model)
    want = run(g, [x])[0].ravel()
    got = kpu_sim.load(res.kmodel).run([x])[0].ravel()
    cpu = sorted(((ms, op) for op, ms in est.by_opcode().items() if op != "kpu_conv2d"), reverse=True)[:3]
    return {**row, "total_ms": est.total_ms, "kpu_ms": est.kpu_ms,
            "device_ram": len(res.kmodel) + res.emitted.model.main_mem,
            "cosine": float(np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want))),
            "top_cpu": [[op, round(ms, 1)] for ms, op in cpu]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    print("| model | input (W x H) | est. ms | KPU ms | bound 3xKPU+10 | device RAM MiB | cosine | costliest CPU opcodes (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in MODELS:
        for h, w in SIZES:
            m = measure(name, h, w)
            rows.append(m)
            if "error" in m:
                print(f"| {name} | {m['input']} | error: {m['error'][:120]} | | | | | |", flush=True)
                continue
            bound = 3 * m["kpu_ms"] + 10
            print(f"| {name} | {m['input']} | {m['total_ms']:.1f} | {m['kpu_ms']:.1f} | {bound:.1f}"
                  f"{'' if m['total_ms'] <= bound else ' (over)'} | {m['device_ram'] / (1 << 20):.2f} | "
                  f"{m['cosine']:.4f} | {', '.join(f'{op} {ms:g}' for op, ms in m['top_cpu'])} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
