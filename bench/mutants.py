"""Mutation testing: does the default test suite catch these one-line bugs? (issue #20)

    python bench/mutants.py [--jobs 1] [--only NAME ...] [--list] [--keep]

Each mutation replaces one exact piece of source text (it must occur exactly once in its file, so the
list notices when the code moves on) in a **copy** of the repository, then runs the default suite
there (`python -m pytest -q -x -p no:cacheprovider`, deselecting `slow` as pyproject.toml does).
The test folders most likely to catch a mutation run first; the rest of the suite follows, so what
runs is always the whole default suite. Prints a Markdown table: mutation, file, caught/survived,
first failing test, seconds.

The working tree is copied once (a snapshot), and the suite first runs unmutated on it: tests that
already fail there (work in progress in the checkout) are reported on stderr and deselected in every
mutant run, which would otherwise all stop at them (`--no-baseline` skips this run).

The copy sits beside a `shared` link to the real `../shared`, so tests that look for the reference
kit at `<repo>/../shared/reference` behave as in the checkout. kcc is installed editable from the
checkout, so the run puts the copy first on PYTHONPATH and checks that `kcc` and `kpu_sim` import
from the copy before any mutation runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", "*.pyc")
PYTEST = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    first: tuple[str, ...]  # test folders to run first (the rest of the suite follows)
    original: str  # exact text, must occur exactly once in the file
    replacement: str
    description: str


M = Mutation
MUTATIONS: list[Mutation] = [
    # --- the table ------------------------------------------------------------------------------
    M("conv-row-block-offset", "kpu_sim/kernels/kpu_conv.py", ("tests/kpu_sim",),
      "dy + ky + stride * rows.start",
      "dy + ky + rows.start",
      "row-block offset ignores the stride (stride-2 pick pools, blocked rows)"),
    M("conv-float32-limit", "kpu_sim/kernels/kpu_conv.py", ("tests/kpu_sim",),
      "np.float32 if bound < 1 << 24",
      "np.float32 if bound < 1 << 28",
      "float32 accumulation trusted beyond its exact-integer range 2^24"),
    M("act-tie-to-even", "kpu_sim/kernels/kpu_activation.py", ("tests/kpu_sim",),
      "(f == half and q % 2)",
      "(f == half)",
      "activation rounding ties go up instead of to even"),
    M("act-lut-lowest-check", "kpu_sim/kernels/kpu_activation.py", ("tests/kpu_sim",),
      "if lo < lut.lowest or hi > LUT_DOMAIN:",
      "if hi > LUT_DOMAIN:",
      "activation lookup used below its lowest defined value"),
    M("round-half-even", "kcc/quant/params.py", ("tests/quant",),
      "r = np.sign(a) * np.floor(np.abs(a) + 0.5)",
      "r = np.round(a)",
      "round_half_away rounds halves to even (numpy) instead of away from zero (C roundf)"),
    M("fixed-mul-shift-minus-1", "kcc/quant/params.py", ("tests/quant",),
      "return FixedMul(float(mul), int(shift))",
      "return FixedMul(float(mul), int(shift) - 1)",
      "get_fixed_mul reports a shift one too small"),
    M("fixup-min-width", "kcc/target/quant_rules.py", ("tests/quant",),
      "    elif r < F32(0.01):\n        r = F32(0.01)",
      "    elif r < F32(0.001):\n        r = F32(0.001)",
      "fixup_range minimum width 0.001 instead of 0.01"),
    M("pad-reads-zero", "kpu_sim/kernels/kpu_conv.py", ("tests/kpu_sim",),
      "x.shape[2] + 2), layer.pad_value, dtype=np.uint8)",
      "x.shape[2] + 2), 0, dtype=np.uint8)",
      "3x3 padding reads 0 instead of pad_value"),
    M("arg-add-without-g-ic", "kpu_sim/kernels/kpu_conv.py", ("tests/kpu_sim",),
      "+ I64(layer.arg_add) * I64(layer.g_ic)",
      "+ I64(layer.arg_add)",
      "arg_add not multiplied by the input channel count"),
    M("segment-search-side", "kpu_sim/kernels/kpu_activation.py", ("tests/kpu_sim",),
      'np.searchsorted(act.start, y, side="left")',
      'np.searchsorted(act.start, y, side="right")',
      "y equal to a segment start selects that segment"),
    M("packing-overlap", "kcc/alloc/packing.py", ("tests/alloc",),
      "return self.birth <= other.death and other.birth <= self.death",
      "return self.birth < other.death and other.birth < self.death",
      "buffers that share only one step may share addresses"),
    M("packing-zero-size", "kcc/alloc/packing.py", ("tests/alloc",),
      "return align_up(max(buf.size, 1), align)",
      "return align_up(buf.size, align)",
      "zero-size buffers reserve no address"),
    # --- kcc/quant: quantizer arithmetic --------------------------------------------------------------
    M("quant-param-256-levels", "kcc/quant/params.py", ("tests/quant",),
      "scale = F32(F32((1 << bits) - 1)",
      "scale = F32(F32((1 << bits))",
      "get_quant_param spreads the range over 256 steps, not 255"),
    M("fixed-mul-no-sign-bit", "kcc/quant/params.py", ("tests/quant",),
      "bits = max_bits - 1 if signed else max_bits",
      "bits = max_bits",
      "get_fixed_mul forgets the sign bit of a signed multiplier"),
    M("fixup-empty-width", "kcc/target/quant_rules.py", ("tests/quant",),
      "        r = F32(0.1)",
      "        r = F32(0.01)",
      "fixup_range gives an empty range width 0.01 instead of 0.1"),
    M("no-clip-union-max", "kcc/quant/calibrate.py", ("tests/quant",),
      "(min(old[0], lo), max(old[1], hi))",
      "(min(old[0], lo), hi)",
      "no_clip keeps the last sample's maximum instead of the union"),
    M("input-override-255", "kcc/quant/calibrate.py", ("tests/quant",),
      "float((F32(1) - m) / s)",
      "float((F32(255) - m) / s)",
      "--input-mean/--input-std range assumes raw inputs in [0, 255] instead of [0, 1]"),
    M("histogram-last-bin", "kcc/quant/histogram.py", ("tests/quant",),
      "np.clip(r, F32(0), F32(bins - 1), out=r)",
      "np.clip(r, F32(0), F32(bins - 2), out=r)",
      "values in the last histogram bin are counted in the one before"),
    M("l2-last-minimum", "kcc/quant/l2_search.py", ("tests/quant",),
      "np.flatnonzero(losses == best_loss)[0]",
      "np.flatnonzero(losses == best_loss)[-1]",
      "l2 search keeps the last equal minimum, not the first"),
    M("l2-round-half-even", "kcc/quant/l2_search.py", ("tests/quant",),
      "np.floor(r.astype(np.float64) + 0.5)",
      "np.rint(r.astype(np.float64))",
      "l2 loss snaps grid ties to even instead of away from zero (roundf)"),
    M("act-start-truncated", "kcc/quant/kpu_params.py", ("tests/quant",),
      "x_start = int(round_half_away(float(F32(start[i] * act_in32))))",
      "x_start = int(float(F32(start[i] * act_in32)))",
      "activation segment starts truncated instead of rounded"),
    M("bn-no-rounding-correction", "kcc/quant/kpu_params.py", ("tests/quant",),
      "corr = float(F32(F32(m0.rounded_mul) / F32(m0.mul))) if m0.mul else 1.0",
      "corr = 1.0",
      "batch-norm scale ignores the rounding of the first fixed-point multiplier"),
    # --- kcc/alloc: the packer ------------------------------------------------------------------------
    M("first-fit-exact-hole", "kcc/alloc/packing.py", ("tests/alloc",),
      "if offset + size <= start:",
      "if offset + size < start:",
      "first fit refuses a hole of exactly the buffer's size"),
    M("best-fit-tie-highest", "kcc/alloc/greedy.py", ("tests/alloc",),
      "if best_gap < 0 or gap < best_gap:",
      "if best_gap < 0 or gap <= best_gap:",
      "best fit takes the highest of equally tight holes, not the lowest"),
    M("greedy-exact-hole", "kcc/alloc/greedy.py", ("tests/alloc",),
      "if gap >= size:",
      "if gap > size:",
      "greedy packers refuse a hole of exactly the buffer's size"),
    M("lower-bound-unaligned", "kcc/alloc/packing.py", ("tests/alloc",),
      "return max(sum(slot_size(b, align) for b in live_at(buffers, t)) for t in events)",
      "return max(sum(b.size for b in live_at(buffers, t)) for t in events)",
      "live-size lower bound ignores the alignment"),
    M("plan-errors-adjacent", "kcc/alloc/packing.py", ("tests/alloc",),
      "if b_off >= a_end:",
      "if b_off > a_end:",
      "plan check reports buffers that only touch as overlapping"),
    # --- kpu_sim ----------------------------------------------------------------------------------------
    M("carry-half-up-floor", "kpu_sim/kernels/intmath.py", ("tests/kpu_sim",),
      "return (v + rounding) >> I64(shift & 63)",
      "return v >> I64(shift & 63)",
      "quantized CPU kernels floor instead of rounding half up"),
    M("c-div-floor", "kpu_sim/kernels/intmath.py", ("tests/kpu_sim",),
      "return np.where((a < 0) != (b < 0), -q, q)",
      "return a // b",
      "C integer division floors instead of truncating toward zero"),
    M("banker-no-negative-bias", "kpu_sim/kernels/intmath.py", ("tests/kpu_sim",),
      "sign = np.where(v < 0, I64(-1), I64(1))",
      "sign = I64(1)",
      "carry_shift_banker rounds negative values up instead of nncase's away bias"),
    M("mean-pool-s1-zero-edge", "kpu_sim/kernels/kpu_pool.py", ("tests/kpu_sim",),
      '[(0, 1), (0, 1)], mode="edge").astype(np.uint32)',
      '[(0, 1), (0, 1)], mode="constant").astype(np.uint32)',
      "mean_2_s1 reads 0 past the edge instead of replicating it"),
    M("post-lut-lowest-check", "kpu_sim/kernels/kpu_post.py", ("tests/kpu_sim",),
      "if lo < lut.lowest or hi > LUT_DOMAIN:",
      "if hi > LUT_DOMAIN:",
      "the fused batch-norm + activation path reads below the lowest segment"),
    M("act-break-tie-parity", "kpu_sim/kernels/kpu_activation.py", ("tests/kpu_sim",),
      "((r - 1) % 2 == 0)",
      "((r - 1) % 2 == 1)",
      "segment breakpoints round their ties to odd"),
    M("depthwise-sum-x-ones-row", "kpu_sim/kernels/kpu_conv.py", ("tests/kpu_sim",),
      "cols[:, :-1].astype(I64).sum(axis=1)",
      "cols.astype(I64).sum(axis=1)",
      "the depthwise input sum also counts the row of ones"),
    M("dst-line-off-by-one", "kpu_sim/kernels/kpu_layer.py", ("tests/kpu_sim",),
      "dst=f.image_dst_addr * KPU_LINE_SIZE",
      "dst=(f.image_dst_addr + 1) * KPU_LINE_SIZE",
      "a layer writes its output one 64-byte line late"),
    M("mean-pool-rounds", "kpu_sim/kernels/kpu_pool.py", ("tests/kpu_sim",),
      "return (total // np.uint32(window * window))",
      "return ((total + np.uint32(window * window // 2)) // np.uint32(window * window))",
      "mean pools round instead of flooring"),
    M("depthwise-chunk-term-x", "kpu_sim/kernels/kpu_conv.py", ("tests/kpu_sim",),
      "acc += term_x if term_x.shape[0] == 1 else term_x[c0:c1]",
      "acc += term_x if term_x.shape[0] == 1 else term_x[: c1 - c0]",
      "every depthwise channel chunk takes chunk 0's input terms"),
    M("pad-value-255", "kpu_sim/kernels/kpu_conv.py", ("tests/kpu_sim",),
      "x.shape[2] + 2), layer.pad_value, dtype",
      "x.shape[2] + 2), min(layer.pad_value, 254), dtype",
      "pad_value 255 read as 254"),
    M("right-top-pick", "kpu_sim/kernels/kpu_pool.py", ("tests/kpu_sim",),
      "P.RIGHT_TOP_2_S2: (2, 2, (0, 1)),",
      "P.RIGHT_TOP_2_S2: (2, 2, (1, 0)),",
      "right_top_2_s2 picks the bottom-left pixel"),
    M("max-pool-min", "kpu_sim/kernels/kpu_pool.py", ("tests/kpu_sim",),
      "np.maximum(out, t, out=out)",
      "np.minimum(out, t, out=out)",
      "max pools take the minimum"),
    M("pad-op-edge", "kpu_sim/kernels/movement.py", ("tests/kpu_sim",),
      "ok = (pos >= p.before) & (pos < out_size - p.after)",
      "ok = (pos > p.before) & (pos < out_size - p.after)",
      "the CPU pad op pads one element too many before"),
    M("roundf-ties-down", "kpu_sim/kernels/fp32.py", ("tests/kpu_sim",),
      "return t + np.where(np.abs(x - t) >= 0.5, np.sign(x), 0.0)",
      "return t + np.where(np.abs(x - t) > 0.5, np.sign(x), 0.0)",
      "roundf rounds ties toward zero"),
    M("div-no-half-divisor", "kpu_sim/kernels/quantized.py", ("tests/kpu_sim",),
      "numerator = wrap_i32(a + c_div_trunc(b, np.full_like(b, 2)))",
      "numerator = wrap_i32(a)",
      "quantized div truncates a / b instead of rounding (a + b/2) / b"),
    # --- issue #16: grids per channel group, the float PReLU in runs ---------------------------------
    M("view-grids-one-grid", "kcc/quant/policy.py", ("tests/quant", "tests/e2e"),
      "    return list(by_slice.values())",
      "    return [views]",
      "a depthwise form's channel groups of a float all take one grid again"),
    M("codes-cost-one-grid", "kcc/passes/kernel_budget.py", ("tests/e2e", "tests/passes"),
      "    return plan.group or None",
      "    return None  # (mutant)",
      "a codes form's cost measured on one grid, not on its channel groups"),
    M("prelu-runs-max-only", "kcc/passes/float_prelu.py", ("tests/emit", "tests/passes"),
      'O.Binary("min" if rising else "max")',
      'O.Binary("max")',
      "a run of slopes over 1 takes max(x, a x): x where x < 0"),
    M("parts-stack-no-alpha", "kcc/passes/parts_stack.py", ("tests/passes",),
      "cols * (coef[s0:s1] / np.float32(f))[None, :, None, None]",
      "cols",
      "the stack reads the parts without their alpha, turn and stretch"),
    M("parts-stack-one-reach", "kcc/passes/parts_stack.py", ("tests/passes",),
      "cols * (coef[s0:s1] / np.float32(f))[None, :, None, None]",
      "cols * coef[s0:s1][None, :, None, None]",
      "the parts stretched to one reach but read at their old scale"),
]


def check(mutations: list[Mutation], root: Path = ROOT) -> list[str]:
    """Problems with the list: unknown files, or originals that do not occur exactly once."""
    problems = []
    names = [m.name for m in mutations]
    problems += [f"duplicate name {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    for m in mutations:
        path = root / m.path
        if not path.is_file():
            problems.append(f"{m.name}: no file {m.path}")
            continue
        count = path.read_text().count(m.original)
        if count != 1:
            problems.append(f"{m.name}: original text occurs {count} times in {m.path} (must be once)")
    return problems


def make_copy(workdir: Path) -> Path:
    """<workdir>/main: the repository without .git/.venv; <workdir>/shared: a link to the real kit."""
    repo = workdir / "main"
    shutil.copytree(ROOT, repo, ignore=COPY_IGNORE, symlinks=True)
    shared = (ROOT / ".." / "shared").resolve()
    if shared.is_dir():
        (workdir / "shared").symlink_to(shared, target_is_directory=True)
    return repo


def env_for(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *rest])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def verify_imports(repo: Path) -> None:
    """kcc is installed editable from the checkout: make sure the copy's packages are the ones imported."""
    code = "import kcc, kpu_sim; print(kcc.__file__); print(kpu_sim.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env_for(repo), capture_output=True,
                         text=True, check=True).stdout.split()
    for f in out:
        if not Path(f).resolve().is_relative_to(repo.resolve()):
            raise SystemExit(f"error: the copy at {repo} imports {f}, not its own packages")


