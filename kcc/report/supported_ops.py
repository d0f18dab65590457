"""docs/supported_ops.md, generated from each frontend's one importer table (`kcc.frontend.FRONTENDS`,
then `<frontend package>.ops.IMPORTERS`): one table per input format.

The list users read must be the list the frontends accept, so it is written by this module and a
test fails when the committed file differs (`python -m kcc.report.supported_ops > docs/supported_ops.md`
regenerates it). Which ops can run on the KPU is stated next to them (`ON_KPU`); everything else
runs on the K210's CPU in float (or uint8 data movement), see docs/usage.md.
"""

from __future__ import annotations

import importlib

from kcc.frontend import FRONTENDS
from kcc.frontend.tflite.fold import FOLDERS

FAMILIES = {
    "conv": "Convolution and matrix product",
    "pool": "Windows and resampling",
    "elementwise": "Element-wise ops and activations",
    "reduce": "Reductions",
    "shape": "Shape and data movement",
    "slice": "Slicing and splitting",
    "quant": "Quantization of constants",
}

#: What the KPU path (`--inference-type uint8`, `-t k210`) does with an op (kcc.passes.legalize_kpu),
#: per frontend. The IR is the same whatever the format, so the ONNX entries restate the TFLite ones.
_CONV_KPU = ("KPU: 1x1, 2x2 and 3x3 kernels, any stride (stride 2 through the pool unit, others by a CPU slice), "
             "dilation via space-to-batch; depthwise 1x1/3x3; grouped convs and channel multipliers as dense "
             "block-diagonal layers up to 64 KiB of weights; other kernels on the CPU")
_CLAMP_KPU = "fused into the KPU layer's clamp"
_TABLE_KPU = "fused into the KPU activation table"
#: a channel concatenation of KPU layers read by KPU layers is computed in place in KPU RAM (kcc.quant.quantize)
_CONCAT_KPU = ("in KPU RAM when KPU layers produce and read it (channels, batch 1, each part starting on a "
               "line of its own), else CPU")
_MAX_POOL_KPU = ("fused into the preceding KPU layer (2x2 s2, 4x4 s4, 2x2 s1); 3x3 s2 as 2x2 s1 then 2x2 s2 when "
                 "no window reaches before the map (TF SAME on even sizes, VALID on odd ones); over a float whose "
                 "channel groups KPU layers read, one KPU layer per group")
#: kcc.passes.residual_kpu, kcc.quant.cpu_binary
_ADD = ("KPU: a residual add of KPU layers as a 1x1 layer over both; else CPU, on uint8 codes (quantized_binary) "
        "between KPU layers")
_BINARY = "CPU, on uint8 codes (quantized_binary) between KPU layers; a broadcast operand repeated to the map first"
_NEAREST = ("CPU; nearest on uint8 codes between KPU layers, an integer upsampling as concatenations of copies "
            "(into a KPU RAM concatenation when the grids agree)")
#: kcc.passes.kpu_pools.half_pixel_x2_on_kpu
_BILINEAR_X2 = ("KPU for x2 with half-pixel centres (Keras UpSampling2D, PyTorch's align_corners=False): two mean_2_s1 "
                "layers over the nearest map one sample late, which the CPU builds from the codes; other sizes CPU")
#: kcc.passes.prelu_kpu, prelu_stream, prelu_tables
_PRELU = ("KPU after a KPU layer (two 1x1 layers) or in a BlazeBlock's stream; else CPU: on maps of a few hundred "
          "pixels and more, a 256-byte table a channel on uint8 codes (table_lookup1d, runtime beta3+), else float")
