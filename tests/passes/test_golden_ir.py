"""A golden printed IR per rewriting stage of `kcc.pipeline.stages`: a tiny graph the stage really
changes, run through the pipeline up to that stage; the graph before and after it, printed by
`kcc.ir.printer.format_graph` (constants included), must equal `golden/<stage>.txt`.

A refactor changes none of these files. A change of behaviour shows up here as a diff to read:
regenerate with `KCC_UPDATE_GOLDEN=1 python -m pytest tests/passes/test_golden_ir.py`, then read every
changed file against the case's comment below (what the stage should do) before keeping it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import conv_graphs
import numpy as np
import pytest

from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.ir.printer import format_graph
from kcc.options import CompileOptions
from kcc.passes.manager import CompileContext, PassManager
from kcc.pipeline import stages

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("KCC_UPDATE_GOLDEN") == "1"
RELU6 = (0.0, 6.0)


def _conv(g: Graph, x: Node, c_out: int, k: int, name: str, rng: np.random.Generator, *, stride: int = 1,
          dilation: int = 1, groups: int = 1, act: tuple[float, float] = O.NO_CLAMP) -> Node:
    """A conv with 'same' padding; a bias of 0.25 (printed exactly where the constant is small)."""
    c_in, p = x.shape[1], k // 2 * dilation
    w = g.constant(rng.uniform(-1, 1, (c_out, c_in // groups, k, k)).astype(np.float32), f"{name}/w")
    b = g.constant(np.full(c_out, 0.25, np.float32), f"{name}/b")
    op = O.Conv2D((stride, stride), ((p, p), (p, p)), (dilation, dilation), groups, act)
    return g.add(op, (x, w, b), name)


def transposes_and_a_clamp(rng: np.random.Generator) -> Graph:
    """canonicalize: look for the NHWC/NCHW transpose pair gone (the conv reads %input), the relu6
    clamp fused into the conv as act=(0, 6) under the clamp's name, and the two reshapes folded into
    one reading the conv."""
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))
    t = g.add(O.Transpose((0, 2, 3, 1)), (x,), "to_nhwc")
    t = g.add(O.Transpose((0, 3, 1, 2)), (t,), "to_nchw")
    y = g.add(O.Clamp(*RELU6), (_conv(g, t, 8, 3, "conv", rng),), "relu6")
    r = g.add(O.Reshape((1, 8, 64)), (y,), "rows")
    g.outputs = [g.add(O.Reshape((1, 512)), (r,), "flat")]
    return g


def wide_depthwise(rng: np.random.Generator) -> Graph:
    """split_channels: a 1040-channel depthwise (the KPU's channel fields stop at 1024) after the 1x1
    conv that expands to it. Look for the depthwise cut into two 520-channel depthwise convs
    (%dw/ch0_520, %dw/ch520_1040: rows 0-519 and 520-1039 of its weights and bias, same padding and
    act) concatenated along channels under its name; the expansion, 1040 channels too, cut into the
    same two groups (%expand/ch0_520, %expand/ch520_1040), each read by its depthwise group directly
    (no concatenation or slice between)."""
    g = Graph()
    x = g.input(0, (1, 2, 4, 4))
    y = _conv(g, x, 1040, 1, "expand", rng, act=RELU6)
    g.outputs = [_conv(g, y, 1040, 3, "dw", rng, groups=1040, act=RELU6)]
    return g


def dilated_region(rng: np.random.Generator) -> Graph:
    """phase_dilated: two inverted residual blocks with dilation-2 depthwise convs on 1x4x8x8. Look
    for the block input cut once into its 4 phases of 4x4 (strided slices from (0, 0), (0, 1), (1, 0),
    (1, 1) with step 2), batched into one 4x4 tensor of batch 4 (8 divides by 2: one size), every op of
    both blocks once on it, the depthwise convs now dilation 1 with padding 1 and the same weights,
    and one merge at the end (concat along channels, reshape, transpose (2, 0, 3, 1), reshape) under
    the last add's name."""
    g = Graph()
    y = g.input(0, (1, 4, 8, 8))
    for k in range(2):
        e = _conv(g, y, 4, 1, f"b{k}/expand", rng, act=RELU6)
        d = _conv(g, e, 4, 3, f"b{k}/dw", rng, dilation=2, groups=4, act=RELU6)
        y = g.add(O.Binary("add"), (_conv(g, d, 4, 1, f"b{k}/project", rng), y), f"b{k}/add")
    g.outputs = [y]
    return g


def dilated_conv(rng: np.random.Generator) -> Graph:
    """eliminate_dilated_conv: a dilation-2 conv without padding (phase_dilated leaves it: its output
    is smaller than its input). Look for it replaced by space-to-batch (no pad: 8 divides by 2;
    reshape/transpose of the 8x8
    map into 4 phases of 4x4 in the batch), a dilation-1 conv with no padding and the same weights,
    bias and act, and batch-to-space back to 1x4x4x4 under the conv's name."""
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))
    w = g.constant(rng.uniform(-1, 1, (4, 4, 3, 3)).astype(np.float32), "conv/w")
    b = g.constant(np.full(4, 0.25, np.float32), "conv/b")
    g.outputs = [g.add(O.Conv2D((1, 1), ((0, 0), (0, 0)), (2, 2), 1, RELU6), (x, w, b), "conv")]
    return g


