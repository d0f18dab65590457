"""Activation calibration: the range of every quantization point (kpu_semantics.md §4.2).

The float graph runs on the dataset through `kcc.eval.interpreter.run`; an observer hook records the
value of each *point* node (no graph edits, nothing written). Two strategies, one per
`--calibrate-method`, both `observe(name, value)` then `ranges()`:

* `MinMaxObserver` (no_clip): range = union of per-sample ranges,
  `[min_s lo_s, max_s hi_s]` with `(lo_s, hi_s) = get_range(value_s)` (finite values only; the max
  starts at FLT_MIN, so an all-negative tensor gets hi = 1.2e-38, §4.1). Order-independent.
* `HistogramObserver` (l2): a second pass bins every value into a 2048-bin histogram over
  `fixup_range(no_clip range)`; `ranges()` then runs the l2 threshold search
  (`kcc.quant.l2_search`, exact ncc result) and returns `[p_lower, p_upper]`.

l2 needs the dataset twice. `samples` may be a callable returning a fresh iterable (called once per
pass), a re-iterable collection (list, tuple, ...), or a one-shot iterator/generator, which l2
materialises in memory (calibration sets are a few hundred small images).

The graph-input override of `--input-mean/--input-std` is `input_range_override`; the caller
decides whether the input is a point (ncc measures it only when neither flag is given).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np

from kcc.dataset import iter_dataset, list_files
from kcc.errors import DatasetError, KccError, UnsupportedModelError
from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.options import CALIBRATE_METHODS
from kcc.passes.manager import CompileContext
from kcc.quant.histogram import BINS, Histogram
from kcc.quant.l2_search import l2_range
from kcc.quant.params import FLT_MIN, get_range

F32 = np.float32
Range = tuple[float, float]
InputList = Sequence[np.ndarray]
Samples = Iterable[InputList] | Callable[[], Iterable[InputList]]
#: progress(done, total, stage); total is None while the number of samples is unknown.
Progress = Callable[[int, int | None, str], None]

STAGE_RANGE = "collect ranges"
STAGE_HISTOGRAM = "collect distributions"
STAGE_SEARCH = "find optimal thresholds"


class Observer(Protocol):
    def observe(self, name: str, value: np.ndarray) -> None: ...

    def ranges(self) -> dict[str, Range]: ...


def fast_range(value: np.ndarray) -> Range:
    """`get_range` (§4.1) with a fast path: plain min/max when both are finite."""
    v = np.asarray(value, F32)
    if v.size:
        lo, hi = float(v.min()), float(v.max())
        if np.isfinite(lo) and np.isfinite(hi):
            return lo, max(hi, FLT_MIN)
    return get_range(v)


class MinMaxObserver:
    """no_clip: per tensor, the union of per-sample `get_range` results."""

    def __init__(self) -> None:
        self._ranges: dict[str, Range] = {}

    def observe(self, name: str, value: np.ndarray) -> None:
        lo, hi = fast_range(value)
        old = self._ranges.get(name)
        self._ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    def ranges(self) -> dict[str, Range]:
        return dict(self._ranges)


class _Tee:
    """Two observers of one pass."""

    def __init__(self, first: Observer, second: Observer) -> None:
        self.first, self.second = first, second

    def observe(self, name: str, value: np.ndarray) -> None:
        self.first.observe(name, value)
        self.second.observe(name, value)

    def ranges(self) -> dict[str, Range]:
        return self.first.ranges()


class HistogramObserver:
    """l2: 2048-bin histograms over the fixed-up no_clip ranges, then the l2 threshold search."""

    def __init__(self, ranges: dict[str, Range], bins: int = BINS) -> None:
        self.histograms = {name: Histogram.over(lo, hi, bins) for name, (lo, hi) in ranges.items()}

    def observe(self, name: str, value: np.ndarray) -> None:
        self.histograms[name].add(value)

    def ranges(self, progress: Progress | None = None) -> dict[str, Range]:
        out: dict[str, Range] = {}
        for i, (name, hist) in enumerate(self.histograms.items()):
            out[name] = l2_range(hist)
            if progress is not None:
                progress(i + 1, len(self.histograms), STAGE_SEARCH)
        return out


def load_samples(g: Graph, ctx: CompileContext) -> Graph:
    """Stage: ctx.samples, the calibration samples (one list of input arrays each), loaded once from
    the dataset unless given, for decompose_kernels' statistics and for calibration. A pre-quantized
    model that keeps its own grids (ctx.own_grids) needs none."""
    options = ctx.options
    if ctx.samples is not None or ctx.own_grids:
        return g
    if options.dataset is None:
        raise DatasetError("--dataset is required to calibrate a uint8 model",
                           hint="pass --dataset DIR, or --inference-type float")
    if len(g.inputs) != 1:
        raise UnsupportedModelError(f"calibration supports single-input models; this one has {len(g.inputs)}")
    files = list_files(options.dataset, options.dataset_format)
    ctx.samples = [[s.data] for s in iter_dataset(options.dataset, options.dataset_format, g.inputs[0].shape,
                                                  np.float32, options.mean, options.std, files)]
    return g


def input_range_override(mean: float, std: float) -> Range:
    """ncc's graph-input range under --input-mean/--input-std: ((0 - mean)/std, (1 - mean)/std),
    float32 arithmetic (it assumes raw inputs in [0, 1], §4.2)."""
    m, s = F32(mean), F32(std)
    return float((F32(0) - m) / s), float((F32(1) - m) / s)


def view_source(n: Node) -> Node:
    """The tensor whose values n holds, moved around: through slices, reshapes, transposes and zero
    pads (which add only zeros, on every grid)."""
    while isinstance(n.op, (O.StridedSlice, O.Reshape, O.Transpose)) or (isinstance(n.op, O.Pad) and n.op.value == 0.0):
        n = n.inputs[0]
    return n


def input_views(points: Sequence[Node], graph_input: Node) -> list[Node]:
    """The points that are the graph input moved around (`view_source`, and concatenations of such
    views: a decomposed stem's stacked input, kcc.passes.decompose_kernels): they hold the input's
    own values."""
    def is_view(n: Node) -> bool:
        if isinstance(n.op, O.Concat):
            return all(is_view(i) for i in n.inputs)
        return view_source(n) is graph_input

    return [p for p in points if p is not graph_input and is_view(p)]


def calibrate(graph: Graph, samples: Samples, points: Sequence[Node], method: str = "no_clip",
              progress: Progress | None = None, also: Observer | None = None) -> dict[str, Range]:
    """Range of every point node (by name) over the calibration samples.

    Each sample is a list of arrays, one per graph input in input order (a bare array is taken as
    the single input). `also` sees the points' values of the first pass too (e.g. the moments of
    the KPU layers' inputs, kcc.quant.weight_rounding)."""
    if method not in CALIBRATE_METHODS:
        raise KccError(f"unknown calibration method '{method}' (expected one of: {', '.join(CALIBRATE_METHODS)})")
    wanted = {id(n): n.name for n in points}
    if len(set(wanted.values())) != len(wanted):
        raise KccError("calibration points must have distinct names")
    if method == "l2" and not callable(samples) and iter(samples) is samples:
        samples = list(samples)  # a one-shot iterator cannot be read twice

    minmax = MinMaxObserver()
    run_observer(graph, samples, points, minmax if also is None else _Tee(minmax, also), progress, STAGE_RANGE)
    ranges = minmax.ranges()
    missing = [name for name in wanted.values() if name not in ranges]
    if missing:
        raise KccError(f"calibration points never evaluated (not in the graph?): {', '.join(missing[:5])}")
    if method == "no_clip":
        return {name: ranges[name] for name in wanted.values()}

    hist = HistogramObserver(ranges)
    run_observer(graph, samples, points, hist, progress, STAGE_HISTOGRAM)
    optimal = hist.ranges(progress)
    return {name: optimal[name] for name in wanted.values()}


def run_observer(graph: Graph, samples: Samples, points: Sequence[Node], observer: Observer,
                 progress: Progress | None = None, stage: str = STAGE_RANGE) -> int:
    """One pass over the samples: `observer.observe(point.name, value)` for every point's value.

    Returns the number of samples; raises DatasetError if there was none."""
    wanted = {id(n): n.name for n in points}

    def hook(node: Node, value: np.ndarray) -> None:
        name = wanted.get(id(node))
        if name is not None:
            observer.observe(name, value)

    total = len(samples) if isinstance(samples, Sequence) else None
    done = 0
    for sample in (samples() if callable(samples) else samples):
        run(graph, [sample] if isinstance(sample, np.ndarray) else list(sample), hook)
        done += 1
        if progress is not None:
            progress(done, total, stage)
    if done == 0:
        raise DatasetError("the calibration dataset is empty")
    return done
