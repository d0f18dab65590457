"""How finely a float tensor must be gridded to be read as 8-bit codes: the float model with chosen
tensors rounded to 8 bits on one grid, one per channel group, or one per channel, scored against the
kit's references (bench/accuracy.py's figure: mean over the samples of the worst output's cosine).

    python bench/stream_grids.py [MODEL] [--tensors prelu|add|conv|stem] [--size N] [--codes]

--tensors add: the residual adds' sums (two maps added); --size N: only the tensors N pixels high.
Grids (each from the tensor's min/max over the first 16 samples, 0 included, as no_clip's):
  tensor     one grid for the tensor (what one KPU layer's output or one quantize gives)
  chG        one grid per group of G channels (a decomposed depthwise's channel groups)
  sG         one grid per group of G channels taken in the order of their ranges' widths (KPU layers
             each writing a group of a sum's channels, which the readers take back in their order)
  ch         one grid per channel
  zG         one grid per group of G channels, all with the tensor's one zero point (the zero point that
             least widens the groups' steps, in mean square): what a decomposed depthwise's channel
             groups would need to share one batched KPU layer, whose pad value is one code
  scale      one zero point, a scale per channel (a per-channel batch-norm's output)
  component  the tensor divided, per channel, by one scale shared by every tensor its residual adds,
             PReLUs, pools, pads and resizes tie it to, then one grid: what the CPU's float adds
             could read unchanged
--codes: instead, for each 5x5 depthwise conv reading a float of the CPU, what reading its input
alone as codes costs (kcc.passes.kernel_budget.CodesCosts) on one grid and per group of 8, 4, 2, 1
channels. docs/measurements.md §24 has BlazePalm's figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import refkit  # noqa: E402

from kcc.eval.interpreter import run  # noqa: E402
from kcc.frontend import import_model  # noqa: E402
from kcc.ir import ops as O  # noqa: E402
from kcc.passes.canonicalize import canonicalize  # noqa: E402
from kcc.passes.kernel_budget import CodesCosts  # noqa: E402
from kcc.target.quant_rules import shared_zero_point  # noqa: E402

GRIDS = ("tensor", "ch8", "ch4", "z4", "ch2", "z2", "s32", "s16", "s8", "ch", "scale", "component")
CALIBRATION = 16


def _tied(g) -> dict[int, int]:
    """Per node, a representative of the nodes a residual stream ties it to (union-find)."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    for n in g.nodes:
        live = [i for i in n.inputs if not i.is_constant]
        if isinstance(n.op, (O.PRelu, O.Pool2D, O.Pad, O.Resize)) or (
                isinstance(n.op, O.Binary) and n.op.op == "add" and len(live) == 2):
            for i in live:
                parent[find(id(i))] = find(id(n))
    return {id(n): find(id(n)) for n in g.nodes}


