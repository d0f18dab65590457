"""The pass contract and the driver that runs the compiler's stages.

Every stage is `stage(graph, ctx) -> graph`: it reads what earlier stages left in the
`CompileContext` (options, samples, decisions, ranges, ...) and writes its own findings there; the
graph is the only thing it returns. A *rewrite* stage returns a new or edited graph, which the
driver verifies (`Graph.verify`) and, with `--dump-ir DIR`, writes as `NN-<stage>.dot` and
`NN-<stage>.txt`; an *analysis* stage only fills the context and returns its input.

The driver names the stage in any error it raises, as `error.kcc_stage`: a `KccError` (a problem the
user can act on) keeps its class and its one-line message, which names the file, op or tensor in the
user's terms (a stage name is compiler-internal; the CLI shows it with `--debug`); any other
exception (a compiler bug) keeps its class and traceback and also gets a note naming the stage, which
the CLI's "internal error" line repeats (PyTorch FX's PassManager does the same, architecture.md §1.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kcc.errors import KccError
from kcc.ir.graph import Graph
from kcc.ir.printer import format_graph, to_dot
from kcc.options import CompileOptions

if TYPE_CHECKING:
    from kcc.frontend.quantization import ModelQuantization
    from kcc.passes.decompose_kernels import Decision
    from kcc.passes.kernel_budget import CodesCosts
    from kcc.passes.legalize_kpu import Placement
    from kcc.quant.weight_rounding import InputMoments

Log = Callable[[str], None]
Progress = Callable[[int, "int | None", str], None]  # progress(done, total, stage), see kcc.progress
#: called with (stage name, graph) after each rewrite stage has been verified (and dumped)
StageHook = Callable[[str, Graph], None]


def _quiet(line: str) -> None:
    pass


@dataclass
class CompileContext:
    """What the stages of one compilation hand to each other."""

    options: CompileOptions = field(default_factory=CompileOptions)
    log: Log = _quiet
    progress: Progress | None = None
    #: calibration samples, each a list of input arrays (`kcc.quant.calibrate.load_samples` loads the
    #: dataset's when none are given)
    samples: list | None = None
    #: a pre-quantized model's own grids (kcc.frontend.import_model)
    quantization: ModelQuantization | None = None
    #: a pre-quantized model compiled without samples or dataset keeps its own grids: it is then
    #: computed as TFLite's uint8 kernels do, bit for bit on the KPU layers (kcc.quant.kpu_params):
    #: decomposed convs read 8-bit inputs as TFLite does (no residual channels), mean pools round
    #: on the CPU instead of flooring on the KPU
    own_grids: bool = False
    #: decompose_kernels: one per conv legalize_kpu would leave on the CPU
    decisions: list[Decision] = field(default_factory=list)
    #: decompose_kernels: the kmodel bytes its stacks made in KPU RAM may take beyond each conv's own
    #: allowance (None: MODEL_KPU_BYTES; kcc.pipeline lowers it for a model over the device RAM budget),
    #: and what they took (its estimate)
    kpu_form_budget: int | None = None
    kpu_form_spent: int = 0
    #: decompose_kernels: the kmodel bytes all convs it weighs may take together, their CPU convs'
    #: weights too (kcc.pipeline's retry of a model over its device RAM budget; None: the first try,
    #: each within its own cap and MODEL_KPU_BYTES between them)
    form_room: int | None = None
    #: decompose_kernels, within a `form_room` that holds some conv's faster form back: the least CPU
    #: cycles a byte of it saves in a conv it takes off the CPU; prelu_kpu takes no PReLU pair that
    #: saves less per kmodel byte (None: the room holds every conv's fastest form, or takes none)
    room_rate: float | None = None
    #: decompose_kernels: what every conv it weighs would take on the CPU (the least `form_room` can be),
    #: and its estimate of what each takes in its form (kcc.pipeline weighs them against the kmodel's)
    form_floor: int = 0
    form_estimates: dict[str, int] = field(default_factory=dict)
    #: kcc.pipeline's retries: the kmodel bytes each (conv, plan, reads codes) took in a try before,
    #: and decompose_kernels' estimates per byte the kmodel counted in the last try
    form_measured: dict[tuple, int] = field(default_factory=dict)
    form_scale: float = 1.0
    #: decompose_kernels: what reading each conv's float input as 8-bit codes costs the model's outputs
    #: (kcc.passes.kernel_budget.CodesCosts), measured on the first retry and carried to the next ones
    form_costs: CodesCosts | None = None
    #: decompose_kernels: how much one zero point widens each fan_kpu conv's channel groups' steps, by
    #: (conv name, channels a group), measured on the first try and carried to the retries
    batch_growth: dict[tuple[str, int], float] = field(default_factory=dict)
    #: KPU RAM each decomposed conv's form leaves to the buffers alive beside it, by conv name
    #: (kcc.pipeline's retry after a KPU RAM overflow at that form, kcc.passes.decompose_kernels)
    kpu_ram_reserve: dict[str, int] = field(default_factory=dict)
    #: decompose_kernels: the BlazeBlock adds kcc.passes.prelu_stream keeps in KPU RAM, whose PReLUs it
    #: decomposed readers of as 8-bit codes (`streamed_prelus`); None: not decided (any)
    stream_adds: set[str] | None = None
    #: phase_dilated: the names of the phase classes of one tensor, per tensor whose classes are packed
    #: into one map or cut into finer phases; parts_stack: the parts one stacked layer reads, with their
    #: copies (one grid for all of a tuple, kcc.quant.policy.share_phase_grids)
    phase_classes: list[tuple[str, ...]] = field(default_factory=list)
    #: legalize_kpu: every conv / fc / pool, on the KPU or on the CPU and why
    placements: list[Placement] = field(default_factory=list)
    #: the legalized float graph that was calibrated
    float_graph: Graph | None = None
    #: calibrated (or the pre-quantized model's) range of every tensor quantize needs, by name
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: calibrate: KPU layer name -> the ranges key of its fused activation's input (its pre-activation
    #: point, kcc.quant.calibration_view.calibration_view), for the layers that have one
    pre_activations: dict[str, str] = field(default_factory=dict)
    #: the KPU layers' input statistics, collected in the calibration pass (kcc.quant.weight_rounding)
    moments: InputMoments | None = None
    #: with options.dump_weights_range (kcc.report.weights_range.WeightRange)
    weights_ranges: list = field(default_factory=list)
    #: emit: the memory plan and node map (kcc.emit.Emitted), and the kmodel bytes
    emitted: Any = None
    kmodel: bytes = b""


StageFn = Callable[[Graph, CompileContext], Graph]


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageFn
    #: a rewrite is verified and dumped after it runs; an analysis only fills the context
    rewrites: bool = True
    #: progress line logged before the stage
    banner: str | None = None


def name_stage(error: BaseException, stage: str) -> None:
    """Say in `error` that stage `stage` raised it (once: the innermost stage is the one)."""
    if getattr(error, "kcc_stage", None) is not None:
        return
    error.kcc_stage = stage  # type: ignore[attr-defined]
    if not isinstance(error, KccError):
        error.add_note(f"in stage {stage}")


class PassManager:
    """Runs stages in order; verifies and dumps the graph after every rewrite (`checkpoint`)."""

    def __init__(self, dump_dir: Path | None = None, after: StageHook | None = None):
        self.dump_dir = dump_dir
        self.after = after
        self.names: list[str] = []  # the checkpoints so far, in order
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)

    def checkpoint(self, name: str, g: Graph) -> Graph:
        g.verify(name)
        self.names.append(name)
        if self.dump_dir is not None:
            stem = self.dump_dir / f"{len(self.names):02d}-{name}"
            stem.with_suffix(".txt").write_text(format_graph(g))
            stem.with_suffix(".dot").write_text(to_dot(g, name))
        if self.after is not None:
            self.after(name, g)
        return g

    def run(self, stages: list[Stage], g: Graph, ctx: CompileContext) -> Graph:
        for stage in stages:
            if stage.banner is not None:
                ctx.log(stage.banner)
            try:
                g = stage.run(g, ctx)
            except Exception as e:
                name_stage(e, stage.name)
                raise
            if stage.rewrites:
                self.checkpoint(stage.name, g)
        return g