def suite_order(repo: Path, first: tuple[str, ...]) -> list[str]:
    """Every top-level test folder (so the whole default suite), the `first` ones leading."""
    folders = sorted(str(p.relative_to(repo)) for p in (repo / "tests").iterdir()
                     if p.is_dir() and p.name not in ("reference", "support", "__pycache__"))
    lead = [f for f in first if f in folders]
    return lead + [f for f in folders if f not in lead]


@dataclass
class Outcome:
    mutation: Mutation
    caught: bool
    first_failure: str
    seconds: float


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def run_suite(repo: Path, args: list[str]) -> subprocess.CompletedProcess:
    """pytest in `repo`; the child is killed if this process is interrupted."""
    proc = subprocess.Popen(PYTEST + args, cwd=repo, env=env_for(repo), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def baseline_failures(snapshot: Path) -> list[str]:
    """Tests that already fail on the unmutated snapshot (e.g. work in progress in the checkout): they are
    deselected in the mutant runs, which would otherwise all stop at them. Runs without -x."""
    proc = run_suite(snapshot, [a for a in suite_order(snapshot, ())])
    failed = _FAILED.findall(proc.stdout)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not failed):
        raise SystemExit(f"error: the unmutated suite did not run (pytest exit {proc.returncode}):\n"
                         + (proc.stdout + proc.stderr)[-2000:])
    return sorted({node for _, node in failed})


