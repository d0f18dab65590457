"""Compile options: one frozen dataclass, every field with ncc v0.2's meaning and default.

ecosystem.md §5.1 lists ncc's flags; the CLI maps them 1:1 onto these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INFERENCE_TYPES = ("uint8", "float")
INPUT_TYPES = ("default", "uint8", "float")
CALIBRATE_METHODS = ("no_clip", "l2")
TARGETS = ("k210", "cpu")
DECOMPOSE_MODES = ("accurate", "fast", "off")
WEIGHT_EQUALIZATIONS = ("turned", "ncc")


@dataclass(frozen=True)
class CompileOptions:
    #: "k210" or "cpu". Both write target 1 into the header, as ncc does (kmodel_v4.md §4); "cpu"
    #: keeps every layer off the KPU.
    target: str = "k210"
    #: The model's format, a key of kcc.frontend.FRONTENDS (ncc's `-i`); None = from the file's content.
    input_format: str | None = None
    #: The network definition (.prototxt) of a Caffe model; None = the file beside the .caffemodel
    #: with the same stem, if any, else the .caffemodel's own layer definitions (as ncc reads it).
    prototxt: Path | None = None
    #: "uint8" (quantized, KPU) or "float" (neutral float32 ops on the CPU).
    inference_type: str = "uint8"
    #: Type of the kmodel input: "default" = the inference type.
    input_type: str = "default"
    #: Calibration dataset (directory, walked recursively in sorted order, or one file).
    dataset: Path | None = None
    dataset_format: str = "image"
    #: Image/raw preprocessing `(x - mean) / std`, x in [0, 1] for images. Giving either flag also
    #: fixes the input range to [(0-mean)/std, (1-mean)/std] instead of measuring it (ncc semantics).
    input_mean: float | None = None
    input_std: float | None = None
    calibrate_method: str = "no_clip"
    #: CP-SAT time budget per allocator in seconds; 0 = first fit only.
    max_allocator_solve_secs: float = 60.0
    #: Convs whose weight range (max - min) exceeds this stay off the KPU (ncc code default 64).
    weights_quantize_threshold: float = 64.0
    #: Ops with fewer output elements than this stay float (ncc default 1024).
    output_quantize_threshold: int = 1024
    #: Binary ops left on the CPU between KPU layers in float, not on uint8 codes (kcc.quant.cpu_binary).
    no_quantized_binary: bool = False
    #: Convs the KPU lacks (5x5, 7x7, oversized stems; kcc.passes.decompose_kernels): "accurate" puts
    #: one on the KPU in a form that rounds no more than the float conv on the CPU, when that is
    #: faster; "fast" in the fastest form that is faster, however it rounds; "off" never (ncc v0.2).
    decompose: str = "accurate"
    #: How each KPU layer's output channels are scaled onto its one weight grid
    #: (kcc.quant.kpu_params.equalize_weights): "turned" also turns channels over (a negative
    #: batch-norm multiplier) and picks the grid for the least relative step; "ncc" keeps every
    #: multiplier positive and scales into the raw weights' range, as ncc v0.2 does.
    weight_equalization: str = "ncc"
    #: Device RAM (kmodel + working memory, bytes) that faster forms of the convs the KPU lacks may
    #: fill (decompose_kernels' stacks made in KPU RAM trade kmodel bytes for CPU time); None = the
    #: bare SDK's budget (kcc.alloc.report.BUDGETS). A model over it without them still compiles.
    ram_budget: int | None = None
    #: Directory for the per-stage IR dumps (.dot and .txt); None = no dump.
    dump_ir: Path | None = None
    dump_weights_range: bool = False

    @property
    def mean(self) -> float:
        return 0.0 if self.input_mean is None else self.input_mean

    @property
    def std(self) -> float:
        return 1.0 if self.input_std is None else self.input_std

    @property
    def effective_input_type(self) -> str:
        return self.inference_type if self.input_type == "default" else self.input_type