def transpose_conv(rng: np.random.Generator) -> Graph:
    """lower_transpose_conv: look for the stride-2 conv2d_transpose replaced by zero insertion (a zero
    after every input column and row: 4x4 -> 8x8) and a stride-1 conv2d of the flipped kernel under its
    name, with its bias and act, padded k - 1 - 0 = 2 before and 0 after (the trailing inserted zero
    and the end padding of 1 take the k - 1 = 2)."""
    g = Graph()
    x = g.input(0, (1, 4, 4, 4))
    w = g.constant(rng.uniform(-1, 1, (4, 4, 3, 3)).astype(np.float32), "up/w")
    b = g.constant(np.full(4, 0.25, np.float32), "up/b")
    g.outputs = [g.add(O.Conv2DTranspose((1, 4, 8, 8), (2, 2), ((0, 1), (0, 1)), act=RELU6), (x, w, b), "up")]
    return g


def channel_multiplier(rng: np.random.Generator) -> Graph:
    """grouped_as_dense: a 3x3 depthwise conv with channel multiplier 2 (4 -> 8 channels, groups 4).
    Look for a dense conv2d under its name (groups 1), its weights [8, 4, 3, 3] zero but in the block
    of each output channel's input channel (o // 2), with its bias and act."""
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))
    w = g.constant(rng.uniform(-1, 1, (8, 1, 3, 3)).astype(np.float32), "dw2/w")
    b = g.constant(np.full(8, 0.25, np.float32), "dw2/b")
    g.outputs = [g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), groups=4, act=RELU6), (x, w, b), "dw2")]
    return g


def depthwise_5x5(rng: np.random.Generator) -> Graph:
    """decompose_kernels: a 5x5 depthwise (the KPU takes 1x1 and 3x3) behind a relu6 conv the KPU
    computes. Look for the 5x5 replaced by a `fan_kpu`: one 3x3 conv (36 <- 4, one weight of 1 per
    output channel) making nine shifted copies, read by one dense 3x3 conv (4 <- 36) with the 5x5's
    act, under its name; its note gives the estimate against the CPU. The 3x3 `expand` conv is left
    alone. (4 channels 16 wide: one 64-byte line of KPU RAM, a fan's group.)"""
    g = Graph()
    x = g.input(0, (1, 3, 16, 16))
    y = _conv(g, x, 4, 3, "expand", rng, act=RELU6)
    g.outputs = [_conv(g, y, 4, 5, "dw5", rng, groups=4, act=RELU6)]
    return g


