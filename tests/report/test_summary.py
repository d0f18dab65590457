"""Issue #18: what the compile summary and the report tell a user, in the model's own names.

The models are built in-process (tests/tflite_builder.py); every tensor a test names is named here,
so the model's names are known independently of the compiler."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from kcc.alloc.names import model_name
from kcc.cli import main
from kcc.report.quant_error import LayerError

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("tflite_builder", ROOT / "tests" / "tflite_builder.py")
_builder = sys.modules.setdefault("tflite_builder", importlib.util.module_from_spec(_spec))
if not hasattr(_builder, "TfliteBuilder"):
    _spec.loader.exec_module(_builder)

#: path components of kcc's own tensors that once reached what users read
LEAKS = re.compile(r"/(dequantize|quantize|u8|upload|download|kpu|kpu_pad|pos|neg|alpha_neg)(_\d+)?\b")


def _conv(b, x, cin: int, cout: int, k: int, name: str, rng, stride: int = 1, act: str = "NONE",
          depthwise: bool = False, scale: float = 0.3):
    if depthwise:
        w = b.const(rng.standard_normal((1, k, k, cin)).astype(np.float32) * 0.3)
        return b.op("DEPTHWISE_CONV_2D", [x, w, b.const(np.zeros(cin, np.float32))], padding="SAME",
                    stride_w=stride, stride_h=stride, depth_multiplier=1, fused_activation_function=act,
                    name=name)
    w = b.const(rng.standard_normal((cout, k, k, cin)).astype(np.float32) * scale)
    return b.op("CONV_2D", [x, w, b.const(np.full(cout, 0.05, np.float32))], padding="SAME", stride_w=stride,
                stride_h=stride, fused_activation_function=act, name=name)


def _maxpool(b, x, f: int, s: int, name: str):
    return b.op("MAX_POOL_2D", [x], padding="VALID", filter_width=f, filter_height=f, stride_w=s, stride_h=s,
                name=name)


def _raw_dataset(d: Path, shape: tuple[int, ...], count: int = 3) -> Path:
    d.mkdir()
    rng = np.random.default_rng(7)
    for i in range(count):
        rng.uniform(-1, 1, shape).astype(np.float32).tofile(d / f"s{i}.bin")
    return d


@pytest.fixture(scope="module")
def prelu_model(tmp_path_factory) -> dict:
    """conv -> PReLU (alpha per position, outside [0, 1]: the KPU form takes one slope per channel, so it
    runs on the CPU in float) -> 2x2 max pool -> conv,
    the last conv a model output on the KPU (its float output is a dequantize kcc adds)."""
    rng = np.random.default_rng(4)
    b = _builder.TfliteBuilder()
    x = b.input([1, 32, 32, 8], name="image")
    y = _conv(b, x, 8, 16, 3, "stem", rng)
    y = b.op("PRELU", [y, b.const(rng.uniform(-2.0, -1.2, (32, 32, 16)).astype(np.float32))], name="stem_prelu")
    y = _maxpool(b, y, 2, 2, "pool")
    b.output(_conv(b, y, 16, 24, 1, "head", rng))
    d = tmp_path_factory.mktemp("prelu")
    (d / "m.tflite").write_bytes(b.build())
    return {"model": d / "m.tflite", "data": _raw_dataset(d / "data", (1, 8, 32, 32)), "dir": d}


def _compile(model: dict, out: Path, *flags: str) -> None:
    assert main(["compile", str(model["model"]), str(out), "--dataset", str(model["data"]),
                 "--dataset-format", "raw", *flags]) == 0


def test_summary_names_the_cpu_work_that_costs_most_and_the_models_outputs(prelu_model, tmp_path, capsys):
    rep = tmp_path / "rep"
    _compile(prelu_model, tmp_path / "m.kmodel", "--report", str(rep), "--memory-report")
    out = capsys.readouterr().out
    lines = out.splitlines()
    # ncc's SUMMARY block lists the outputs under the names the model gave them
    outputs = lines[lines.index("OUTPUTS") + 1:]
    assert [line.split("\t")[1] for line in outputs] == ["head"]
    # the CPU time is charged to the model's ops: the PReLU is the costliest, named as the model names it
    head = next(i for i, line in enumerate(lines) if line.startswith("Estimated CPU time by model op"))
    first = lines[head + 1].split()
    assert first[0] == "PRELU" and "stem_prelu" in lines[head + 1]
    data = json.loads((rep / "report.json").read_text())
    work = data["latency"]["cpu_by_model_op"]
    assert work[0]["kind"] == "PRELU" and [op["name"] for op in work[0]["ops"]] == ["stem_prelu"]
    # every ms of CPU time is charged once: the groups add up to the estimate's CPU time
    assert sum(w["ms"] for w in work) == pytest.approx(data["latency"]["cpu_ms"], abs=1e-3 * len(work))
    nodes = data["latency"]["nodes"]
    assert work[0]["share"] == pytest.approx(work[0]["ms"] / sum(n["ms"] for n in nodes), abs=1e-4)
    # the pool stays on the CPU, and the line says why in the model's terms
    pool = next(line for line in lines if line.startswith("  CPU  pool2d"))
    assert "its input comes from PRELU 'stem_prelu' on the CPU" in pool
    assert "## Summary" in (md := (rep / "report.md").read_text()) and "| most CPU time | PRELU" in md
    # no name of kcc's own tensors in what the user reads: the printed summary (memory table
    # included), the report's Markdown and its output list
    assert not LEAKS.search(out), LEAKS.search(out)
    assert not LEAKS.search(md), LEAKS.search(md)
    assert [o["name"] for o in data["outputs"]] == ["head"]


def test_kmodel_info_outputs_keep_their_order_and_shapes(prelu_model, tmp_path, capsys):
    """The display names change nothing in the file: `kcc info` reads the same output shapes."""
    _compile(prelu_model, tmp_path / "m.kmodel", "-q")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "m.kmodel"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [o["shape"] for o in info["outputs"]] == [[1, 24, 16, 16]]


def _placements(tmp_path: Path, build, shape=(1, 16, 16, 8)) -> dict:
    """The `--report` placements, by node, of the NHWC model `build(builder, input, rng)` makes."""
    b = _builder.TfliteBuilder()
    x = b.input(list(shape), name="image")
    b.output(build(b, x, np.random.default_rng(5)))
    data = _raw_dataset(tmp_path / "data", (shape[0], shape[3], *shape[1:3]))
    model = {"model": tmp_path / "p.tflite", "data": data}
    model["model"].write_bytes(b.build())
    rep = tmp_path / "rep"
    _compile(model, tmp_path / "p.kmodel", "-q", "--report", str(rep))
    return {p["node"]: p for p in json.loads((rep / "report.json").read_text())["placement"]}


def _pool_reason(tmp_path: Path, build, shape=(1, 16, 16, 8)) -> str:
    placements = _placements(tmp_path, build, shape)
    assert not placements["pool"]["on_kpu"]
    return placements["pool"]["reason"]


def test_a_pool_the_kpu_fuses_needs_no_reason(tmp_path):
    """Control: a 2x2 stride-2 max pool behind a 3x3 'same' conv is on the KPU's pool unit."""
    def build(b, x, rng):
        return _maxpool(b, _conv(b, x, 8, 8, 3, "conv", rng), 2, 2, "pool")
    placement = list(_placements(tmp_path, build, (1, 16, 16, 8)).values())
    assert [p["node"] for p in placement] == ["conv"] and placement[0]["on_kpu"]  # no pool left on the CPU
    assert "pool max_2_s2" in placement[0]["reason"]


