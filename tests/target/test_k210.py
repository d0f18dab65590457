"""kcc/target: the K210 rules the passes, the emitter and the validator share."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kcc import kmodel as km
from kcc.kmodel.layer import LAYER_FIELDS
from kcc.target import k210
from kcc.target.quant_rules import (
    fixup_range,
    int8_channel_grids,
    on_own_grid,
    uint8_grid,
    widest_weight_range,
)

SHAPES = [  # (C, H, W) in, (C, H, W) out, filter size, depthwise
    ((3, 240, 320), (16, 120, 160), 3, False),  # 2-row stride: out W 160 -> 3 lines a row
    ((16, 16, 16), (16, 16, 16), 3, True),  # W <= 16: 4 channels a line
    ((32, 32, 32), (64, 16, 16), 1, False),  # W <= 32 in, <= 16 out
    ((512, 8, 8), (1024, 8, 8), 3, False),  # 4608 B a channel: 6 channels a load, 171 loads
    ((1024, 4, 4), (1024, 4, 4), 1, False),
    ((96, 65, 65), (96, 65, 65), 3, True),  # W = 65: 2 lines a row
]


def _layer(in_chw, out_chw, f, depthwise) -> km.KpuConv2D:
    fields = k210.layer_fields(in_chw, out_chw, f, depthwise)
    stride = in_chw[2] // out_chw[2]
    layer = km.KpuLayerArgument(
        depth_wise_layer=int(depthwise),
        kernel_type=km.KpuFilterType.FILTER_3X3 if f == 3 else km.KpuFilterType.FILTER_1X1,
        pool_type=km.KpuPoolType.LEFT_TOP_2_S2 if stride == 2 else km.KpuPoolType.BYPASS,
        **{name: value % (1 << LAYER_FIELDS[name][2]) for name, value in fields.items()})
    oc = out_chw[0]
    weights = oc * f * f * (1 if depthwise else in_chw[0])
    return km.KpuConv2D(layer=layer, batch_norm=km.KpuBatchNormTable.of([(1, 0, 0)] * oc),
                        activation=km.KpuActivationTable((km.KpuActivationSegment(0, 1, 0, 0),) * 16),
                        weights=np.zeros(weights, np.uint8))


@pytest.mark.parametrize("in_chw,out_chw,f,depthwise", SHAPES)
def test_the_emitters_fields_are_the_ones_the_validator_expects(in_chw, out_chw, f, depthwise) -> None:
    body = _layer(in_chw, out_chw, f, depthwise)
    loads = k210.weight_loads(out_chw[0], in_chw[0], f, depthwise)[1] + 1
    if loads > k210.MAX_WEIGHT_LOADS:  # load_time wraps in its 6 bits: legalize_kpu rejects such a layer
        assert km.layer_problems(body) == [f"load_time is {(loads - 1) % 64}, expected {loads - 1} "
                                           "(does not fit in 6 bits)"]
    else:
        assert km.layer_problems(body) == []


def test_a_wrong_layout_field_is_reported() -> None:
    body = _layer((16, 16, 16), (16, 16, 16), 3, True)
    bad = km.KpuConv2D(layer=body.layer.replace(coef_group=2), batch_norm=body.batch_norm,
                       activation=body.activation, weights=body.weights)
    assert km.layer_problems(bad) == ["coef_group is 2, expected 4"]


def test_weight_loads_follow_ncc_rule() -> None:
    # (para_size, load_time, o_ch_num_coef): whole channels, at most 30720 bytes a load
    assert k210.weight_loads(1024, 512, 3, False) == (6 * 4608, 170, 5)
    assert k210.weight_loads(16, 3, 3, False) == (16 * 27, 0, 15)
    assert k210.weight_loads(96, 96, 3, True) == (96 * 9, 0, 95)
    assert k210.weight_loads(8, 4096, 3, False) == (36864, 7, 0)  # a channel over one load: still one a load


def test_limits_are_the_register_widths() -> None:
    assert k210.MAX_CHANNELS == 1024 == 1 << LAYER_FIELDS["o_ch_num"][2]
    assert k210.MAX_MAP_PIXELS == 65536 and k210.MAX_WEIGHT_LOADS == 64
    assert k210.KPU_RAM_SIZE == 2 * 1024 * 1024 and k210.KPU_WEIGHTS_PER_LOAD == 30720


def test_kpu_layer_cycles_count_lines_groups_and_output_channels() -> None:
    layer = _layer((3, 240, 320), (16, 120, 160), 3, False).layer
    assert k210.kpu_layer_cycles(layer) == 240 * 5 * 3 * 16  # 5 lines a row, 1 channel a line group
    assert k210.cpu_cycles("pad") == 54.0  # measured: unscaled
    assert k210.cpu_cycles("transpose") == 50.0 * k210.STRUCTURAL_SCALE


def test_quant_rules() -> None:
    assert fixup_range(0.5, 2.0) == (0.0, 2.0)
    assert fixup_range(1.0, 1.0) == pytest.approx((0.0, 1.1))
    codes = np.arange(256, dtype=np.float64).reshape(4, 4, 4, 4)
    w = ((codes - 100) / 64).astype(np.float32)
    assert uint8_grid(w) == (100, pytest.approx(64.0))
    assert on_own_grid(w)
    q = np.array([[-127, 5, 127], [3, -127, 0]], np.float64)
    sym = (q * np.array([[0.01], [0.02]])).astype(np.float32)
    step, e = int8_channel_grids(sym)
    assert step == pytest.approx(0.02) and e == pytest.approx([2.0, 1.0])
    assert not on_own_grid(np.array([[0.1, 0.2, 0.35]], np.float32) ** 3)


def test_the_target_and_the_passes_import_no_emitter_allocator_or_or_tools() -> None:
    code = ("import sys, kcc.target.k210, kcc.target.quant_rules, kcc.passes.legalize_kpu, "
            "kcc.passes.decompose_kernels, kcc.latency\n"
            "bad = sorted(m for m in sys.modules\n"
            "             if m.startswith(('kcc.emit', 'kcc.alloc', 'ortools', 'kcc.quant')))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_widest_weight_range_is_fixup_range_of_every_channel():
    """The vectorized widest channel equals fixup_range per channel, float32 step for float32 step
    (clamps at +-1000, minimum widths, ranges made to hold 0), on weights of every scale."""
    rng = np.random.default_rng(7)
    cases = [np.zeros((4, 1, 3, 3), np.float32), np.full((3, 2), 5.0, np.float32), np.full((3, 2), -5.0, np.float32),
             (rng.standard_normal((6, 4)) * 2000).astype(np.float32), np.full((2, 3), 0.004, np.float32)]
    for _ in range(200):
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 20)))
        cases.append((rng.standard_normal(shape) * 10 ** rng.uniform(-5, 4)
                      + rng.uniform(-3, 3) * 10 ** rng.uniform(-4, 2)).astype(np.float32))
    for w in cases:
        want = max(hi - lo for lo, hi in (fixup_range(float(c.min()), float(c.max())) for c in w.reshape(len(w), -1)))
        assert widest_weight_range(w) == want, w
