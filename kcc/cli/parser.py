"""The `kcc` argument parser: ncc v0.2's `compile` and `infer` flags (ecosystem.md §5.1-§5.2), and `info`.

Usage errors are one `error:` line (exit 1), as every other error of the command. Only argparse and
pathlib load with this module: the choices (`kcc.options`) are read when the parser is built, after
`main()` has installed the Ctrl-C handler (kcc/cli/__init__.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kcc import __version__
from kcc.errors import KccError
from kcc.frontend import FRONTENDS


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one `error:` line (exit 1) instead of exit 2 + usage."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise KccError(f"{self.prog}: {message} (see '{self.prog} --help')")

    def _print_message(self, message: str, file=None) -> None:
        # argparse swallows OSError here; a closed pipe must reach main, so that `kcc --help | true`
        # ends with the same status as `kcc info m.kmodel | true`
        if message:
            (file or sys.stderr).write(message)


def _add_dataset_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=Path, help="directory (walked recursively, sorted) or single file")
    p.add_argument("--dataset-format", choices=("image", "raw"), default="image",
                   help="image: any picture PIL reads; raw: float32 (or uint8) NCHW files of exactly one input")
    p.add_argument("--input-mean", type=float, default=None, help="x = (pixel/255 - mean) / std (default 0)")
    p.add_argument("--input-std", type=float, default=None, help="see --input-mean (default 1)")


def _add_clock_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kpu-clock", type=float, default=400.0, metavar="MHZ",
                   help="KPU clock of the latency estimate (default 400 MHz, the SDK's PLL1)")
    p.add_argument("--cpu-clock", type=float, default=400.0, metavar="MHZ",
                   help="CPU clock of the latency estimate (default 400 MHz)")


def build_parser() -> argparse.ArgumentParser:
    from kcc.options import (
        CALIBRATE_METHODS,
        DECOMPOSE_MODES,
        INFERENCE_TYPES,
        INPUT_TYPES,
        TARGETS,
        WEIGHT_EQUALIZATIONS,
    )

    parser = _Parser(prog="kcc", description="Compiler for the Kendryte K210 KPU: float .tflite -> kmodel v4.")
    parser.add_argument("-v", "--version", action="version", version=f"kcc {__version__} (kmodel v4, ncc v0.2 compatible)")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    c = sub.add_parser("compile", help="compile a model to a kmodel v4")
    c.add_argument("input", type=Path, help="input model (.tflite, ...)")
    c.add_argument("output", type=Path, help="output kmodel path")
    c.add_argument("-i", "--input-format", default=None, metavar="FORMAT",
                   help=f"input format: {', '.join(FRONTENDS)} (default: from the file's content)")
    c.add_argument("--prototxt", type=Path, default=None, metavar="FILE",
                   help="Caffe: the network definition to read with the .caffemodel (default: the .prototxt "
                        "beside it with the same stem, else the .caffemodel's own layers)")
    c.add_argument("-o", "--output-format", default="kmodel", choices=("kmodel",), help="output format (kmodel)")
    c.add_argument("-t", "--target", default="k210", choices=TARGETS,
                   help="k210: layers on the KPU where possible; cpu: everything on the CPU (default k210)")
    _add_dataset_flags(c)
    c.add_argument("--inference-type", default="uint8", choices=INFERENCE_TYPES,
                   help="uint8: quantized, KPU (needs --dataset, unless the .tflite is already quantized); "
                        "float: float32 on the CPU (default uint8)")
    c.add_argument("--input-type", default="default", choices=INPUT_TYPES,
                   help="type of the kmodel input; default = the inference type (uint8: raw RGB bytes)")
    c.add_argument("--calibrate-method", default="no_clip", choices=CALIBRATE_METHODS,
                   help="no_clip: min/max; l2: histogram threshold search, one more pass (default no_clip)")
    c.add_argument("--max-allocator-solve-secs", type=float, default=60.0,
                   help="CP-SAT budget per allocator, deterministic (same output on every run); 0 = first fit only")
    c.add_argument("--memory-report", action="store_true",
                   help="print every buffer's offset, size and lifetime (main memory and KPU RAM)")
    c.add_argument("--weights-quantize-threshold", type=float, default=64.0,
                   help="a conv whose widest per-channel weight range exceeds this stays float on the CPU (64)")
    c.add_argument("--output-quantize-threshold", type=int, default=1024,
                   help="fully-connected layers with fewer weights or outputs than this stay float (1024)")
    c.add_argument("--no-quantized-binary", action="store_true",
                   help="binary ops between KPU layers that stay on the CPU run in float (dequantized), "
                        "not on uint8 codes (nncase's quantized_binary)")
    c.add_argument("--decompose", default="accurate", choices=DECOMPOSE_MODES,
                   help="convs the KPU lacks (5x5, 7x7, ...) as 3x3 KPU layers: accurate = only in a form that "
                        "rounds no more than the CPU conv and is estimated faster, fast = the fastest form "
                        "estimated faster than the CPU conv, off = leave them on the CPU like ncc (default accurate)")
    c.add_argument("--weight-equalization", default="ncc", choices=WEIGHT_EQUALIZATIONS,
                   help="turned = KPU channels may be turned over (negative batch-norm multiplier) for finer "
                        "weight steps (opt-in: not verified on a board); ncc = every multiplier positive, as ncc writes them (default)")
    c.add_argument("--ram-budget", default=None, metavar="sdk|maixpy|MIB",
                   help="device RAM (kmodel + working memory) that faster KPU forms of 5x5 convs may fill "
                        "with their weights: sdk = 5.5 MiB (default), maixpy = 3.5 MiB, or a size in MiB; "
                        "a model over it without them still compiles, with a warning")
    c.add_argument("--allow-oversize", action="store_true",
                   help="write the kmodel even when it and its working memory exceed the K210's 6 MiB of "
                        "main memory (an error otherwise); a test build, not one a board can run")
    c.add_argument("--flash-kmodel", type=Path, default=None, metavar="FILE",
                   help="also write the kmodel in the byte order MaixPy's kpu.load_flash streams from "
                        "flash (32-bit words byte-swapped, as sipeed's le2be.py makes it), for models "
                        "over MaixPy's RAM")
    c.add_argument("--dump-ir", nargs="?", const=Path("."), type=Path, default=None, metavar="DIR",
                   help="write the IR of every stage as NN-<stage>.dot/.txt into DIR (default: .)")
    c.add_argument("--dump-weights-range", action="store_true",
                   help="print name{min, max} of the weights of every conv / fully-connected layer, like ncc")
    c.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write report.md/.json and PNG plots: placement, per-layer quantization error, "
                        "memory, estimated latency")
    _add_clock_flags(c)
    c.add_argument("-q", "--quiet", action="store_true", help="print errors only (no stage lines, no progress bars)")
    c.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    r = sub.add_parser("infer", help="run a kmodel v4 on the simulator, like `ncc infer`")
    r.add_argument("model", type=Path, help="kmodel v4 file")
    r.add_argument("output", type=Path, nargs="?", default=Path("out"),
                   help="output directory: one <input stem>.bin per input file (default ./out)")
    _add_dataset_flags(r)
    r.add_argument("-q", "--quiet", action="store_true")
    r.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    i = sub.add_parser("info", help="describe a kmodel v4: inputs, outputs, nodes, memory, runtime, MaixPy")
    i.add_argument("model", type=Path, help="kmodel v4 file")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.add_argument("--estimate", action="store_true", help="add the estimated K210 latency per node and in total")
    _add_clock_flags(i)
    i.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def dump_ir_flag(argv: list[str]) -> list[str]:
    """ncc's `--dump-ir` is a bare flag; kcc's takes an optional DIR. A model path right after it is a
    positional argument of an ncc command line, not the dump directory."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--dump-ir" and Path(out[i + 1]).suffix.lower() in (".tflite", ".kmodel"):
            out[i] = "--dump-ir=."
    return out