def float_parts_and_prelu(rng: np.random.Generator) -> Graph:
    """part_groups: y = clamp(conv + 0.25, -inf, 0) + clamp(conv + 0.25, 0, inf), two parts of one 3x3
    conv (kcc.passes.kernel_forms' halves: one weights constant, each part its bias and clamp), then
    a PReLU: 12x64x64, 196608 B of float map, over GROUP_BYTES. Look for the parts, their add and the
    PReLU repeated for output channels 0-9 (%part_lo/o0, %part_hi/o0, %y/sum0/o0, %prelu/o0: weight
    rows, biases and slopes 0-9) and 10-11 (/o10), concatenated along channels under the PReLU's name."""
    g = Graph()
    x = g.input(0, (1, 1, 64, 64))
    w = g.constant(rng.uniform(-1, 1, (12, 1, 3, 3)).astype(np.float32), "w")
    parts = [g.add(O.Conv2D((1, 1), ((1, 1), (1, 1)), act=act), (x, w, g.constant(np.full(12, 0.25, np.float32),
                                                                                    f"b_{tag}")), f"part_{tag}")
             for tag, act in (("lo", (float("-inf"), 0.0)), ("hi", (0.0, float("inf"))))]
    y = g.add(O.Binary("add"), tuple(parts), "y")
    alpha = g.constant(np.linspace(-0.5, 0.5, 12, dtype=np.float32).reshape(1, 12, 1, 1), "alpha")
    g.outputs = [g.add(O.PRelu(), (y, alpha), "prelu")]
    return g


def parts_read_by_a_residual_stack(rng: np.random.Generator) -> Graph:
    """parts_stack (tests/support/conv_graphs.py, 4 channels of 8x8). Look for each part turned >= 0
    and stretched to the widest one's reach (its weights and bias times -gain for the low ones,
    %part0 and %part1), one fan layer per part making its nine copies (%dw/fan0..3: 4 -> 36
    channels), %dw reading their concatenation with weights times alpha or 1 over the gains, and
    %prelu, read by the add, a 1x1 conv over the four parts (%prelu/parts); no residual, no sum, no
    product."""
    return conv_graphs.parts_read_by_a_residual_stack(rng, 4, 8)


def strided_stem_and_softmax(rng: np.random.Generator) -> Graph:
    """A stride-2 3x3 relu6 conv, a 2x2 max pool, a 1x1 conv, then reshape and softmax on the CPU."""
    g = Graph()
    x = g.input(0, (1, 3, 16, 16))
    y = _conv(g, x, 8, 3, "stem", rng, stride=2, act=RELU6)
    y = g.add(O.Pool2D("max", (2, 2), (2, 2)), (y,), "pool")
    y = g.add(O.Reshape((1, 64)), (_conv(g, y, 4, 1, "head", rng),), "flat")
    g.outputs = [g.add(O.Softmax(1), (y,), "probs")]
    return g


def ssh_head(rng: np.random.Generator) -> Graph:
    """ulffd_landmark's SSH head: concat of a 3x3 conv (4 channels) and a 3x3 conv over a leaky relu
    (2 channels), a ReLU, then a 1x1 conv.

    concat_activations: look for the ReLU gone into both producing convs (act=(0, inf)), the
    concatenation under the ReLU's name reading them directly, the leaky relu and the head conv
    unchanged."""
    g = Graph()
    x = g.input(0, (1, 3, 8, 8))
    a = _conv(g, x, 4, 3, "a", rng)
    b = g.add(O.LeakyRelu(0.1), (_conv(g, x, 2, 3, "b1", rng),), "leaky")
    b = _conv(g, b, 2, 3, "b2", rng)
    r = g.add(O.Clamp(0.0, np.inf), (g.add(O.Concat(1), (a, b), "concat"),), "relu")
    g.outputs = [_conv(g, r, 3, 1, "head", rng)]
    return g


