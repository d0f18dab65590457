"""Main-memory planning: first fit vs kcc's planner vs the live-size lower bound (issue #5).

    python bench/memory.py [--secs 60] [--models NAME ...] [--json OUT] [--uint8 [N]]

Compiles every float model of the reference kit (`tests/support/refkit.py`) with
`--inference-type float` and the given `--max-allocator-solve-secs`, and prints one row per model:
the first-fit peak (what `--max-allocator-solve-secs 0` gives), the planner's peak, the live-size
lower bound, the ratio to it, which candidate won, CP-SAT's status and the planning wall time
(main-memory allocator only; the compile time is shown separately).

ncc's `main_mem` from `ncc-outputs/kit_baseline.json` is shown in its own column: those are uint8
k210 builds (KPU layers keep their tensors in KPU RAM), so they are NOT comparable with these float
builds; they are printed only to have the numbers side by side.

`--uint8 [N]` adds a second table: uint8 k210 builds of the models in kit_baseline.json, made the
way the kit made ncc's (`--input-type float`, a raw float32 NCHW dataset of the model's own first N
sample inputs, default 4, `no_clip`), with main memory and KPU RAM (2 MiB, align 64) next to ncc's
first-fit figures. The graphs kcc and ncc plan still differ (legalization, fallbacks), so read the
ncc columns as context, not as an allocator-only comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import refkit

from kcc.errors import KccError
from kcc.options import CompileOptions
from kcc.pipeline import compile_model

BASELINE = refkit.REFERENCE / "ncc-outputs" / "kit_baseline.json"


def ncc_baseline() -> dict[str, dict]:
    """model -> ncc's no_clip kit_baseline record (uint8 k210, first fit)."""
    if not BASELINE.exists():
        return {}
    return {r["model"]: r for r in json.loads(BASELINE.read_text())["results"] if r.get("method") == "no_clip"}


def ncc_main_mem() -> dict[str, int | str]:
    """model -> ncc's main_mem (uint8, no_clip, first fit), or 'failed'."""
    return {m: r["main_mem"] if r.get("rc") == 0 else "failed" for m, r in ncc_baseline().items()}


def run(names: list[str], secs: float) -> list[dict]:
    ncc = ncc_main_mem()
    rows = []
    for name in names:
        t0 = time.perf_counter()
        try:
            res = compile_model(refkit.tflite_path(name),
                                CompileOptions(inference_type="float", max_allocator_solve_secs=secs))
        except KccError as e:
            rows.append({"model": name, "error": e.one_line()})
            continue
        m = res.emitted.memory.main
        rows.append({"model": name, "buffers": len(m.buffers), "first_fit": m.first_fit_peak, "planner": m.peak,
                     "lower_bound": m.lower_bound, "proven_bound": m.proven_bound, "method": m.method,
                     "status": m.solver_status, "plan_s": round(m.solve_secs, 3),
                     "det_s": round(m.deterministic_secs, 3), "compile_s": round(time.perf_counter() - t0, 2),
                     "ncc_u8_main_mem": ncc.get(name, "-")})
    return rows


def run_uint8(names: list[str], secs: float, n_samples: int) -> list[dict]:
    """uint8 k210 builds with the model's own samples as a raw dataset (see the module docstring)."""
    rows = []
    for name in names:
        ncc = ncc_baseline().get(name, {})
        row: dict = {"model": name, "ncc_main_mem": ncc.get("main_mem", "failed"),
                     "ncc_kpu_peak": ncc.get("kpu_peak", ncc.get("error", "-"))}
        with tempfile.TemporaryDirectory() as tmp:
            for smp in refkit.samples(name, limit=n_samples):
                smp.x.astype(np.float32).tofile(Path(tmp) / f"{smp.name}.bin")
            t0 = time.perf_counter()
            try:
                res = compile_model(refkit.tflite_path(name), CompileOptions(
                    dataset=Path(tmp), dataset_format="raw", input_type="float", max_allocator_solve_secs=secs))
            except KccError as e:
                rows.append(row | {"error": e.one_line()})
                continue
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        for res_space in res.emitted.memory.spaces:
            key = "kpu" if res_space.space == "KPU RAM" else "main"
            row[key] = {"first_fit": res_space.first_fit_peak, "planner": res_space.peak,
                        "lower_bound": res_space.lower_bound, "status": res_space.solver_status,
                        "plan_s": round(res_space.solve_secs, 3)}
        rows.append(row)
    return rows


