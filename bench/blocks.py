"""Blocks of users' backbones that no kit model has, compiled as a MaixPy user would and estimated.

    python bench/blocks.py [--blocks a,b] [--sizes 224x224,320x240]

Each model is a small TFLite graph (tests/tflite_builder.py) with He-scale random weights: a 3x3
stride-2 ReLU6 stem of 16 channels on the picture, then the block named (docs/measurements.md §19):

* mp3s2: a 3x3 stride-2 max pool (TF SAME), then a 3x3 conv (ResNet's, SqueezeNet's stems);
* mpkeras: Keras' ZeroPadding2D(1) and a 3x3 stride-2 VALID max pool on a ReLU map, then a 3x3 conv;
* se2: a 1x1 conv, a squeeze-excite gate (mean, 1x1 relu, 1x1, sigmoid) multiplied in, a 1x1 conv;
* fpn: two stride-2 3x3 convs, a 1x1 conv upsampled x2 (nearest), concatenated with the lateral map,
  a 1x1 head (an FPN, YOLOv3-tiny's route);
* mnv3: MobileNetV3's block: 1x1 + hard-swish, 5x5 stride-2 depthwise + hard-swish, a squeeze-excite
  gate with hard-sigmoid, a 1x1 projection;
* csp: a 1x1 conv SPLIT in two, one half through two 3x3 convs, concatenated, a 1x1 conv;
* shufv2: ShuffleNetV2's unit: SPLIT, a branch (1x1, 3x3 depthwise, 1x1), concatenation, channel
  shuffle (5-D reshape and transpose), a 1x1 conv;
* tinyyolo: tiny YOLOv2's first three 3x3 convs, each with a 2x2 max pool, and a 1x1 head.

uint8 input (the camera's pixels in KPU RAM), `--input-mean 0.5 --input-std 0.5`, two random
pictures as the dataset. Per model and size: the estimated board time (kcc.latency) with its KPU
part, device RAM (kmodel + working memory), the CPU placements and the costliest CPU opcodes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tflite_builder import TfliteBuilder  # noqa: E402

from kcc import kmodel as km  # noqa: E402
from kcc import latency  # noqa: E402
from kcc.errors import KccError  # noqa: E402
from kcc.options import CompileOptions  # noqa: E402
from kcc.pipeline import compile_model  # noqa: E402


class _Block:
    """One model's builder: convs with He-scale weights drawn from its own seeded generator."""

    def __init__(self, name: str, h: int, w: int):
        self.rng = np.random.default_rng(zlib.crc32(f"{name}{h}x{w}".encode()))
        self.b = TfliteBuilder()
        self.x = self.b.input([1, h, w, 3])
        self.h, self.w = h, w

    def weights(self, *shape: int, fan: int | None = None) -> int:
        fan = fan or int(np.prod(shape[1:]))
        return self.b.const((self.rng.standard_normal(shape) * np.sqrt(2 / fan)).astype(np.float32))

    def conv(self, x, cin, oc, k=3, s=1, act="RELU6", pad="SAME"):
        return self.b.op("CONV_2D", [x, self.weights(oc, k, k, cin), self.b.const(np.zeros(oc, np.float32))],
                         padding=pad, stride_w=s, stride_h=s, fused_activation_function=act)

    def dw(self, x, c, k=3, s=1, act="RELU6"):
        return self.b.op("DEPTHWISE_CONV_2D", [x, self.weights(1, k, k, c, fan=k * k), self.b.const(np.zeros(c, np.float32))],
                         padding="SAME", stride_w=s, stride_h=s, depth_multiplier=1, fused_activation_function=act)

    def op(self, *args, **kwargs):
        return self.b.op(*args, **kwargs)

    def const(self, data):
        return self.b.const(np.asarray(data))

    def gate(self, y, c, hard: bool):
        """A squeeze-excite gate of map y: mean, 1x1 relu, 1x1, sigmoid (hard: relu6(x + 3) / 6)."""
        m = self.op("MEAN", [y, self.const(np.array([1, 2], np.int32))], keep_dims=True)
        f = self.conv(self.conv(m, c, c // 4, 1, act="RELU"), c // 4, c, 1, act="NONE")
        if not hard:
            return self.op("LOGISTIC", [f])
        t = self.op("ADD", [f, self.const(np.full((1,), 3.0, np.float32))], fused_activation_function="RELU6")
        return self.op("MUL", [t, self.const(np.full((1,), 1 / 6, np.float32))])


def build(name: str, h: int, w: int) -> bytes:
    m = _Block(name, h, w)
    y = m.x if name == "tinyyolo" else m.conv(m.x, 3, 16, 3, 2)
    hh, ww = h // 2, w // 2
    if name == "mp3s2":
        y = m.op("MAX_POOL_2D", [y], padding="SAME", stride_w=2, stride_h=2, filter_width=3, filter_height=3)
        y = m.conv(y, 16, 32, 3, act="RELU")
    elif name == "mpkeras":
        y = m.op("PAD", [m.conv(y, 16, 16, 1, act="RELU"), m.const(np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))])
        y = m.op("MAX_POOL_2D", [y], padding="VALID", stride_w=2, stride_h=2, filter_width=3, filter_height=3)
        y = m.conv(y, 16, 32, 3, act="RELU")
    elif name == "se2":
        y = m.conv(y, 16, 32, 1)
        y = m.conv(m.op("MUL", [y, m.gate(y, 32, hard=False)]), 32, 16, 1, act="NONE")
    elif name == "fpn":
        a = m.conv(y, 16, 32, 3, 2)
        u = m.op("RESIZE_NEAREST_NEIGHBOR", [m.conv(m.conv(a, 32, 64, 3, 2), 64, 32, 1),
                                             m.const(np.array([h // 4, w // 4], np.int32))])
        y = m.conv(m.op("CONCATENATION", [u, a], axis=3), 64, 18, 1, act="NONE")
    elif name == "mnv3":
        e = m.op("HARD_SWISH", [m.conv(y, 16, 48, 1, act="NONE")])
        d = m.op("HARD_SWISH", [m.dw(e, 48, 5, 2, act="NONE")])
        y = m.conv(m.op("MUL", [d, m.gate(d, 48, hard=True)]), 48, 24, 1, act="NONE")
    elif name in ("csp", "shufv2"):
        y = m.conv(y, 16, 32, 1)
        a, c = m.op("SPLIT", [m.const(np.array(3, np.int32)), y], n_outputs=2, num_splits=2)
        if name == "csp":
            c = m.conv(m.conv(c, 16, 16, 3), 16, 16, 3)
        else:
            c = m.conv(m.dw(m.conv(c, 16, 16, 1, act="RELU"), 16, 3, 1, act="NONE"), 16, 16, 1, act="RELU")
        y = m.op("CONCATENATION", [a, c], axis=3)
        if name == "shufv2":
            r = m.op("RESHAPE", [y, m.const(np.array([1, hh, ww, 2, 16], np.int32))], new_shape=[1, hh, ww, 2, 16])
            t = m.op("TRANSPOSE", [r, m.const(np.array([0, 1, 2, 4, 3], np.int32))])
            y = m.op("RESHAPE", [t, m.const(np.array([1, hh, ww, 32], np.int32))], new_shape=[1, hh, ww, 32])
        y = m.conv(y, 32, 16 if name == "shufv2" else 32, 1)
    elif name == "tinyyolo":
        c = 3
        for oc in (16, 32, 64):
            y = m.op("MAX_POOL_2D", [m.conv(y, c, oc, 3, act="RELU")], padding="SAME", stride_w=2, stride_h=2,
                     filter_width=2, filter_height=2)
            c = oc
        y = m.conv(y, c, 30, 1, act="NONE")
    else:
        raise SystemExit(f"error: no block '{name}'")
    m.b.output(y)
    return m.b.build()


def measure(name: str, h: int, w: int) -> str:
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / f"{name}.tflite"
        model.write_bytes(build(name, h, w))
        pictures = Path(d) / "pictures"
        pictures.mkdir()
        rng = np.random.default_rng(1)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(pictures / f"{i}.png")
        try:
            res = compile_model(model, CompileOptions(dataset=pictures, dataset_format="image",
                                                      input_mean=0.5, input_std=0.5))
        except KccError as e:
            return f"| {name} | {w}x{h} | error: {e.one_line()} | | | | |"
    kmodel = km.read(res.kmodel)
    est = latency.estimate(kmodel)
    cpu = Counter(p.op for p in res.placements if not p.on_kpu)
    top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(est.by_opcode().items())[:3])
    ram = (len(res.kmodel) + kmodel.main_mem) / 2**20
    return (f"| {name} | {w}x{h} | {est.total_ms:.1f} | {est.kpu_ms:.1f} | {ram:.2f} | "
            f"{', '.join(f'{op} {k}' for op, k in cpu.items()) or '-'} | {top} |")


BLOCKS = ["mp3s2", "mpkeras", "se2", "fpn", "mnv3", "csp", "shufv2", "tinyyolo"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", default=",".join(BLOCKS))
    ap.add_argument("--sizes", default="224x224,240x320")
    args = ap.parse_args()
    print("| block | input (W x H) | est. ms | KPU ms | device RAM MiB | CPU placements | costliest CPU opcodes (ms) |")
    print("|---|---|---:|---:|---:|---|---|")
    for name in args.blocks.split(","):
        for size in args.sizes.split(","):
            h, w = map(int, size.split("x"))
            print(measure(name, h, w), flush=True)


if __name__ == "__main__":
    main()