def grouped_5x5_hard_swish(rng: np.random.Generator) -> Graph:
    """MobileNetV3's 5x5 depthwise with hard-swish after it, over 8 channels of an expansion.

    form_activations: decompose_kernels has cut the 5x5 into two groups of 4 channels, concatenated;
    look for the hard-swish gone into each group's last layer (%dw/stacked_conv/unary,
    %dw/stacked_conv_1/unary), which legalize_kpu fuses into its activation table, and the
    concatenation under the hard-swish's name."""
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))
    y = _conv(g, x, 8, 1, "expand", rng, act=RELU6)
    y = g.add(O.Unary("hard_swish"), (_conv(g, y, 8, 5, "dw", rng, groups=8),), "hswish")
    g.outputs = [_conv(g, y, 4, 1, "project", rng)]
    return g


def prelu(rng: np.random.Generator) -> Graph:
    """lower_to_neutral (a float build): look for the PReLU as x + (alpha - 1) * min(x, 0) in 1x1
    depthwise conv2d and same-shape adds (slopes <= 1, then > 1), the last add under the PReLU's name."""
    g = Graph()
    x = g.input(0, (1, 4, 4, 4))
    alpha = g.constant(np.array([0.5, -1.5, 2.0, 0.25], np.float32).reshape(4, 1, 1), "alpha")
    g.outputs = [g.add(O.PRelu(), (x, alpha), "prelu")]
    return g


def cpu_prelu(rng: np.random.Generator) -> Graph:
    """prelu_tables: a PReLU of a float add on the CPU, 24x24 a channel. Look for each channel sliced
    (%prelu/channel0..2), its own PReLU with its slope (%prelu/table0..2; quantize makes each a
    table_lookup1d on its channel's codes) and the concatenation under the PReLU's name."""
    g = Graph()
    x = g.input(0, (1, 3, 24, 24))
    a = g.add(O.Binary("add"), (x, g.add(O.Unary("tanh"), (x,), "tanh")), "add")
    alpha = g.constant(np.array([0.25, -0.5, 1.5], np.float32).reshape(1, 3, 1, 1), "alpha")
    y = g.add(O.PRelu(), (a, alpha), "prelu")
    g.outputs = [_conv(g, y, 4, 1, "head", rng)]
    return g


def add_before_tables(rng: np.random.Generator) -> Graph:
    """table_stream: an add of two 1x1 KPU layers' outputs (%skip, and %scaled: the projection over %h,
    the product by a channel's scale folded in) whose PReLU runs as tables. Look for %add/stack, a
    kpu_stack of the two, and 1x1 KPU layers over it (%add/stream0, 1), each with weights [I I] on its
    rows (the sum's channels taken in the order of their ranges' widths, a run of like widths a layer:
    three and one here), the tables' channels (%prelu/channel0..3) slices of those layers, and the
    float add gone."""
    g = Graph()
    x = g.input(0, (1, 4, 24, 24))
    skip = _conv(g, x, 4, 1, "skip", rng)
    p = _conv(g, _conv(g, x, 4, 1, "h", rng, act=RELU6), 4, 1, "proj", rng)
    scale = g.constant(np.array([1.0, 8.0, 0.25, 1.0], np.float32).reshape(1, 4, 1, 1), "scale")
    a = g.add(O.Binary("add"), (skip, g.add(O.Binary("mul"), (p, scale), "scaled")), "add")
    alpha = g.constant(np.array([0.25, -0.5, 1.5, 0.1], np.float32).reshape(1, 4, 1, 1), "alpha")
    y = g.add(O.PRelu(), (a, alpha), "prelu")
    g.outputs = [_conv(g, y, 4, 1, "head", rng)]
    return g


def classifier_mean(rng: np.random.Generator) -> Graph:
    """global_mean_sums: the global mean of an 8x8 map that a 1x1 relu6 conv writes into KPU RAM. Look
    for two depthwise 3x3 convs at stride 2, padding 1 (%gap/block_sum0, %gap/block_sum1: 8x8 -> 4x4
    -> 2x2), each tap of the 2x2 block at offsets (0, 0)..(1, 1) of the centre 1/16 in the first
    (4 / 64: the mean of x over the 2x2 mean's 4 pixels) and 1 in the second, the rest 0, zero bias;
    then %gap, the mean over the 2x2 map, reading the second."""
    g = Graph()
    x = g.input(0, (1, 4, 8, 8))
    y = _conv(g, x, 8, 1, "last", rng, act=RELU6)
    g.outputs = [_conv(g, g.add(O.Reduce("mean", (2, 3), True), (y,), "gap"), 3, 1, "head", rng)]
    return g