ON_KPU: dict[str, dict[str, str]] = {
    "tflite": {
        "CONV_2D": "KPU: 1x1, 2x2 and 3x3 kernels, any stride (stride 2 through the pool unit, others by a CPU slice), "
                   "dilation via space-to-batch; other kernels on the CPU",
        "DEPTHWISE_CONV_2D": "KPU: depthwise 1x1/3x3; with a channel multiplier as a dense block-diagonal layer "
                             "up to 64 KiB of weights",
        "TRANSPOSE_CONV": "KPU: zero insertion + flipped kernel, when the result is a KPU-sized conv",
        "FULLY_CONNECTED": "KPU: as a 1x1 conv on a 4x4 map when both sides <= 1024 and the output is not tiny",
        "AVERAGE_POOL_2D": "fused into the preceding KPU layer (2x2 s2, 4x4 s4, 2x2 s1, global on 2x2/4x4 maps)",
        "MAX_POOL_2D": _MAX_POOL_KPU,
        "RESIZE_NEAREST_NEIGHBOR": _NEAREST,
        "RESIZE_BILINEAR": _BILINEAR_X2,
        "ADD": _ADD,
        "SUB": _BINARY,
        "MUL": _BINARY,
        "MAXIMUM": _BINARY,
        "MINIMUM": _BINARY,
        "RELU": "fused into the KPU layer's clamp",
        "RELU6": "fused into the KPU layer's clamp",
        "RELU_N1_TO_1": "fused into the KPU layer's clamp",
        "RELU_0_TO_1": "fused into the KPU layer's clamp",
        "LEAKY_RELU": "fused into the KPU activation table",
        "LOGISTIC": "fused into the KPU activation table",
        "TANH": "fused into the KPU activation table",
        "HARD_SWISH": "fused into the KPU activation table",
        "PRELU": _PRELU,
        "CONCATENATION": _CONCAT_KPU,
    },
    "onnx": {
        "Conv": _CONV_KPU,
        "ConvTranspose": "KPU: zero insertion + flipped kernel, when the result is a KPU-sized conv",
        "Gemm": "KPU: as a 1x1 conv on a 4x4 map when both sides <= 1024 and the output is not tiny",
        "MatMul": "KPU: as a 1x1 conv on a 4x4 map when both sides <= 1024 and the output is not tiny",
        "BatchNormalization": "folded into the preceding conv / gemm (then KPU), else a per-channel multiply-add",
        "AveragePool": "fused into the preceding KPU layer (2x2 s2, 4x4 s4, 2x2 s1, global on 2x2/4x4 maps)",
        "MaxPool": _MAX_POOL_KPU,
        "Resize": f"{_NEAREST}; linear: {_BILINEAR_X2}",
        "Upsample": _NEAREST,
        "Add": _ADD,
        "Sub": _BINARY,
        "Mul": _BINARY,
        "Relu": _CLAMP_KPU,
        "Clip": _CLAMP_KPU,
        "LeakyRelu": _TABLE_KPU,
        "Sigmoid": _TABLE_KPU,
        "Tanh": _TABLE_KPU,
        "HardSwish": _TABLE_KPU,
        "PRelu": _PRELU,
        "Concat": _CONCAT_KPU,
    },
    "caffe": {
        "Convolution": _CONV_KPU,
        "Deconvolution": "KPU: zero insertion + flipped kernel, when the result is a KPU-sized conv",
        "InnerProduct": "KPU: as a 1x1 conv on a 4x4 map when both sides <= 1024 and the output is not tiny",
        "Pooling": "fused into the preceding KPU layer (MAX/AVE 2x2 s2, 4x4 s4, 2x2 s1; MAX 3x3 s2 as for MaxPool)",
        "Eltwise": _ADD,
        "ReLU": _CLAMP_KPU + " (with negative_slope: the KPU activation table)",
        "Clip": _CLAMP_KPU,
        "Sigmoid": _TABLE_KPU,
        "TanH": _TABLE_KPU,
        "BatchNorm": "folded into the preceding convolution (then KPU), else a per-channel multiply-add",
        "Scale": "folded into the preceding convolution (then KPU), else a per-channel multiply-add",
        "PReLU": _PRELU,
        "Concat": _CONCAT_KPU,
    },
}

def _note(fn) -> str:
    """The first paragraph of the importer's docstring, on one line."""
    doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
    return doc.replace("|", "\\|")


def _table(name: str) -> dict:
    """The importer table of frontend `name` (its package's `ops.IMPORTERS`)."""
    return importlib.import_module(f"{FRONTENDS[name].module}.ops").IMPORTERS


def markdown() -> str:
    """The whole docs/supported_ops.md."""
    lines = ["# Supported operators", "",
             "Generated from each frontend's importer table (`kcc/frontend/<format>/ops/__init__.py`, `IMPORTERS`) "
             "by `python -m kcc.report.supported_ops > docs/supported_ops.md`; "
             "`tests/cli/test_user_facing.py` fails when this file is stale.", "",
             "A model using any other operator is rejected before compilation starts, with every unsupported "
             "operator listed at once (ONNX nodes whose inputs are all constants, such as shape arithmetic, are "
             "computed at import whatever their type). Ops not marked KPU run on the K210 CPU: see the placement "
             "section of `kcc compile --report` for what happened to each layer of a given model.", ""]
    for name, frontend in FRONTENDS.items():
        table = _table(name)
        lines += [f"## {frontend.title} (`-i {name}`)", "",
                  f"kcc imports {len(table)} {frontend.title} operators.", ""]
        by_family: dict[str, list[str]] = {}
        for op, fn in table.items():
            by_family.setdefault(fn.__module__.rsplit(".", 1)[-1], []).append(op)
        on_kpu = ON_KPU.get(name, {})
        for family, ops in by_family.items():
            lines += [f"### {FAMILIES.get(family, family)}", "", "| operator | on the K210 | notes |", "|---|---|---|"]
            for op in ops:
                lines.append(f"| `{op}` | {on_kpu.get(op, 'CPU')} | {_note(table[op])} |")
            lines.append("")
        if name == "tflite":
            lines += _tflite_folds()
    return "\n".join(lines)


def _tflite_folds() -> list[str]:
    folded = ", ".join(f"`{name}`" for name in sorted(FOLDERS))
    return ["### Folded integer shape arithmetic", "",
            "Integer (INT32/INT64) tensors never reach the K210: an op computing them is folded to a constant "
            "while importing when all its operands are constants or static shapes (kcc.frontend.tflite.fold), as "
            "in the SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE chains of TF2/Keras exports. Ops that fold: "
            f"{folded}. Integers computed from the input data are reported as unsupported.", ""]


if __name__ == "__main__":
    print(markdown(), end="")