def table_uint8(rows: list[dict]) -> str:
    head = ("| model | main first fit | main planner | main bound | KPU first fit | KPU planner | KPU bound "
            "| plan s (main+KPU) | ncc main_mem | ncc KPU peak |")
    out = [head, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | error: {r['error']} | | | | | | | {r['ncc_main_mem']} | {r['ncc_kpu_peak']} |")
            continue
        m = r["main"]
        k = r.get("kpu", {"first_fit": 0, "planner": 0, "lower_bound": 0, "plan_s": 0.0})
        out.append(f"| {r['model']} | {m['first_fit']} | {m['planner']} | {m['lower_bound']} | {k['first_fit']} "
                   f"| {k['planner']} | {k['lower_bound']} | {m['plan_s'] + k['plan_s']:.2f} "
                   f"| {r['ncc_main_mem']} | {r['ncc_kpu_peak']} |")
    return "\n".join(out)


def _status(s: str) -> str:
    return {"not needed (a greedy plan reached the lower bound)": "skipped (greedy = bound)",
            "not run (--max-allocator-solve-secs 0)": "off"}.get(s, s)


def table(rows: list[dict]) -> str:
    head = ("| model | bufs | main_mem first fit | main_mem planner | lower bound | planner / bound | won by "
            "| CP-SAT | plan s | compile s | ncc main_mem (uint8 k210, not comparable) |")
    out = [head, "|---|--:|--:|--:|--:|--:|---|---|--:|--:|--:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | error: {r['error']} |")
            continue
        out.append(f"| {r['model']} | {r['buffers']} | {r['first_fit']} | {r['planner']} | {r['lower_bound']} "
                   f"| {r['planner'] / max(r['lower_bound'], 1):.3f} | {r['method']} | {_status(r['status'])} "
                   f"| {r['plan_s']:.2f} | {r['compile_s']:.2f} | {r['ncc_u8_main_mem']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=float, default=60.0, help="--max-allocator-solve-secs (default 60)")
    ap.add_argument("--models", nargs="*", help="model folder names (default: all)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--uint8", type=int, nargs="?", const=4, default=0, metavar="N",
                    help="also build the kit_baseline models as uint8 k210 with N sample inputs (default 4)")
    args = ap.parse_args()
    if not refkit.available():
        sys.exit(f"reference models not found at {refkit.MODELS}")
    rows = run(args.models or refkit.model_dirs(), args.secs)
    print(table(rows))
    done = [r for r in rows if "error" not in r]
    over = [r["model"] for r in done if r["planner"] > 1.05 * r["lower_bound"]]
    print(f"\n{len(done)} model(s); planner <= 1.05 x lower bound on {len(done) - len(over)}"
          + (f"; above on: {', '.join(over)}" if over else "")
          + f"; planner saves {sum(r['first_fit'] - r['planner'] for r in done)} B over first fit in total")
    rows_u8 = []
    if args.uint8:
        names = [m for m in (args.models or ncc_baseline()) if m in refkit.model_dirs()]
        rows_u8 = run_uint8(names, args.secs, args.uint8)
        print("\nuint8 k210 builds (kit_baseline.json setup), bytes:\n")
        print(table_uint8(rows_u8))
    if args.json:
        args.json.write_text(json.dumps({"float": rows, "uint8": rows_u8}, indent=1))


if __name__ == "__main__":
    main()
