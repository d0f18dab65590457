"""Fit and check the cost constants of kcc/target/k210.py against published K210 board timings.

    python bench/latency_fit.py

1. KPU: least squares of (KPU_CYCLE_FACTOR, KPU_WEIGHT_CYCLES_PER_BYTE) on A1 (ecosystem.md §3.2:
   a 3x3 conv 128->128 with 16-bit weights, 4x4..256x256, KPU at 300 MHz), with the fixed
   per-layer part KPU_LAYER_US taken from depthwise layers whose compute is a few microseconds
   (nncase#77 layer 1: 0.039 ms; nncase#95: slim-320's second layer, 0.04 ms). Then the per-layer
   check on nncase#77 (a MobileNet-0.5 YOLO at 320x240, read as such from its timings).
2. STRUCTURAL_SCALE: log-space least squares of the whole-model estimates of slim-320.kmodel and
   RFB-320.kmodel (nncase-examples) against A10 (65.6 ms / 164.8 ms).
3. quantized_conv2d cycles per MAC: the RFB-320 build with three dilated convs on the CPU
   (history/83149a3, 796.2 ms in that commit's Readme).
Prints the fitted values next to the ones in kcc/target/k210.py and every residual.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kcc import kmodel as km
from kcc import latency as L
from kcc.target import k210

EXAMPLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "nncase-examples"
A1 = [(4, 0.339), (16, 0.417), (32, 1.138), (64, 3.891), (128, 14.778), (256, 57.756)]  # (H = W, ms)
A1_MHZ = 300.0
A1_WEIGHT_BYTES = 128 * 128 * 9 * 2  # 16-bit weights
A10 = {"slim-320.kmodel": 65.6, "RFB-320.kmodel": 164.8}
RFB_CPU_DILATED = ("history/83149a3/RFB-320.kmodel", 796.2)


def _layer(c_in: int, c_out: int, h: int, w: int, depthwise: bool = False) -> km.KpuLayerArgument:
    return km.KpuLayerArgument(i_ch_num=c_in - 1, o_ch_num=c_out - 1, i_row_wid=w - 1, i_col_high=h - 1,
                               o_row_wid=w - 1, o_col_high=h - 1, depth_wise_layer=int(depthwise))


def fit_kpu() -> tuple[float, float]:
    cycles = np.array([k210.kpu_layer_cycles(_layer(128, 128, s, s)) for s, _ in A1], float)
    target = np.array([ms - k210.KPU_LAYER_US / 1e3 for _, ms in A1]) * A1_MHZ * 1e3  # KPU cycles
    a = np.stack([cycles, np.full_like(cycles, A1_WEIGHT_BYTES)], axis=1)
    (factor, per_byte), *_ = np.linalg.lstsq(a, target, rcond=None)
    print(f"KPU fit on A1: KPU_CYCLE_FACTOR {factor:.3f} (kcc: {k210.KPU_CYCLE_FACTOR}), "
          f"KPU_WEIGHT_CYCLES_PER_BYTE {per_byte:.3f} (kcc: {k210.KPU_WEIGHT_CYCLES_PER_BYTE})")
    for (s, ms), c in zip(A1, cycles):
        est = (k210.KPU_CYCLE_FACTOR * c
               + k210.KPU_WEIGHT_CYCLES_PER_BYTE * A1_WEIGHT_BYTES) / (A1_MHZ * 1e3) \
            + k210.KPU_LAYER_US / 1e3
        print(f"  {s:>3}x{s:<3} board {ms:7.3f} ms  kcc {est:7.3f} ms  {100 * (est / ms - 1):+5.0f}%")
    return factor, per_byte


def check_yolo_layers() -> None:
    """nncase#77: per-layer times of a MobileNet-0.5 YOLO (320x240) on the KPU at 400 MHz."""
    # (measured ms, c_in, c_out, h, w, depthwise, kernel) as read from the layer sequence
    rows = [(0.206, 3, 16, 240, 320, False, 3), (0.039, 16, 16, 120, 160, True, 3), (0.514, 16, 32, 120, 160, False, 1),
            (0.680, 32, 64, 60, 80, False, 1), (0.053, 32, 32, 60, 80, True, 3), (1.328, 64, 64, 60, 80, False, 1),
            (0.704, 64, 128, 30, 40, False, 1), (0.034, 64, 64, 30, 40, True, 3), (1.385, 128, 128, 30, 40, False, 1),
            (0.781, 128, 256, 15, 20, False, 1), (0.025, 128, 128, 15, 20, True, 3), (1.522, 256, 256, 15, 20, False, 1)]
    print("KPU per-layer check, nncase#77 (8-bit, 400 MHz):")
    for ms, ci, co, h, w, dw, k in rows:
        lay = _layer(ci, co, h, w, dw)
        weights = co * k * k * (1 if dw else ci)
        est = (k210.KPU_CYCLE_FACTOR * k210.kpu_layer_cycles(lay)
               + k210.KPU_WEIGHT_CYCLES_PER_BYTE * weights) / 400e3 \
            + k210.KPU_LAYER_US / 1e3
        print(f"  {ci:>3}->{co:<3} {h:>3}x{w:<3} {'dw' if dw else f'{k}x{k}'}  board {ms:6.3f}  kcc {est:6.3f}  "
              f"{100 * (est / ms - 1):+5.0f}%")