def _avgpool(b, x, f: int, s: int, name: str):
    return b.op("AVERAGE_POOL_2D", [x], padding="VALID", filter_width=f, filter_height=f, stride_w=s, stride_h=s,
                name=name)


@pytest.mark.parametrize("case, expected", [
    ("window", "its 3x3 window, stride 2 is not one the KPU's pool unit has"),
    ("depthwise", "the layer before it, 'dw', is depthwise"),
    ("two_readers", "the output of the layer before it, 'conv', is also read unpooled"),
    ("strided", "the stride-2 conv before it, 'conv', is a KPU layer at stride 1 whose odd rows a copy layer picks"),
    ("stride3", "the conv before it, 'conv', is cropped on the CPU after the KPU"),
    ("input", "its input comes from the model input on the CPU"),
])
def test_every_pool_on_the_cpu_says_which_kpu_limit_it_misses(tmp_path, case, expected):
    """Mean pools where a max pool would be a KPU layer of its own reading the map in KPU RAM
    (legalize_kpu's identity pools, max only: the KPU's mean pools floor)."""
    def build(b, x, rng):
        if case == "window":
            return _maxpool(b, _conv(b, x, 8, 8, 3, "conv", rng), 3, 2, "pool")
        if case == "depthwise":
            return _avgpool(b, _conv(b, x, 8, 8, 3, "dw", rng, depthwise=True), 2, 2, "pool")
        if case == "two_readers":  # 384 channels of 4x4: a pooled twin KPU layer would cost more than the pool
            y = _conv(b, x, 384, 384, 3, "conv", rng)
            pooled = _avgpool(b, y, 2, 2, "pool")
            b.output(y)
            return pooled
        if case in ("strided", "stride3"):
            pool = _avgpool if case == "strided" else _maxpool
            return pool(b, _conv(b, x, 8, 8, 3, "conv", rng, stride=2 if case == "strided" else 3), 2, 2, "pool")
        return _conv(b, _maxpool(b, x, 2, 2, "pool"), 8, 8, 3, "conv", rng)
    reason = _pool_reason(tmp_path, build, (1, 4, 4, 384) if case == "two_readers" else (1, 16, 16, 8))
    kind = "mean" if case in ("depthwise", "two_readers", "strided") else "max"
    assert reason.startswith(f"{kind} pool in float on the CPU: ") and expected in reason, reason


