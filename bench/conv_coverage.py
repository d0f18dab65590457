"""conv_coverage: how much of a model's convolution work runs on the KPU (bench/kpu_coverage.py's KPU share).

Two counts, both over convolutions only (FULLY_CONNECTED left on the CPU is not counted):

* `model_macs`: the multiply-accumulates of the model's own convolutions (Conv2D and
  Conv2DTranspose of the graph *before* the KPU rewrites, i.e. after canonicalize);
* from the legalized graph: `cpu_macs`, the MACs of every Conv2D / Conv2DTranspose still in float
  (they run on the CPU), and `kpu_macs`, what the KPU layers execute: OC*H*W*(C/groups)*k*k at
  the layer's input resolution, since the KPU computes every pixel before the pool/crop.

The KPU share is `1 - cpu_macs / model_macs`: the part of the model's convolution work the CPU no
longer does. `kpu_macs / (model_macs - cpu_macs)` is the KPU's overhead factor: zero taps of the
decomposed kernels (36 for 25), depthwise kernels stacked into dense block-diagonal layers (J*g
MACs per output where the depthwise did 25, decompose_kernels), stride-2 layers computed at full
resolution, borders that are cropped. The KPU executes them in parallel; the share is what counts.
Fully-connected layers that legalize_kpu put on the KPU (a 1x1 conv of a reshaped [N, K, 1, 1]
map padded to 4x4) are not convolutions of the model and are left out of `kpu_macs`.

    conv2d 5x5 (CPU)        ->  4 kpu_conv2d 3x3 + adds        model 25 MACs/pixel, cpu 25 -> 0, kpu 0 -> 36
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node


def conv_macs(n: Node) -> int:
    """MACs of one Conv2D, Conv2DTranspose or FloatKpuConv node (0 for anything else)."""
    if isinstance(n.op, O.Conv2D):
        return int(n.type.size * np.prod(n.inputs[1].shape[1:]))
    if isinstance(n.op, O.Conv2DTranspose):
        # every input pixel meets every (output channel, tap) of its group
        oc, _, kh, kw = n.inputs[1].shape
        return int(n.inputs[0].type.size * (oc // n.op.groups) * kh * kw)
    if isinstance(n.op, KO.FloatKpuConv):
        x, w = n.inputs[0], n.inputs[1]
        nb, _, h, wd = x.shape
        return int(nb * h * wd * np.prod(w.shape))
    return 0


@dataclass(frozen=True)
class ConvCoverage:
    model_macs: int
    cpu_macs: int
    kpu_macs: int
    cpu_convs: tuple[str, ...]  # names of the convolutions left on the CPU

    @property
    def kpu_share(self) -> float:
        return 1.0 - self.cpu_macs / self.model_macs if self.model_macs else 1.0

    @property
    def kpu_overhead(self) -> float:
        useful = self.model_macs - self.cpu_macs
        return self.kpu_macs / useful if useful > 0 else 0.0


def model_conv_macs(g: Graph) -> int:
    """MACs of every convolution of a graph (the model's own, when given the graph before the KPU
    rewrites)."""
    return sum(conv_macs(n) for n in g.nodes)


def conv_coverage(legalized: Graph, model_macs: int) -> ConvCoverage:
    """Coverage of a model with `model_macs` convolution MACs by its legalized graph."""
    cpu = [n for n in legalized.nodes if isinstance(n.op, (O.Conv2D, O.Conv2DTranspose))]
    kpu = [n for n in legalized.nodes if isinstance(n.op, KO.FloatKpuConv) and not _fully_connected(n)]
    return ConvCoverage(model_macs, sum(conv_macs(n) for n in cpu), sum(conv_macs(n) for n in kpu),
                        tuple(n.name for n in cpu))


def _fully_connected(layer: Node) -> bool:
    """A KPU layer legalize_kpu made of a fully-connected layer (a MatMul, or a 1x1 conv of a 1x1 map):
    its input is a [N, K] vector (padded to a multiple of 9) reshaped to a [N, K/9, 3, 3] map (padded
    to 4x4; kcc.passes.kernel_forms.fc_as_conv)."""
    x = layer.inputs[0]
    while isinstance(x.op, O.Pad):
        x = x.inputs[0]
    if not isinstance(x.op, O.Reshape):
        return False
    v = x.inputs[0]
    while isinstance(v.op, O.Pad):
        v = v.inputs[0]
    return v.type.rank == 2
