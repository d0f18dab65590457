"""kpu_sim speed on the ulffd landmark detector (320x240), beside `ncc infer`.

    python bench/sim.py [--runs N] [--model PATH] [--input PATH]

Times `kpu_sim.load` and `Program.run` on ncc's own kmodel and input
(../shared/reference/ncc-outputs: kmodels/ulffd_landmark_no_clip_ff.kmodel, the 230400-byte uint8
CHW face picture), checks the output is byte-identical to ncc infer's, and prints ms per image
beside ncc infer's "Total" (about 275 ms, ncc-outputs/README.md), the ratio, and where the time
goes per opcode (from `run(profile=...)`). The machine may be shared: the steady-state figure is
the median of the runs; the minimum and the process CPU time are shown too.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import kpu_sim

NCC = (Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "ncc-outputs").resolve()
MODEL = NCC / "kmodels" / "ulffd_landmark_no_clip_ff.kmodel"
INPUT = NCC / "infer" / "inputs" / "ulffd_raw" / "face20_rgb_chw_320x240_u8.bin"
EXPECTED = NCC / "infer" / "outputs" / "ulffd_no_clip_ff_raw" / "face20_rgb_chw_320x240_u8.bin"


def ncc_total_ms() -> float:
    """ncc infer's per-image time from the README ("`Total:` is about 275 ms ...")."""
    readme = (NCC / "README.md").read_text()
    match = re.search(r"`Total:` is about (\d+(?:\.\d+)?) ms", readme)
    return float(match.group(1)) if match else 275.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs after the first (default 15)")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--input", type=Path, default=INPUT)
    args = parser.parse_args()

    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        program = kpu_sim.load(args.model)
        loads.append(time.perf_counter() - t0)
    shape = program.inputs[0].shape
    x = np.fromfile(args.input, dtype=program.inputs[0].dtype).reshape(shape)

    t0 = time.perf_counter()
    outputs = program.run([x])  # first run: builds the per-layer caches (weights, activation lookups)
    first = time.perf_counter() - t0
    if args.model == MODEL and EXPECTED.is_file():
        same = b"".join(o.tobytes() for o in outputs) == EXPECTED.read_bytes()
        print(f"output vs ncc infer: {'byte-identical' if same else 'DIFFERENT'}")

    nodes = program.model.nodes
    profile = [0.0] * len(nodes)
    runs, cpu = [], []
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        program.run([x], profile=profile)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)

    ncc = ncc_total_ms()
    load_ms, first_ms = statistics.median(loads) * 1e3, first * 1e3
    median_ms, best_ms = statistics.median(runs) * 1e3, min(runs) * 1e3
    print(f"model: {args.model.name}, input {'x'.join(map(str, shape))}, {len(nodes)} nodes")
    print(f"load (median of 5):        {load_ms:8.1f} ms")
    print(f"first run (cold caches):   {first_ms:8.1f} ms")
    print(f"run, median of {args.runs:<3d}:       {median_ms:8.1f} ms per image   (min {best_ms:.1f} ms)")
    print(f"CPU time per run (median): {statistics.median(cpu) * 1e3:8.1f} ms   (this process; wall time above it "
          f"was spent waiting for a core)")
    print(f"ncc infer (README):        {ncc:8.1f} ms per image")
    print(f"ratio ncc / kpu_sim:       {ncc / median_ms:8.2f}x  (steady state; {ncc / best_ms:.2f}x on the best run)")
    print(f"ratio incl. load, 1 image: {ncc / (load_ms + first_ms):8.2f}x  ({load_ms + first_ms:.1f} ms)")

    per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for node, seconds in zip(nodes, profile):
        per_op[node.name][0] += seconds / args.runs
        per_op[node.name][1] += 1
    kernel_ms = sum(v[0] for v in per_op.values()) * 1e3
    print(f"\nper opcode (mean per image; kernels {kernel_ms:.1f} ms, "
          f"runner overhead {statistics.mean(runs) * 1e3 - kernel_ms:.1f} ms):")
    for name, (seconds, count) in sorted(per_op.items(), key=lambda kv: -kv[1][0]):
        print(f"  {name:<16s} {count:3d} nodes {seconds * 1e3:8.2f} ms {100 * seconds * 1e3 / kernel_ms:5.1f} %")
    slowest = sorted(range(len(nodes)), key=lambda i: -profile[i])[:5]
    print("slowest nodes: " + ", ".join(f"{i} ({nodes[i].name}) {profile[i] / args.runs * 1e3:.1f} ms" for i in slowest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
