"""Issue #16 item 6: a kmodel that no K210 can hold is an error (unless --allow-oversize), the firmware
budgets are warnings, and the compile summary names every CPU op the cost model puts over 1 ms.

The models are built in-process (tests/tflite_builder.py) as float builds, which need no dataset: a
float fully-connected layer keeps its weights as float32 in the kmodel (4 bytes each), so its size
is known from its shape alone."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from kcc import kmodel as km
from kcc.cli import main
from kcc.kmodel.spec import HEADER_SIZE, MEMORY_RANGE_SIZE, NODE_HEADER_SIZE, SHAPE_SIZE
from kcc.latency import estimate
from kcc.options import CompileOptions
from kcc.pipeline import compile_model
from kcc.report.summary import LINE_WIDTH, device_items

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("tflite_builder", ROOT / "tests" / "tflite_builder.py")
_builder = sys.modules.setdefault("tflite_builder", importlib.util.module_from_spec(_spec))
if not hasattr(_builder, "TfliteBuilder"):
    _spec.loader.exec_module(_builder)

MiB = 1 << 20


def _fc_model(path: Path, n_in: int, n_out: int) -> Path:
    """features [1, n_in] -> FULLY_CONNECTED 'big_fc' -> [1, n_out]: n_in * n_out float32 weights."""
    rng = np.random.default_rng(0)
    b = _builder.TfliteBuilder()
    x = b.input([1, n_in], name="features")
    w = b.const(rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.01)
    b.output(b.op("FULLY_CONNECTED", [x, w, b.const(np.zeros(n_out, np.float32))], name="big_fc",
                  out_shape=[1, n_out]))
    path.write_bytes(b.build())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fit")
    return {"over": _fc_model(d / "over.tflite", 1024, 1600),  # 6.25 MiB of weights: over 6 MiB
            "maixpy": _fc_model(d / "maixpy.tflite", 1024, 1000)}  # 3.9 MiB: over MaixPy's 3.5 only


def test_a_kmodel_no_k210_can_hold_is_one_error_line_and_no_file(models, tmp_path, capsys):
    out, dump = tmp_path / "m.kmodel", tmp_path / "ir"
    code = main(["compile", str(models["over"]), str(out), "--inference-type", "float",
                 "--dump-ir", str(dump)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: the kmodel needs 6.2"), err
    # the K210's 6 MiB, the largest item in the model's own name with its size, and the way out
    assert "more than the K210's 6.00 MiB of main memory" in err[0]
    assert re.search(r"largest: weights of 'big_fc' 6\.2\d MiB", err[0]), err[0]
    assert "--allow-oversize" in err[0]
    assert not out.exists() and not dump.exists()
    assert list(tmp_path.iterdir()) == []  # no staging leftovers either


def test_kcc_compile_refuses_it_too(models, tmp_path):
    """The Python call behaves as the command: an error and no file, unless allow_oversize."""
    import kcc
    from kcc.errors import ModelTooLargeError

    out = tmp_path / "m.kmodel"
    with pytest.raises(ModelTooLargeError, match="more than the K210's 6.00 MiB"):
        kcc.compile(models["over"], out, inference_type="float")
    assert not out.exists()
    assert len(kcc.compile(models["over"], out, inference_type="float", allow_oversize=True).kmodel) > 6 * MiB
    assert out.exists()


def test_allow_oversize_writes_it_and_warns(models, tmp_path, capsys):
    out = tmp_path / "m.kmodel"
    assert main(["compile", str(models["over"]), str(out), "--inference-type", "float",
                 "--allow-oversize"]) == 0
    text = capsys.readouterr().out
    warning = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--allow-oversize" in warning[0] and "'big_fc'" in warning[0]
    data = out.read_bytes()
    assert len(data) + km.read(data).main_mem > 6 * MiB


def test_over_the_maixpy_budget_is_a_warning_naming_the_weights(models, tmp_path, capsys):
    out = tmp_path / "m.kmodel"
    assert main(["compile", str(models["maixpy"]), str(out), "--inference-type", "float"]) == 0
    text = capsys.readouterr().out
    warning = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, text
    assert "more than MaixPy's 3.50 MiB" in warning[0] and "bare SDK" not in warning[0]
    assert re.search(r"largest: weights of 'big_fc' 3\.9\d MiB", warning[0])
    assert "MaixPy (3.5 MiB) DOES NOT FIT" in text  # the Device RAM line stays as it was
    assert out.is_file()


def test_a_model_that_fits_everywhere_gets_no_warning(tmp_path, capsys):
    model = _fc_model(tmp_path / "small.tflite", 64, 32)
    assert main(["compile", str(model), str(tmp_path / "m.kmodel"), "--inference-type", "float"]) == 0
    assert "warning:" not in capsys.readouterr().out


def test_device_items_account_for_the_whole_file_and_the_peak(models):
    """The items are the file's bodies and constants, each byte once, and the buffers alive at the
    working-memory peak."""
    r = compile_model(models["maixpy"], CompileOptions(inference_type="float"))
    items = device_items(r)
    model = km.read(r.kmodel)
    n_in, n_out = len(model.inputs), len(model.outputs)
    layout = HEADER_SIZE + (MEMORY_RANGE_SIZE + SHAPE_SIZE) * n_in + MEMORY_RANGE_SIZE * n_out \
        + NODE_HEADER_SIZE * len(model.nodes)
    in_file = sum(size for what, size in items if not what.startswith("working memory"))
    assert in_file == len(r.kmodel) - layout
    working = sum(size for what, size in items if what.startswith("working memory"))
    assert working == r.emitted.model.main_mem
    assert items[0][0] == "weights of 'big_fc'" and items[0][1] >= 1024 * 1000 * 4


def _many_ops(path: Path) -> Path:
    """Six op types whose main op each costs well over 1 ms on the CPU in a float build, ADD's a small
    share of the whole (the big conv dominates), and one small ADD under 1 ms."""
    rng = np.random.default_rng(1)
    b = _builder.TfliteBuilder()
    x = b.input([1, 64, 64, 8], name="image")
    w = b.const(rng.standard_normal((16, 3, 3, 8)).astype(np.float32) * 0.2)
    y = b.op("CONV_2D", [x, w, b.const(np.zeros(16, np.float32))], padding="SAME", stride_w=1, stride_h=1,
             fused_activation_function="NONE", name="conv_a")
    t = b.op("TANH", [y], name="tanh_a")
    s = b.op("ADD", [y, t], fused_activation_function="NONE", name="add_a")
    m = b.op("MUL", [s, s], fused_activation_function="NONE", name="mul_a")
    p = b.op("MAX_POOL_2D", [m], padding="VALID", filter_width=2, filter_height=2, stride_w=2, stride_h=2,
             fused_activation_function="NONE", name="pool_a")
    q = b.op("AVERAGE_POOL_2D", [p], padding="VALID", filter_width=2, filter_height=2, stride_w=2,
             stride_h=2, fused_activation_function="NONE", name="avg_a")
    b.output(b.op("ADD", [q, q], fused_activation_function="NONE", name="add_small"))
    path.write_bytes(b.build())
    return path


def test_the_summary_names_every_cpu_op_over_1_ms(tmp_path, capsys):
    model = _many_ops(tmp_path / "ops.tflite")
    names = ["conv_a", "tanh_a", "add_a", "mul_a", "pool_a", "avg_a", "add_small"]
    r = compile_model(model, CompileOptions(inference_type="float"))
    # the estimate per model op, charged here by the names the model gave (a node the compiler adds
    # for an op is named '<op>/...')
    ms = dict.fromkeys(names, 0.0)
    for n in estimate(r.emitted.model).nodes:
        node = r.emitted.node_names[n.index]
        op = next((k for k in names if node == k or node.startswith(k + "/")), None)
        if op is not None:
            ms[op] += n.cpu_ms
    over = {k: v for k, v in ms.items() if v > 1.0}
    assert set(over) == set(names) - {"add_small"}, ms  # the model is what this test means it to be
    assert ms["add_a"] / estimate(r.emitted.model).total_ms < 0.01  # under the summary's 1 % share
    assert main(["compile", str(model), str(tmp_path / "m.kmodel"), "--inference-type", "float"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Estimated CPU time by model op"))
    end = lines.index("", head)
    block = "\n".join(lines[head:end])
    for op, cost in over.items():
        assert f"{op} {cost:.1f} ms" in block, (op, cost, block)
    assert "add_small" not in block and "+1 more of at most 1 ms" in block
    assert all(len(line) <= LINE_WIDTH for line in lines[head:end]), block


# -- the layout MaixPy's kpu.load_flash streams from flash ---------------------------------------
def test_flash_layout_reverses_the_bytes_of_every_32_bit_word():
    """Worked by hand from le2be.py (sipeed/MaixPy-v1_scripts tools_on_PC/model_tools): bytes i..i+3
    are written as i+3, i+2, i+1, i. The kmodel's first word, 'KMDL' = 0x4B4D444C stored little-endian
    as b'LDMK', reads b'KMDL' after the swap: the big-endian bytes of the same number."""
    from kcc.cli.commands import flash_layout
    from kcc.errors import KccError

    assert flash_layout(bytes(range(8))) == bytes([3, 2, 1, 0, 7, 6, 5, 4])
    assert flash_layout(b"LDMK\x04\x00\x00\x00") == b"KMDL\x00\x00\x00\x04"
    assert flash_layout(flash_layout(b"abcdefgh")) == b"abcdefgh"
    with pytest.raises(KccError):
        flash_layout(b"abcde")


def test_flash_kmodel_is_written_with_the_kmodel_and_the_warning_points_to_it(models, tmp_path, capsys):
    out, flash = tmp_path / "m.kmodel", tmp_path / "m_be.kmodel"
    assert main(["compile", str(models["maixpy"]), str(out), "--inference-type", "float",
                 "--flash-kmodel", str(flash)]) == 0
    warning = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:"))
    assert "kpu.load_flash" in warning and "--flash-kmodel" in warning
    data, swapped = out.read_bytes(), flash.read_bytes()
    assert swapped[:4] == b"KMDL" and len(swapped) == len(data)
    assert np.array_equal(np.frombuffer(swapped, ">u4"), np.frombuffer(data, "<u4"))


def test_an_oversize_error_writes_no_flash_kmodel_either(models, tmp_path, capsys):
    flash = tmp_path / "m_be.kmodel"
    assert main(["compile", str(models["over"]), str(tmp_path / "m.kmodel"), "--inference-type", "float",
                 "--flash-kmodel", str(flash)]) == 1
    assert capsys.readouterr().err.startswith("error: the kmodel needs")
    assert list(tmp_path.iterdir()) == []


def test_the_maixpy_warning_offers_ram_budget_when_speed_took_the_ram(models):
    """A model over MaixPy's budget only because decompose_kernels spent RAM on faster KPU forms
    (CompileResult.ram_for_speed) is told that --ram-budget maixpy gives it back; one that is over
    anyway is not."""
    from dataclasses import replace

    from kcc.report.summary import fit_warnings

    result = compile_model(models["maixpy"], CompileOptions(inference_type="float"))
    assert "--ram-budget" not in fit_warnings(result)[0]
    assert "--ram-budget maixpy" in fit_warnings(replace(result, ram_for_speed=1 * MiB))[0]
    assert "--ram-budget" not in fit_warnings(replace(result, ram_for_speed=4096))[0]