@pytest.mark.parametrize("case", ["depthwise", "two_readers", "strided"])
def test_a_max_pool_of_a_kpu_layer_it_cannot_fuse_with_pools_the_map_in_kpu_ram(tmp_path, case):
    """The same max pools: a 1x1 KPU layer with identity weights and the pool reads the map in KPU RAM."""
    def build(b, x, rng):
        if case == "depthwise":
            return _maxpool(b, _conv(b, x, 8, 8, 3, "dw", rng, depthwise=True), 2, 2, "pool")
        if case == "two_readers":
            y = _conv(b, x, 384, 384, 3, "conv", rng)
            b.output(y)
            return _maxpool(b, y, 2, 2, "pool")
        return _maxpool(b, _conv(b, x, 8, 8, 3, "conv", rng, stride=2), 2, 2, "pool")
    shape = (1, 4, 4, 384) if case == "two_readers" else (1, 16, 16, 8)
    placement = _placements(tmp_path, build, shape)
    assert placement["pool"]["on_kpu"], placement["pool"]
    assert placement["pool"]["reason"] == "max_2_s2: a 1x1 KPU layer with identity weights pools the map in KPU RAM"


def test_a_pool_of_a_layer_also_read_unpooled_is_a_second_kpu_layer(tmp_path):
    """The pool unit writes a layer's pooled output only: when the unpooled output is read too, the
    same conv with the pool is a second KPU layer (cheaper than the pool on the CPU), and both
    outputs are the KPU's."""
    def build(b, x, rng):
        y = _conv(b, x, 8, 8, 3, "conv", rng)
        b.output(y)
        return _maxpool(b, y, 2, 2, "pool")
    placement = _placements(tmp_path, build, (1, 16, 16, 8))
    assert placement["conv"]["on_kpu"] and placement["pool"]["on_kpu"], placement
    assert placement["pool"]["reason"].startswith("max_2_s2: a second KPU layer computes 'conv' pooled")


def test_ranking_uses_the_in_range_sqnr_only_where_the_range_clips_on_purpose():
    rng = np.random.default_rng(0)
    f = rng.uniform(-8, 8, 4000)

    def layer(name, q, lo, hi, clipping=""):
        e = LayerError(name, 0, (f.size,), clipping=clipping)
        e.add(f, q, lo, hi)
        return e

    clipped_q = np.clip(f, -2, 8) + rng.normal(0, 0.01, f.size)  # rounds finely, clips a fifth of the values
    logits = layer("logits", clipped_q, -2, 8, "softmax logits")
    unplanned = layer("unplanned", clipped_q, -2, 8)
    noisy = layer("noisy", f + rng.normal(0, 0.3, f.size), -8, 8)  # ~25 dB, nothing clipped
    assert logits.sqnr_db < noisy.sqnr_db < logits.sqnr_in_range_db
    assert logits.ranked_sqnr_db == logits.sqnr_in_range_db
    assert unplanned.ranked_sqnr_db == unplanned.sqnr_db  # clipping no one asked for counts as error
    ranked = sorted([logits, unplanned, noisy], key=lambda e: e.ranked_sqnr_db)
    assert [e.name for e in ranked] == ["unplanned", "noisy", "logits"]