@dataclass(frozen=True)
class Case:
    stage: str
    build: Callable[[np.random.Generator], Graph]
    inference_type: str = "uint8"


CASES = [
    Case("canonicalize", transposes_and_a_clamp),
    Case("grouped_as_dense", channel_multiplier),
    Case("phase_dilated", dilated_region),
    Case("global_mean_sums", classifier_mean),
    Case("split_channels", wide_depthwise),
    Case("eliminate_dilated_conv", dilated_conv),
    Case("lower_transpose_conv", transpose_conv),
    Case("concat_activations", ssh_head),
    Case("decompose_kernels", depthwise_5x5),
    Case("part_groups", float_parts_and_prelu),
    Case("parts_stack", parts_read_by_a_residual_stack),
    Case("form_activations", grouped_5x5_hard_swish),
    # legalize_kpu: look for the stride-2 stem as a KPU 3x3 conv with the left_top_2_s2 pool under
    # %stem/kpu and a strided_slice %stem after it (the KPU has no stride; its pool unit takes the even
    # rows and columns; the crop keeps all 8x8 here), the max pool behind it left on the CPU (its input
    # is cropped on the CPU), the 1x1 head a kpu_conv2d, and reshape and softmax unchanged.
    Case("legalize_kpu", strided_stem_and_softmax),
    # quantize (after calibrate): look for a uint8 input uploaded to KPU RAM, each KPU conv a kpu_layer
    # with its output grid (zero point, scale), downloads before the CPU ops, the CPU max pool on the
    # uint8 codes (dequantize and quantize with scale 1 around it), the reshape in uint8, and one
    # dequantize with the head's grid before the float softmax.
    Case("quantize", strided_stem_and_softmax),
    # global_mean_codes (after legalize_kpu): look for %gap, the mean of the last level's 2x2 map that the
    # head's KPU layer reads, as a depthwise conv (groups=8) of one 2x2 window, weights 1/4, bias 0,
    # under its name (the float reduce renamed %gap/float and gone)
    Case("global_mean_codes", classifier_mean),
    Case("prelu_tables", cpu_prelu),
    Case("table_stream", add_before_tables),
    Case("lower_to_neutral", prelu, inference_type="float"),
]


def _before_and_after(case: Case) -> tuple[str, str]:
    """The graph before and after `case.stage`, every earlier stage of the pipeline run first."""
    rng = np.random.default_rng(19)
    g = case.build(rng)
    options = CompileOptions(inference_type=case.inference_type)
    pipeline = stages(options)
    at = [s.name for s in pipeline].index(case.stage)
    shape = g.inputs[0].shape
    samples = [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(2)]
    ctx = CompileContext(options, samples=samples)
    manager = PassManager()
    g = manager.run(pipeline[:at], g, ctx)
    before = format_graph(g, constants=True)  # before the stage runs: a pass may edit in place
    g = manager.run(pipeline[at:at + 1], g, ctx)
    return before, format_graph(g, constants=True)


@pytest.mark.parametrize("case", CASES, ids=[c.stage for c in CASES])
def test_printed_ir_after_each_rewriting_stage(case: Case):
    before, after = _before_and_after(case)
    assert before != after, f"{case.stage} no longer changes its case: the golden would test nothing"
    text = f"# before {case.stage}\n{before}\n# after {case.stage}\n{after}"
    path = GOLDEN / f"{case.stage}.txt"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no {path.name}: run with KCC_UPDATE_GOLDEN=1 and read it"
    assert text == path.read_text(), f"{case.stage}'s printed IR changed: diff it against {path}"


def test_every_rewriting_stage_has_a_case():
    rewrites = {s.name for t in ("uint8", "float") for s in stages(CompileOptions(inference_type=t))
                if s.rewrites}
    assert rewrites == {c.stage for c in CASES}
