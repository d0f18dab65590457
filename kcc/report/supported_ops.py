"""docs/supported_ops.md, generated from the one importer table (`kcc.frontend.tflite.ops.IMPORTERS`).

The list users read must be the list the frontend accepts, so it is written by this module and a
test fails when the committed file differs (`python -m kcc.report.supported_ops > docs/supported_ops.md`
regenerates it). Which ops can run on the KPU is stated next to them (`ON_KPU`); everything else
runs on the K210's CPU in float (or uint8 data movement), see docs/usage.md.
"""

from __future__ import annotations

from kcc.frontend.tflite.fold import FOLDERS
from kcc.frontend.tflite.ops import IMPORTERS

FAMILIES = {
    "conv": "Convolution and matrix product",
    "pool": "Windows and resampling",
    "elementwise": "Element-wise ops and activations",
    "reduce": "Reductions",
    "shape": "Shape and data movement",
    "slice": "Slicing and splitting",
    "quant": "Quantization of constants",
}

#: What the KPU path (`--inference-type uint8`, `-t k210`) does with an op (kcc.passes.legalize_kpu).
ON_KPU = {
    "CONV_2D": "KPU: 1x1, 2x2 and 3x3 kernels, any stride (stride 2 through the pool unit, others by a CPU slice), "
               "dilation via space-to-batch; other kernels on the CPU",
    "DEPTHWISE_CONV_2D": "KPU: depthwise 1x1/3x3 (multiplier 1)",
    "TRANSPOSE_CONV": "KPU: zero insertion + flipped kernel, when the result is a KPU-sized conv",
    "FULLY_CONNECTED": "KPU: as a 1x1 conv on a 4x4 map when both sides <= 1024 and the output is not tiny",
    "AVERAGE_POOL_2D": "fused into the preceding KPU layer (2x2 s2, 4x4 s4, 2x2 s1, global on 2x2/4x4 maps)",
    "MAX_POOL_2D": "fused into the preceding KPU layer (2x2 s2, 4x4 s4, 2x2 s1)",
    "RELU": "fused into the KPU layer's clamp",
    "RELU6": "fused into the KPU layer's clamp",
    "RELU_N1_TO_1": "fused into the KPU layer's clamp",
    "RELU_0_TO_1": "fused into the KPU layer's clamp",
    "LEAKY_RELU": "fused into the KPU activation table",
    "LOGISTIC": "fused into the KPU activation table",
    "TANH": "fused into the KPU activation table",
    "HARD_SWISH": "fused into the KPU activation table",
}


def _note(fn) -> str:
    doc = (fn.__doc__ or "").strip().split("\n")[0].strip()
    return doc.replace("|", "\\|")


def markdown() -> str:
    """The whole docs/supported_ops.md."""
    lines = ["# Supported TFLite operators", "",
             "Generated from `kcc.frontend.tflite.ops.IMPORTERS` by `python -m kcc.report.supported_ops > docs/supported_ops.md`; "
             "`tests/cli/test_user_facing.py` fails when this file is stale.", "",
             f"kcc imports {len(IMPORTERS)} TFLite builtin operators. A model using any other operator is rejected "
             "before compilation starts, with every unsupported operator listed at once. Ops not marked KPU run on "
             "the K210 CPU: see the placement section of `kcc compile --report` for what happened to each layer of "
             "a given model.", ""]
    by_family: dict[str, list[str]] = {}
    for name, fn in IMPORTERS.items():
        by_family.setdefault(fn.__module__.rsplit(".", 1)[-1], []).append(name)
    for family, names in by_family.items():
        lines += [f"## {FAMILIES.get(family, family)}", "", "| operator | on the K210 | notes |", "|---|---|---|"]
        for name in names:
            lines.append(f"| `{name}` | {ON_KPU.get(name, 'CPU')} | {_note(IMPORTERS[name])} |")
        lines.append("")
    folded = ", ".join(f"`{name}`" for name in sorted(FOLDERS))
    lines += ["## Folded integer shape arithmetic", "",
              "Integer (INT32/INT64) tensors never reach the K210: an op computing them is folded to a constant "
              "while importing when all its operands are constants or static shapes (kcc.frontend.tflite.fold), as "
              "in the SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE chains of TF2/Keras exports. Ops that fold: "
              f"{folded}. Integers computed from the input data are reported as unsupported.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