def _split(path: Path) -> tuple[float, float]:
    """(ms that do not depend on STRUCTURAL_SCALE, ms that scale with it) of a model."""
    saved = k210.STRUCTURAL_SCALE
    try:
        k210.STRUCTURAL_SCALE = 0.0
        fixed = L.estimate(km.read_file(path)).total_ms
        k210.STRUCTURAL_SCALE = 1.0
        return fixed, L.estimate(km.read_file(path)).total_ms - fixed
    finally:
        k210.STRUCTURAL_SCALE = saved


def fit_structural() -> float:
    parts = {name: _split(EXAMPLES / name) for name in A10}
    grid = np.linspace(0.2, 4.0, 3801)
    loss = [sum(math.log((f + s * v) / A10[n]) ** 2 for n, (f, v) in parts.items()) for s in grid]
    best = float(grid[int(np.argmin(loss))])
    print(f"STRUCTURAL_SCALE fit on A10: {best:.2f} (kcc: {k210.STRUCTURAL_SCALE})")
    return best


def fit_qconv() -> float:
    name, board = RFB_CPU_DILATED
    model = km.read_file(EXAMPLES / name)
    est = L.estimate(model)
    macs = sum(units for n in model.nodes for key, units in L._WORK.get(type(n.body), lambda b: [])(n.body)
               if key == "quantized_conv2d_mac")
    rest = est.total_ms - macs * k210.cpu_cycles("quantized_conv2d_mac") / 400e3
    per_mac = (board - rest) * 400e3 / macs
    print(f"quantized_conv2d cycles/MAC fit on {name} ({board} ms): {per_mac:.1f} "
          f"(kcc: {k210.CPU_CYCLES['quantized_conv2d_mac'][0]})")
    return per_mac


def report() -> None:
    print("Whole models with kcc/latency.py as it is (400/400 MHz):")
    for name, board in list(A10.items()) + [RFB_CPU_DILATED]:
        est = L.estimate(km.read_file(EXAMPLES / name))
        print(f"  {name:<32} board {board:6.1f} ms  kcc {est.total_ms:6.1f} ms ({100 * (est.total_ms / board - 1):+.0f}%)"
              f"  KPU {est.kpu_ms:5.1f}  CPU {est.cpu_ms:6.1f}")
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(est.by_opcode().items())[:6])
        print(f"      by opcode: {top}")


if __name__ == "__main__":
    fit_kpu()
    check_yolo_layers()
    fit_structural()
    fit_qconv()
    report()