def _grid(lo: np.ndarray, hi: np.ndarray, grid: str) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per channel for `grid` from per-channel extremes."""
    if grid in ("tensor", "scale", "component"):  # one grid (over the values divided by their units)
        return np.full_like(lo, lo.min()), np.full_like(hi, hi.max())
    if grid.startswith("s") and grid[1:].isdigit():
        k, order = int(grid[1:]), np.argsort(hi - lo, kind="stable")
        a, b = lo.copy(), hi.copy()
        for i in range(0, len(lo), k):
            part = order[i:i + k]
            a[part], b[part] = lo[part].min(), hi[part].max()
        return a, b
    if grid.startswith("z"):
        a, b = _grid(lo, hi, "ch" + grid[1:])
        zero, levels = shared_zero_point(a, b)
        return -zero / levels, (255.0 - zero) / levels
    if grid.startswith("ch") and grid != "ch":
        k = int(grid[2:])
        pad = -len(lo) % k
        a = np.concatenate([lo, np.full(pad, lo.min())]).reshape(-1, k).min(1)
        b = np.concatenate([hi, np.full(pad, hi.max())]).reshape(-1, k).max(1)
        return np.repeat(a, k)[:len(lo)], np.repeat(b, k)[:len(hi)]
    return lo, hi


def rounded_cosine(g, samples, targets: list, grid: str) -> float:
    """bench/accuracy.py's figure of g with every tensor of `targets` rounded to 8 bits on `grid`."""
    chosen = {id(n) for n in targets}
    stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    amax: dict[int, np.ndarray] = {}

    def observe(n, v) -> None:
        if v.ndim == 4 and not n.is_constant:
            amax[id(n)] = np.maximum(amax.get(id(n), 0), np.abs(v).max(axis=(0, 2, 3)))

    for s in samples[:CALIBRATION]:
        run(g, [s.x], observe)
    tied = _tied(g)
    shared: dict[int, np.ndarray] = {}
    for n in g.nodes:
        if id(n) in amax:
            a, r = amax[id(n)], tied[id(n)]
            was = shared.get(r, np.zeros(0))
            m = np.zeros(max(len(a), len(was)))
            m[:len(was)] = was
            m[:len(a)] = np.maximum(m[:len(a)], a)
            shared[r] = m

    def unit(n) -> np.ndarray:
        """What `grid` divides n by per channel before one grid (1 where it does not)."""
        if grid == "scale":
            s = amax[id(n)]
        elif grid == "component":
            s = shared[tied[id(n)]][:n.shape[1]]
        else:
            return np.ones(n.shape[1])
        return np.where(s > 0, s, 1.0)

    def extremes(n, v) -> None:
        if id(n) in chosen:
            w = v / unit(n).reshape(1, -1, 1, 1)
            lo, hi = np.minimum(w.min(axis=(0, 2, 3)), 0), np.maximum(w.max(axis=(0, 2, 3)), 0)
            was = stats.get(id(n))
            stats[id(n)] = (lo, hi) if was is None else (np.minimum(was[0], lo), np.maximum(was[1], hi))

    for s in samples[:CALIBRATION]:
        run(g, [s.x], extremes)

    def rounding(n, v):
        if id(n) not in chosen:
            return v
        u = unit(n).reshape(1, -1, 1, 1)
        lo, hi = (a.reshape(1, -1, 1, 1) for a in _grid(*stats[id(n)], grid))
        scale = 255.0 / np.maximum(hi - lo, 1e-12)
        zero = np.round(-lo * scale)
        return ((np.clip(np.round(v / u * scale + zero), 0, 255) - zero) / scale * u).astype(np.float32)

    cos = [min(refkit.compare(o, r)[0] for o, r in zip(run(g, [s.x], rewrite=rounding), s.refs)) for s in samples]
    return float(np.mean(cos))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="palm_detection_lite_192")
    ap.add_argument("--tensors", choices=("prelu", "add", "conv", "stem"), default="prelu")
    ap.add_argument("--size", type=int, default=None, help="only the tensors this many pixels high")
    ap.add_argument("--codes", action="store_true")
    args = ap.parse_args()
    g = canonicalize(import_model(refkit.tflite_path(args.model)).graph)
    samples = refkit.samples(args.model)
    if args.codes:
        convs = [n for n in g.nodes if isinstance(n.op, O.Conv2D) and n.inputs[1].shape[2] == 5
                 and isinstance(n.inputs[0].op, (O.PRelu, O.Binary))]
        costs = CodesCosts(g, convs, [[s.x] for s in samples[:8]])
        groups = (None, 8, 4, 2, 1)
        print("| 5x5 | " + " | ".join("one grid" if k is None else f"per {k}" for k in groups) + " |")
        print("|---|" + "---:|" * len(groups))
        total = dict.fromkeys(groups, 0.0)
        for n in convs:
            row = [costs.cost(n.name, k) for k in groups]
            for k, c in zip(groups, row):
                total[k] += c
            print(f"| {n.name.split(';')[0].split('/')[-2]} | " + " | ".join(f"{c:.1e}" for c in row) + " |")
        print("| all | " + " | ".join(f"{total[k]:.1e}" for k in groups) + " |")
        return
    kinds = {"prelu": lambda n: isinstance(n.op, O.PRelu),
             "add": lambda n: (isinstance(n.op, O.Binary) and n.op.op == "add"
                               and not any(i.is_constant for i in n.inputs)),
             "conv": lambda n: isinstance(n.op, O.Conv2D),
             "stem": lambda n: n is next(m for m in g.nodes if isinstance(m.op, O.Conv2D))}
    targets = [n for n in g.nodes if kinds[args.tensors](n) and n.type.rank == 4
               and args.size in (None, n.shape[2])]
    print(f"{args.model}: {len(targets)} {args.tensors} tensor(s) rounded to 8 bits; float: "
          f"{rounded_cosine(g, samples, [], 'tensor'):.5f}")
    for grid in GRIDS:
        print(f"  {grid:10s} {rounded_cosine(g, samples, targets, grid):.5f}")


if __name__ == "__main__":
    main()