@pytest.fixture(scope="module")
def softmax_report(tmp_path_factory) -> Path:
    """conv -> conv (logits) -> reshape -> softmax, compiled with --report."""
    rng = np.random.default_rng(6)
    b = _builder.TfliteBuilder()
    x = b.input([1, 8, 8, 4], name="image")
    y = _conv(b, x, 4, 16, 3, "features", rng, act="RELU")
    logits = _conv(b, y, 16, 40, 1, "logits", rng, scale=4.0)  # spans well beyond LOGIT_SPAN
    flat = b.op("RESHAPE", [logits, b.const(np.array([1, 8 * 8 * 40], np.int32))], name="flat")
    b.output(b.op("SOFTMAX", [flat], beta=1.0, name="probs"))
    d = tmp_path_factory.mktemp("softmax")
    (d / "m.tflite").write_bytes(b.build())
    model = {"model": d / "m.tflite", "data": _raw_dataset(d / "data", (1, 4, 8, 8), 4)}
    _compile(model, d / "m.kmodel", "-q", "--report", str(d / "rep"))
    return d / "rep"


def test_report_summary_table_and_plot_share_one_ranking(softmax_report):
    from kcc.report import plots
    from kcc.report.quant_error import QuantErrorReport

    data = json.loads((softmax_report / "report.json").read_text())
    layers = data["quant_error"]["layers"]
    by_name = {model_name(e["name"]): e for e in layers}
    assert by_name["logits"]["clipped_on_purpose"] == "softmax logits"
    assert by_name["logits"]["clipped_fraction"] > 0
    assert by_name["features"]["clipped_on_purpose"] == ""
    ranked = [e["ranked_sqnr_db"] for e in layers]
    assert ranked == sorted(ranked)  # worst first, by the one figure
    md = (softmax_report / "report.md").read_text()
    worst = next(line for line in md.splitlines() if line.startswith("| worst KPU layer"))
    assert f"`{model_name(layers[0]['name'])}`" in worst and f"{layers[0]['ranked_sqnr_db']:.1f} dB" in worst
    assert "clipped on purpose (softmax logits)" in md
    # the plot's bars are the ranked figure, and the logits' note says the clipping is deliberate
    e = LayerError(layers[0]["name"], 0, (1,), clipping="softmax logits", clipped=1, count=2)
    assert "clipped on purpose (softmax logits)" in plots._note(e)
    png = plots.quant_error_png(QuantErrorReport([e], 1, 1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_placement_reasons_say_decompositions_in_words(tmp_path, monkeypatch):
    """A 5x5 depthwise conv the default keeps on the CPU (without the model's allowance, which a
    `fan_kpu` of it would take): the reason names the faster form in words."""
    from kcc.passes import decompose_kernels
    monkeypatch.setattr(decompose_kernels, "MODEL_KPU_BYTES", 0)
    rng = np.random.default_rng(2)
    b = _builder.TfliteBuilder()
    x = b.input([1, 12, 12, 3], name="image")
    y = _conv(b, x, 3, 512, 1, "expand", rng, act="RELU6")
    w = b.const(rng.standard_normal((1, 5, 5, 512)).astype(np.float32) * 0.2)
    b.output(b.op("DEPTHWISE_CONV_2D", [y, w, b.const(np.zeros(512, np.float32))], padding="SAME", stride_w=1,
                  stride_h=1, depth_multiplier=1, fused_activation_function="RELU6", name="dw5"))
    (tmp_path / "w.tflite").write_bytes(b.build())
    model = {"model": tmp_path / "w.tflite", "data": _raw_dataset(tmp_path / "data", (1, 3, 12, 12))}
    _compile(model, tmp_path / "w.kmodel", "-q", "--report", str(tmp_path / "rep"))
    placement = json.loads((tmp_path / "rep" / "report.json").read_text())["placement"]
    reason = {p["node"]: p for p in placement}["dw5"]
    assert not reason["on_kpu"] and "3x3 terms" in reason["reason"]
    assert not re.search(r"z=\d|polyphase|blocks", reason["reason"]), reason["reason"]
