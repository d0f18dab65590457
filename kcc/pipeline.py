"""compile_model(): the whole compiler, top to bottom, one visible stage per line.

    import_tflite -> canonicalize -> [load_samples -> grouped_as_dense -> phase_dilated -> split_channels
                                       -> eliminate_dilated_conv -> lower_transpose_conv -> concat_activations
                                       -> decompose_kernels -> legalize_kpu -> prelu_tables -> table_stream
                                       -> calibrate -> quantize]
                  -> lower_to_neutral
                  -> emit (plan memory, kmodel.write)

(the bracketed K210 stages run for --inference-type uint8, the default; `stages` lists them).

Every stage is `stage(graph, ctx) -> graph` over one `CompileContext` (kcc.passes.manager), run by a
`PassManager`, which verifies each rewrite and, with `--dump-ir DIR`, writes `NN-<stage>.dot` and
`NN-<stage>.txt`, and names the stage in any error.

decompose_kernels decides, before any rewrite, which BlazeBlock PReLUs kcc.passes.prelu_stream keeps in
KPU RAM (`streamed_prelus`: its decomposed readers then read 8-bit codes, without residual channels)
and records their adds in ctx.stream_adds; legalize_kpu, which runs prelu_stream, streams only those.

decompose_kernels may spend device RAM on speed (MODEL_KPU_BYTES of kmodel for stacks made in KPU
RAM); when that puts the kmodel and its working memory over the bare SDK's 5.5 MiB, `compile_graph`
runs the stages again from the imported graph with the room the budget leaves the decomposed convs
(`CompileContext.form_room`: what they took in that try, less the excess), which decompose_kernels
shares among them by estimated time saved per byte.
A decomposed conv's form that overflows KPU RAM beside the buffers alive around it (a BlazeBlock
stream's stack its output is written into) is made again with their bytes left to them
(`_run_in_kpu_ram`, `CompileContext.kpu_ram_reserve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcc import kmodel
from kcc.alloc.planner import MemoryOverflowError
from kcc.alloc.report import BUDGETS
from kcc.emit import Emitted, emit
from kcc.frontend import import_model
from kcc.frontend.quantization import ModelQuantization
from kcc.ir.graph import Graph, copy_rewriting
from kcc.kmodel.spec import BODY_ALIGNMENT, KPU_ACT_ALIGNMENT, KPU_LINE_SIZE
from kcc.latency import estimate
from kcc.options import CompileOptions
from kcc.passes.canonicalize import canonicalize
from kcc.passes.channel_split import split_channels
from kcc.passes.concat_activations import concat_activations
from kcc.passes.decompose_kernels import Decision, decompose_kernels
from kcc.passes.dilated_conv import eliminate_dilated_conv
from kcc.passes.global_mean import global_mean_codes, global_mean_sums
from kcc.passes.grouped_conv import grouped_as_dense
from kcc.passes.legalize_kpu import Placement, legalize_kpu
from kcc.passes.lower_to_neutral import lower_to_neutral
from kcc.passes.manager import CompileContext, Log, PassManager, Progress, Stage, StageHook
from kcc.passes.part_groups import part_groups
from kcc.passes.parts_stack import parts_stack
from kcc.passes.phase_dilated import phase_dilated
from kcc.passes.prelu_tables import prelu_tables
from kcc.passes.table_stream import table_stream
from kcc.passes.transpose_conv import lower_transpose_conv
from kcc.quant.calibrate import load_samples
from kcc.quant.policy import calibrate_ranges
from kcc.quant.quantize import quantize
from kcc.report.weights_range import WeightRange, weights_ranges


@dataclass
class CompileResult:
    kmodel: bytes
    graph: Graph  # the IR that was emitted
    emitted: Emitted  # memory plan and node map of the kmodel
    stages: list[str] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    float_graph: Graph | None = None  # the legalized float graph that was calibrated (uint8 only)
    weights_ranges: list[WeightRange] = field(default_factory=list)  # with options.dump_weights_range
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # calibrated ranges (uint8 only)
    report: Any = None  # kcc.report.compile_report.Report, when kcc.compile() was asked for one
    decisions: list[Decision] = field(default_factory=list)  # decompose_kernels: one per conv it weighed
    #: kmodel bytes decompose_kernels spent beyond each conv's own cap on faster KPU forms (its
    #: allowance, within CompileOptions.ram_budget): device RAM a smaller --ram-budget gives back
    ram_for_speed: int = 0

    @property
    def latency(self) -> Any:
        """Estimated K210 latency (kcc.latency.LatencyEstimate) at 400 MHz KPU and CPU clocks."""
        return estimate(self.emitted.model)


def stages(options: CompileOptions) -> list[Stage]:
    """The stages after import, in order: the K210 ones only for --inference-type uint8."""
    k210 = [
        # for split_channels (kcc.passes.fine_weights), decompose_kernels and calibrate
        Stage("load_samples", load_samples, rewrites=False, banner="3. Map layers onto the KPU (legalize)..."),
        Stage("grouped_as_dense", grouped_as_dense),  # grouped convs as dense ones, for every pass after
        # regions of dilated convs in phase space first, so that split_channels sizes the phases' layers
        Stage("phase_dilated", phase_dilated),
        Stage("global_mean_sums", global_mean_sums),  # before split_channels, which cuts its levels too
        Stage("split_channels", split_channels),
        Stage("eliminate_dilated_conv", eliminate_dilated_conv),
        Stage("lower_transpose_conv", lower_transpose_conv),
        Stage("concat_activations", concat_activations),  # activations after a concat into its producers
        Stage("decompose_kernels", decompose_kernels),
        Stage("part_groups", part_groups),  # a float sum of parts (and its PReLU) in output-channel groups
        Stage("parts_stack", parts_stack),  # a residual stack reading such a group reads its parts instead
        # again: a decomposed conv's channel groups are a concatenation too (MobileNetV3's 5x5 + hard-swish)
        Stage("form_activations", concat_activations),
        Stage("legalize_kpu", legalize_kpu),
        Stage("global_mean_codes", global_mean_codes),  # a global mean on the CPU as a conv on uint8 codes
        Stage("prelu_tables", prelu_tables),  # a float PReLU on the CPU as a table a channel on uint8 codes
        Stage("table_stream", table_stream),  # a BlazeBlock's add before such tables as KPU layers over [skip; p]
        Stage("calibrate", calibrate_ranges, rewrites=False, banner="4. Calibrate activation ranges..."),
        Stage("quantize", quantize, banner="5. Quantize..."),
    ]
    return [
        Stage("canonicalize", canonicalize, banner="2. Optimize (canonicalize)..."),
        Stage("weights_range", _weights_range, rewrites=False),
        *(k210 if options.inference_type == "uint8" else []),
        Stage("lower_to_neutral", lower_to_neutral, banner="6. Lower the remaining ops to kmodel neutral ops..."),
        Stage("emit", _emit, rewrites=False, banner="7. Plan buffers and emit kmodel v4..."),
    ]


def compile_model(model: str | Path | bytes, options: CompileOptions = CompileOptions(),
                  log: Log = lambda line: None, progress: Progress | None = None,
                  after: StageHook | None = None) -> CompileResult:
    """Compile a .tflite model into kmodel v4 bytes. `progress` sees every calibration pass, `after`
    every graph stage (kcc.passes.manager.StageHook). A pre-quantized (uint8/int8) model needs no
    dataset: its own grids replace calibration."""
    manager = PassManager(options.dump_ir, after)
    log("1. Import graph...")
    # format-specific files go to the frontend only when given (today the Caffe definition)
    extra = {"prototxt": options.prototxt} if options.prototxt is not None else {}
    imported = import_model(model, input_format=options.input_format, **extra)
    g = manager.checkpoint("import", imported.graph)
    return compile_graph(g, options, log, progress=progress, quantization=imported.quantization,
                         manager=manager)


def compile_graph(g: Graph, options: CompileOptions = CompileOptions(), log: Log = lambda line: None,
                  samples: list | None = None, progress: Progress | None = None,
                  quantization: ModelQuantization | None = None, after: StageHook | None = None,
                  manager: PassManager | None = None) -> CompileResult:
    """Every stage after import. `samples` (lists of input arrays) replaces `options.dataset`;
    `quantization` (a pre-quantized model's grids, kcc.frontend.import_model) replaces both; `after`
    sees every graph stage (unless `manager`, compile_model's, already has its own hook)."""
    manager = manager or PassManager(options.dump_ir, after)
    own_grids = (quantization is not None and quantization.fully_quantized and samples is None
                 and options.dataset is None)
    ctx = CompileContext(options, log, progress, samples, quantization, own_grids)
    source = _copy(g) if options.inference_type == "uint8" else None
    g, ctx = _run_in_kpu_ram(manager, g, ctx, source)
    budget_ram = DEVICE_RAM_BUDGET if options.ram_budget is None else options.ram_budget
    room = None  # bytes of kmodel the weighed convs may take together, as the kmodel counts them
    kept = None  # a retry's result within the budget, while one more try fills what it left
    for _ in range(ROOM_TRIES):
        ram = _device_ram(ctx)
        if source is None or not any(d.plan is not None for d in ctx.decisions):
            break
        slack = budget_ram - DEVICE_RAM_MARGIN - ram
        if ram <= budget_ram and (room is None or slack < FILL_MIN):  # within: only a retry gets filled
            break
        # decompose_kernels' forms put the model over its budget: again with the room its convs may
        # take together, measured in this try (the rest of the device RAM is not theirs), less each
        # time by what the last try was still over; toward the bare SDK's budget when no choice of
        # forms meets a smaller one (--ram-budget maixpy for BlazePalm), not at all when neither is met.
        # A retry that leaves more than FILL_MIN of the budget unused (the forms it measured for the
        # first time took less than estimated) is tried once more with that much more room, and kept
        # only where it fits and is estimated faster.
        measured = _form_bytes(ctx)
        taken = sum(measured.values())
        # what each choice took, for the next try's choices (decompose_kernels estimates the others)
        seen = {**ctx.form_measured, **{(d.node, d.plan, d.codes): measured[d.node]
                                        for d in ctx.decisions if d.node in measured}}
        scale = sum(ctx.form_estimates.get(c, 0) for c in measured) / max(taken, 1) or 1.0
        if ram <= budget_ram:
            kept, room = (g, ctx), room + slack
            log(f"   {slack} B under {budget_ram - DEVICE_RAM_MARGIN} B of device RAM: again with {room} B "
                f"for the decomposed convs ({taken} B in this try)")
        else:
            rooms = [(b, b - DEVICE_RAM_MARGIN - (ram - taken)) for b in (budget_ram, DEVICE_RAM_BUDGET)]
            target, fits = next(((b, r) for b, r in rooms if r >= ctx.form_floor / scale and ram > b),
                                (None, None))
            if target is None:
                break
            room = fits if room is None else min(fits, room - (ram - target) - DEVICE_RAM_MARGIN)
            log(f"   {ram - target} B over {target} B of device RAM: again with {room} B for the decomposed "
                f"convs ({taken} B in this try)")
        ctx = _again(ctx, form_room=room, form_measured=seen, form_scale=scale)
        g, ctx = _run_in_kpu_ram(manager, _copy(source), ctx, source)
        if kept is not None:  # the fill is the last try: kept unless it fits and is faster
            if _device_ram(ctx) > budget_ram or estimate(ctx.emitted.model).total_ms >= estimate(
                    kept[1].emitted.model).total_ms:
                g, ctx = kept
            break
    return CompileResult(ctx.kmodel, g, ctx.emitted, manager.names, ctx.placements, ctx.float_graph,
                         ctx.weights_ranges, ctx.ranges, decisions=ctx.decisions, ram_for_speed=ctx.kpu_form_spent)


def _copy(g: Graph) -> Graph:
    return copy_rewriting(g, Graph(), {}, lambda n: None)


def _again(ctx: CompileContext, **changes: Any) -> CompileContext:
    """A fresh context for another run of the stages: ctx's inputs and what its retries carry
    (allowance, room, the choices' measured bytes, codes costs, KPU RAM reserves), with `changes`."""
    carried = dict(kpu_form_budget=ctx.kpu_form_budget, form_room=ctx.form_room, form_measured=ctx.form_measured,
                   form_scale=ctx.form_scale, form_costs=ctx.form_costs, kpu_ram_reserve=ctx.kpu_ram_reserve)
    return CompileContext(ctx.options, ctx.log, ctx.progress, ctx.samples, ctx.quantization, ctx.own_grids,
                          **{**carried, **changes})


#: tries of the stages after the first for a model over its device RAM budget
ROOM_TRIES = 4
#: unused device RAM after a retry worth one more try (about a 256-channel 6x6 5x5's fastest form)
FILL_MIN = 128 * 1024
#: tries of `_run_in_kpu_ram` after the first
KPU_RAM_RETRIES = 4


def _run_in_kpu_ram(manager: PassManager, g: Graph, ctx: CompileContext,
                    source: Graph | None) -> tuple[Graph, CompileContext]:
    """Run the stages on g. A decomposed conv's form checks its own KPU RAM (its copies, input and
    output: kcc.passes.kernel_plans), not the buffers alive beside it: a BlazeBlock stream's stack
    that its output is written into, a residual add's. When the memory plan then overflows KPU RAM
    at such a form, run the stages again from `source` (the graph as imported) with that conv's forms
    leaving the excess to the others (CompileContext.kpu_ram_reserve), at most KPU_RAM_RETRIES times;
    any other overflow is the model's."""
    for attempt in range(KPU_RAM_RETRIES + 1):
        try:
            return manager.run(stages(ctx.options), g, ctx), ctx
        except MemoryOverflowError as e:
            convs = [] if source is None or e.space != "KPU RAM" or attempt == KPU_RAM_RETRIES else _forms_alive(ctx, e)
            if not convs:
                raise
            reserve = dict(ctx.kpu_ram_reserve)
            for conv in convs:  # at least what is alive beside its form, and the excess more each time
                beside = sum(size for name, size in e.live if not _named_after(name, conv))
                reserve[conv] = max(reserve.get(conv, 0) + -(-e.excess // KPU_LINE_SIZE) * KPU_LINE_SIZE, beside)
            ctx.log(f"   KPU RAM overflow at {', '.join(convs)}: again with "
                    f"{', '.join(str(reserve[c]) for c in convs)} B of KPU RAM left beside "
                    f"{'its form' if len(convs) == 1 else 'their forms'}")
            ctx = _again(ctx, kpu_ram_reserve=reserve)
            g = _copy(source)
    raise AssertionError("unreachable")


def _forms_alive(ctx: CompileContext, e: MemoryOverflowError) -> list[str]:
    """The decomposed convs (their nodes are named after them, kcc.passes.kernel_forms) with a tensor
    alive at the overflow's peak."""
    convs = {d.node for d in ctx.decisions if d.plan is not None}
    return sorted(c for c in convs if any(_named_after(name, c) for name, _ in e.live))


def _named_after(name: str, conv: str) -> bool:
    return name == conv or name.startswith(conv + "/")


#: device RAM (kmodel + working memory) decompose_kernels' extra stacks may fill unless
#: CompileOptions.ram_budget says otherwise: the bare SDK's budget (kcc.alloc.report.BUDGETS), less
#: DEVICE_RAM_MARGIN when a first try went over it
DEVICE_RAM_BUDGET = dict(BUDGETS)["bare SDK"]
DEVICE_RAM_MARGIN = 32 * 1024
#: mean zero bytes before a KPU layer's activation table (256-aligned) when its body starts on any
#: 8-byte file offset (kcc.kmodel.spec)
ACT_GAP = (KPU_ACT_ALIGNMENT - BODY_ALIGNMENT) // 2


def _device_ram(ctx: CompileContext) -> int:
    return len(ctx.kmodel) + ctx.emitted.model.main_mem


def _form_bytes(ctx: CompileContext) -> dict[str, int]:
    """Kmodel bytes of each conv decompose_kernels weighed (its nodes are named after it: its form's,
    kcc.passes.kernel_forms, or the CPU conv) in the kmodel just emitted: body, node header and, for a
    KPU layer, its activation table's mean alignment gap instead of the one it has at offset 0."""
    convs = {d.node for d in ctx.decisions}
    out: dict[str, int] = {}
    for name, node in zip(ctx.emitted.node_names, ctx.emitted.model.nodes):
        # the conv itself, or the longest conv name it extends (names may nest)
        conv = max((c for c in convs if name == c or name.startswith(c + "/")), key=len, default=None)
        if conv is not None:
            size = len(node.body.pack()) + 8
            if isinstance(node.body, kmodel.KpuConv2D):  # where the body lands is not known in advance
                size += ACT_GAP - kmodel.aligned_table_padding(0, node.body.layer.out_channels)[1]
            out[conv] = out.get(conv, 0) + size
    return out


def _weights_range(g: Graph, ctx: CompileContext) -> Graph:
    """Analysis: the weights' ranges (`kcc info`'s --dump-weights-range) of the canonical graph."""
    if ctx.options.dump_weights_range:
        ctx.weights_ranges = weights_ranges(g)
    return g


def _emit(g: Graph, ctx: CompileContext) -> Graph:
    """The memory plan and the kmodel (kcc.emit), into ctx.emitted and ctx.kmodel."""
    ctx.emitted = emit(g, ctx.options.max_allocator_solve_secs)
    ctx.kmodel = kmodel.write(ctx.emitted.model)
    return g