def run_one(m: Mutation, snapshot: Path, deselect: list[str], keep: bool) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"kcc-mutant-{m.name}-") as tmp:
        repo = Path(tmp) / "main"
        shutil.copytree(snapshot, repo, ignore=COPY_IGNORE, symlinks=True)
        if (snapshot.parent / "shared").exists():
            shared = (snapshot.parent / "shared").resolve()
            (Path(tmp) / "shared").symlink_to(shared, target_is_directory=True)
        verify_imports(repo)
        path = repo / m.path
        text = path.read_text()
        if text.count(m.original) != 1:
            return Outcome(m, False, "invalid: original text not found exactly once", 0.0)
        path.write_text(text.replace(m.original, m.replacement))
        t0 = time.perf_counter()
        args = suite_order(repo, m.first) + [f"--deselect={node}" for node in deselect]
        proc = run_suite(repo, args)
        seconds = time.perf_counter() - t0
        hit = _FAILED.search(proc.stdout)
        caught = proc.returncode != 0
        first = hit.group(2) if hit else ("" if not caught else f"pytest exit {proc.returncode}")
        if keep:
            log = Path(tempfile.gettempdir()) / f"kcc-mutant-{m.name}.log"
            log.write_text(proc.stdout + proc.stderr)
        return Outcome(m, caught, first, seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1, help="mutations run in parallel (default 1)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    ap.add_argument("--list", action="store_true", help="list the mutations and check them, run nothing")
    ap.add_argument("--keep", action="store_true",
                    help="keep each run's pytest output in $TMPDIR/kcc-mutant-NAME.log")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unmutated run (whose failing tests are deselected in the mutant runs)")
    args = ap.parse_args(argv)

    problems = check(MUTATIONS)
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
        if unknown:
            print(f"error: unknown mutation(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:28} {m.path:36} {m.description}")
    bad = {p.split(":")[0] for p in problems}
    for p in problems:
        print(f"invalid mutation: {p}", file=sys.stderr)
    if args.list:
        return 1 if problems else 0
    chosen = [m for m in chosen if m.name not in bad]

    with tempfile.TemporaryDirectory(prefix="kcc-mutant-snapshot-") as tmp:
        # one snapshot of the working tree: the baseline and every mutant test the same sources
        snapshot = make_copy(Path(tmp))
        verify_imports(snapshot)  # fail early, once, if the copy would test the checkout
        deselect = [] if args.no_baseline else baseline_failures(snapshot)
        for node in deselect:
            print(f"warning: fails without any mutation, deselected: {node}", file=sys.stderr)
        print("| mutation | file | result | first failing test | s |")
        print("|---|---|---|---|---:|")
        outcomes: list[Outcome] = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for o in pool.map(lambda m: run_one(m, snapshot, deselect, args.keep), chosen):
                outcomes.append(o)
                result = "caught" if o.caught else "**survived**"
                print(f"| {o.mutation.name} | {o.mutation.path} | {result} | {o.first_failure or '-'} | "
                      f"{o.seconds:.0f} |", flush=True)
    survived = [o.mutation.name for o in outcomes if not o.caught]
    print(f"\n{len(outcomes) - len(survived)}/{len(outcomes)} caught"
          + (f"; survived: {', '.join(survived)}" if survived else "")
          + (f"; {len(problems)} invalid (see stderr)" if problems else "")
          + (f"; {len(deselect)} test(s) failing unmutated were deselected (see stderr)" if deselect else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
