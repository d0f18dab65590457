"""kcc/latency.py: the K210 cost model against the published board timings (ecosystem.md §3.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcc import kmodel as km
from kcc import latency as L
from kcc.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "nncase-examples"
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"nncase examples not found at {EXAMPLES}")


def _layer(c_in: int, c_out: int, h: int, w: int, depthwise: bool = False) -> km.KpuLayerArgument:
    return km.KpuLayerArgument(i_ch_num=c_in - 1, o_ch_num=c_out - 1, i_row_wid=w - 1, i_col_high=h - 1,
                               o_row_wid=w - 1, o_col_high=h - 1, depth_wise_layer=int(depthwise))


def test_kpu_cycles_follow_the_line_layout():
    # W <= 16: 4 channels share a line; W <= 32: 2; wider rows take ceil(W / 64) lines
    assert L.kpu_layer_cycles(_layer(128, 128, 4, 4)) == 4 * 1 * 32 * 128
    assert L.kpu_layer_cycles(_layer(128, 128, 32, 32)) == 32 * 1 * 64 * 128
    assert L.kpu_layer_cycles(_layer(128, 128, 256, 256)) == 256 * 4 * 128 * 128
    assert L.kpu_layer_cycles(_layer(16, 16, 120, 160, depthwise=True)) == 120 * 3 * 16


@pytest.mark.parametrize("size,board_ms", [(4, 0.339), (32, 1.138), (64, 3.891), (128, 14.778), (256, 57.756)])
def test_kpu_layer_matches_a1(size, board_ms):
    """A1: 3x3 conv 128->128 with 16-bit weights, KPU at 300 MHz (the 16x16 point is +26%, see the fit)."""
    cycles = L.kpu_layer_cycles(_layer(128, 128, size, size))
    est = (L.KPU_CYCLE_FACTOR * cycles + L.KPU_WEIGHT_CYCLES_PER_BYTE * 128 * 128 * 9 * 2) / 300e3 + L.KPU_LAYER_US / 1e3
    assert est == pytest.approx(board_ms, rel=0.10)


@needs_examples
@pytest.mark.parametrize("name,board_ms", [("slim-320.kmodel", 65.6), ("RFB-320.kmodel", 164.8)])
def test_info_estimate_within_25_percent_of_the_board(name, board_ms, capsys):
    """A10: ncc's own fast_facedetect kmodels on a KD233 (CPU and KPU at 400 MHz)."""
    assert main(["info", str(EXAMPLES / name), "--estimate", "--json"]) == 0
    import json

    est = json.loads(capsys.readouterr().out)["estimate"]
    assert abs(est["total_ms"] / board_ms - 1) <= 0.25, est["total_ms"]
    assert est["kpu_mhz"] == est["cpu_mhz"] == 400.0


@needs_examples
def test_clocks_scale_the_estimate():
    model = km.read_file(EXAMPLES / "slim-320.kmodel")
    base = L.estimate(model)
    fast = L.estimate(model, kpu_mhz=800, cpu_mhz=800)
    assert fast.kpu_ms < base.kpu_ms and fast.cpu_ms == pytest.approx(base.cpu_ms / 2)
    assert len(base.nodes) == len(model.nodes) and base.total_ms == pytest.approx(base.kpu_ms + base.cpu_ms)
    text = "\n".join(base.table_lines(top=5))
    assert "kpu_conv2d" in text or "quantized_binary" in text


def test_every_kmodel_body_has_a_cost():
    """A new opcode without a cost would silently count as free."""
    modelled = set(L._WORK) | {km.KpuConv2D}
    missing = [cls.__name__ for cls in km.BODIES.values() if cls not in modelled]
    assert not missing, missing


@needs_examples
def test_info_estimate_text(capsys):
    assert main(["info", str(EXAMPLES / "slim-320.kmodel"), "--estimate", "--kpu-clock", "300"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATED K210 LATENCY" in out and "KPU 300 MHz, CPU 400 MHz" in out
    assert "MAIXPY" in out  # the info part is still there
