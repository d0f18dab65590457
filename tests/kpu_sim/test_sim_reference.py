"""kpu_sim on every real kmodel v4 of the reference kit: golden outputs, checked against independent oracles.

The five kmodels `ncc infer` ran are compared byte for byte with ncc's outputs in test_sim_ncc_outputs.py.
Every other v4 file runs here on a deterministic input (`_inputs`: seeded uint8 / float32 noise of
the model's input shapes) and its outputs must match tests/reference/golden/kpu_sim_outputs.json: the
sha256 of all outputs as raw float32, plus per output the count, sum, min, max and a crc32 of each
sixteenth, so that a failure says how much moved and where. Files shipped in tests/reference run in
the default suite; the kit-only ones are `slow` + `kit`.

What the recorded outputs were checked against (`--record` writes nothing unless these pass, and
they stay tests):
* the scalar KPU layer of kpu_reference.py (kpu_semantics.md §3, no shared code with kpu_sim's
  kernels): every kpu_conv2d layer of every file, on its actual input map during the golden run,
  its first, middle and last output channels, a crop at the top-left and one at the bottom-right
  of the map (the last row block of kpu_conv.py), pool, pad and map edges included (slow; the
  default suite checks 69932ea/model4);
* ncc's own behaviour (ncc-outputs/README.md: first-fit and CP-SAT kmodels of one compile give
  byte-identical outputs): each such pair agrees on the golden input;
* TFLite: nncase-examples/iris.kmodel (float) against its source iris.tflite.
The CPU opcodes of the ulffd graphs (pad, quantize, dequantize, transpose, concat, table_lookup1d,
kpu_upload) and of iris (matmul) are byte-exact with ncc in test_sim_ncc_outputs.py.

Regenerate after an intended change: `python tests/kpu_sim/test_sim_reference.py --record`
(re-records the kit-only entries when ../shared/reference is present, else keeps them).
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest

if __name__ == "__main__":  # --record, run as a script: the test helpers' folders on sys.path
    HERE = Path(__file__).resolve().parent
    sys.path[:0] = [str(HERE.parent / "support"), str(HERE)]

import refkit  # noqa: E402
from kpu_reference import POOL_STRIDE, POOL_WINDOW, Layer, reference_layer  # noqa: E402

import kcc.kmodel as km  # noqa: E402
import kpu_sim  # noqa: E402
from kcc.errors import KmodelError  # noqa: E402

GOLDEN = refkit.SHIPPED / "golden" / "kpu_sim_outputs.json"
SEED = 4
BLOCKS = 16
V4_MAGIC, V3_MAGIC = b"LDMK\x04\x00\x00\x00", b"\x03\x00\x00\x00"

# Kmodels checked against ncc's own `ncc infer` files instead (test_sim_ncc_outputs.py).
NCC_INFER = {f"ncc-outputs/kmodels/{k}.kmodel" for k in
             ("ulffd_landmark_no_clip_ff", "ulffd_landmark_l2_ff", "ulffd_landmark_no_clip", "iris_float_ff",
              "iris_u8_no_clip_ff")}  # fmt: skip

# One ncc compile, two memory plans (ncc-outputs/README.md): CP-SAT stand-in vs first fit (`_ff`).
PLAN_PAIRS = [(f"ncc-outputs/kmodels/{k}.kmodel", f"ncc-outputs/kmodels/{k}_ff.kmodel") for k in
              ("iris_float", "iris_u8_no_clip", "iris_u8_l2", "ulffd_landmark_no_clip", "ulffd_landmark_l2",
               "slim320_no_clip", "slim320_l2", "rfb320_no_clip", "rfb320_l2")]  # fmt: skip


def _kmodels(root: Path, magic: bytes) -> list[str]:
    paths = [p for p in root.rglob("*.kmodel") if p.read_bytes()[: len(magic)] == magic]
    return sorted(str(p.relative_to(root)) for p in paths)


SHIPPED_V4 = _kmodels(refkit.SHIPPED, V4_MAGIC)
SHIPPED_V3 = _kmodels(refkit.SHIPPED, V3_MAGIC)


def _path(name: str) -> Path:
    shipped = refkit.SHIPPED / name
    return shipped if shipped.is_file() else refkit.REFERENCE / name


def _kit_marks(*names: str) -> tuple:
    """None for files in tests/reference (default suite), slow + kit if one is only in the full kit."""
    return () if all((refkit.SHIPPED / n).is_file() for n in names) else (pytest.mark.slow, pytest.mark.kit)


def _kit_param(name: str):
    return pytest.param(name, marks=_kit_marks(name), id=name)


@cache
def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


@cache
def _program(name: str) -> kpu_sim.Program:
    return kpu_sim.load(_path(name))


def _inputs(program: kpu_sim.Program) -> list[np.ndarray]:
    """The golden input: one generator seeded with SEED, drawn input by input in order."""
    rng = np.random.default_rng(SEED)
    return [rng.integers(0, 256, i.count).astype(np.uint8) if i.dtype == np.uint8
            else rng.standard_normal(i.count).astype(np.float32) for i in program.inputs]  # fmt: skip


@cache
def _run(name: str) -> tuple[np.ndarray, ...]:
    program = _program(name)
    return tuple(program.run(_inputs(program)))


def _crc_blocks(o: np.ndarray) -> str:
    return " ".join(f"{zlib.crc32(b.astype('<f4').tobytes()):08x}" for b in np.array_split(o, BLOCKS))


def _summary(outputs: tuple[np.ndarray, ...]) -> dict:
    data = b"".join(o.astype("<f4").tobytes() for o in outputs)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "outputs": [{"count": int(o.size), "sum": float(o.astype(np.float64).sum()), "min": float(o.min()),
                     "max": float(o.max()), "blocks": _crc_blocks(o)} for o in outputs],
    }  # fmt: skip


def _what_moved(old: dict, new: dict) -> str:
    lines = []
    for i, (a, b) in enumerate(zip(old["outputs"], new["outputs"])):
        if a["count"] != b["count"]:
            lines.append(f"output {i}: {b['count']} values, was {a['count']}")
            continue
        changed = sum(x != y for x, y in zip(a["blocks"].split(), b["blocks"].split()))
        if changed:
            lines.append(f"output {i} ({a['count']} values): {changed} of {BLOCKS} blocks differ; "
                         f"sum {a['sum']:.6g} -> {b['sum']:.6g}, min {a['min']:.6g} -> {b['min']:.6g}, "
                         f"max {a['max']:.6g} -> {b['max']:.6g}")
    if len(old["outputs"]) != len(new["outputs"]):
        lines.append(f"{len(new['outputs'])} outputs, was {len(old['outputs'])}")
    return "; ".join(lines) or "same blocks, different sha256"


# -- the scalar reference on crops of every KPU layer ------------------------------------------------


def _kpu_layer_maps(name: str) -> list[tuple[int, km.KpuConv2D, np.ndarray, np.ndarray]]:
    """(node index, body, input map, output map) of every kpu_conv2d in the golden run, NCHW uint8.

    A layer's input map is read from KPU RAM after the node before it; for node 0 it is the model
    input uploaded to the same place (§11.2)."""
    program = _program(name)
    nodes = program.model.nodes
    inputs = _inputs(program)
    pending: dict[int, np.ndarray] = {}
    maps = []

    def shape(r: km.MemoryRange, body: km.KpuConv2D, which: str) -> tuple[int, int, int, int]:
        lay = body.layer
        if which == "in":
            return body.batches, lay.in_channels, lay.in_height, lay.in_width
        return body.batches, lay.out_channels, lay.out_height, lay.out_width

    def read_input(index: int) -> None:
        body = nodes[index].body
        pending[index] = program.memory.download(body.kpu_input(), shape(body.kpu_input(), body, "in"))

    def trace(index, opcode, body, _outputs) -> None:
        if opcode is km.Opcode.KPU_CONV2D:
            maps.append((index, body, pending.pop(index),
                         program.memory.download(body.kpu_output(), shape(body.kpu_output(), body, "out"))))
        if index + 1 < len(nodes) and nodes[index + 1].opcode is km.Opcode.KPU_CONV2D:
            read_input(index + 1)

    if nodes and nodes[0].opcode is km.Opcode.KPU_CONV2D:
        body = nodes[0].body
        (k,) = [i for i, info in enumerate(program.inputs) if info.memory.start == body.kpu_input().start
                and info.memory.memory_type is km.MemoryType.K210_KPU]  # fmt: skip
        pending[0] = inputs[k].reshape(shape(body.kpu_input(), body, "in"))
    program.run(inputs, trace=trace)
    return maps


def _check_crop(body: km.KpuConv2D, x: np.ndarray, y: np.ndarray, channels: list[int], rows: tuple[int, int],
                cols: tuple[int, int]) -> int:
    """kpu_sim's output map `y` against `reference_layer` run on input rows/cols [lo, hi) of `x`.

    The crop starts on a pool-stride boundary. Only outputs whose pool window and conv halo lie
    inside the crop (or reach the map's own edge, where the reference pads as the KPU does) are
    compared. Returns the number of values compared."""
    lay = body.layer
    k, pool = lay.filter_size, int(lay.pool_type)
    stride, window, halo = POOL_STRIDE[pool], POOL_WINDOW[pool], k // 2
    depthwise = bool(lay.depth_wise_layer)
    (r0, r1), (c0, c1) = rows, cols
    crop = x[:, :, r0:r1, c0:c1]
    weights = np.asarray(body.weights, np.uint8)
    per_channel = (k, k) if depthwise else (lay.in_channels, k, k)
    weights = weights.reshape(lay.out_channels, *per_channel)
    if depthwise:  # output channel o reads input channel o only
        crop = crop[:, channels]
    bn = body.batch_norm
    layer = Layer(crop.shape, len(channels), weights[channels], k=k, depthwise=depthwise, pool=pool,
                  pad_value=lay.pad_value, arg_x=lay.arg_x, shift_x=lay.shr_x, arg_w=lay.arg_w,
                  shift_w=lay.shr_w, arg_add=lay.arg_add,
                  bn=[(int(bn.norm_mul[o]), int(bn.norm_shift[o]), int(bn.norm_add[o])) for o in channels],
                  act=[(s.x_start, s.y_mul, s.shift_number, s.bias) for s in body.activation.segments])
    ref = reference_layer(layer, crop)

    def inside(count: int, lo: int, hi: int, edge: int) -> list[int]:
        """Crop-relative output indices whose pool window and conv halo need no pixel beyond the crop."""
        return [j for j in range(count) if (lo == 0 or stride * j - halo >= 0)
                and (hi == edge or stride * j + window - 1 + halo < hi - lo)]

    ok_rows = inside(ref.shape[2], r0, r1, x.shape[2])
    ok_cols = inside(ref.shape[3], c0, c1, x.shape[3])
    got = y[:, channels][:, :, [r0 // stride + j for j in ok_rows]]
    got = got[:, :, :, [c0 // stride + j for j in ok_cols]]
    want = ref[:, :, ok_rows][:, :, :, ok_cols]
    np.testing.assert_array_equal(got, want, err_msg=f"rows {rows} cols {cols} channels {channels}")
    return want.size


def check_kpu_layers(name: str, size: int = 8) -> tuple[int, int]:
    """Every kpu_conv2d of `name` in the golden run against the scalar reference (see the module
    docstring); returns (layers, output values compared)."""
    compared = 0
    maps = _kpu_layer_maps(name)
    for index, body, x, y in maps:
        oc = body.layer.out_channels
        channels = sorted({0, oc // 2, oc - 1})
        h, w = x.shape[2:]
        # crops start on a multiple of 4, a multiple of every pool stride (1, 2, 4)
        crops = {((0, min(h, size)), (0, min(w, size))),
                 ((max(0, h - size) // 4 * 4, h), (max(0, w - size) // 4 * 4, w))}
        for rows, cols in sorted(crops):
            try:
                compared += _check_crop(body, x, y, channels, rows, cols)
            except AssertionError as e:
                raise AssertionError(f"{name} node {index} (kpu_conv2d): {e}") from None
    return len(maps), compared


# -- tests ---------------------------------------------------------------------------------------------


def _golden_names() -> list[str]:
    return sorted(_golden()["kmodels"]) if GOLDEN.is_file() else []


@pytest.mark.parametrize("name", [_kit_param(n) for n in _golden_names()])
def test_kpu_sim_output_is_the_golden_output(name: str) -> None:
    entry = _golden()["kmodels"][name]
    data = _path(name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["kmodel_sha256"], f"{name}: not the file of the golden"
    assert _golden()["seed"] == SEED
    outputs = _run(name)
    assert [o.size for o in outputs] == [o.count for o in _program(name).outputs]
    assert all(np.isfinite(o).all() for o in outputs)
    now = _summary(outputs)
    assert now["sha256"] == entry["sha256"], f"{name}: outputs changed: {_what_moved(entry, now)}"


def test_every_shipped_v4_file_has_a_golden_or_an_ncc_output() -> None:
    assert SHIPPED_V4 and sorted(set(SHIPPED_V4) - NCC_INFER) == sorted(n for n in _golden_names()
                                                                      if (refkit.SHIPPED / n).is_file())


@pytest.mark.slow
@pytest.mark.kit
def test_every_kit_v4_file_has_a_golden_or_an_ncc_output() -> None:
    assert sorted(set(_kmodels(refkit.REFERENCE, V4_MAGIC)) - NCC_INFER) == _golden_names()


def test_the_history_file_with_several_row_blocks_is_covered() -> None:
    """69932ea/model4: kpu_conv.py computes some of its layers in several blocks of output rows."""
    assert "nncase-examples/history/69932ea/model4.kmodel" in _golden_names()


def test_kpu_layers_of_model4_match_the_scalar_reference() -> None:
    layers, compared = check_kpu_layers("nncase-examples/history/69932ea/model4.kmodel")
    assert layers == 6 and compared > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", [_kit_param(n) for n in _golden_names()
                                  if _golden()["kmodels"][n].get("kpu_layers")])
def test_kpu_layers_match_the_scalar_reference(name: str) -> None:
    layers, compared = check_kpu_layers(name)
    assert layers == _golden()["kmodels"][name]["kpu_layers"] and compared > 0


@pytest.mark.parametrize("pair", [pytest.param(p, marks=_kit_marks(*p), id=Path(p[0]).stem)
                                  for p in PLAN_PAIRS])
def test_both_memory_plans_of_one_compile_give_the_same_outputs(pair: tuple[str, str]) -> None:
    cpsat, first_fit = (_run(name) for name in pair)
    assert b"".join(o.tobytes() for o in cpsat) == b"".join(o.tobytes() for o in first_fit)


def test_float_iris_example_matches_tflite() -> None:
    """nncase-examples/iris.kmodel is ncc's float build of iris.tflite: same logits to float32 rounding."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(refkit.SHIPPED / "nncase-examples" / "iris.tflite"),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    (x,) = _inputs(_program("nncase-examples/iris.kmodel"))
    interp.set_tensor(interp.get_input_details()[0]["index"], x.reshape(1, 4))
    interp.invoke()
    want = interp.get_tensor(interp.get_output_details()[0]["index"]).reshape(-1)
    (got,) = _run("nncase-examples/iris.kmodel")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SHIPPED_V3)
def test_v3_files_are_rejected(name: str) -> None:
    message = r"kmodel v3 \(nncase v0.1\) is not supported; recompile with kcc or ncc"
    with pytest.raises(KmodelError, match=message):
        kpu_sim.load(refkit.SHIPPED / name)


@pytest.mark.slow
@pytest.mark.kit
def test_v3_files_of_the_kit_are_rejected() -> None:
    names = _kmodels(refkit.REFERENCE, V3_MAGIC)
    assert len(names) > len(SHIPPED_V3)
    for name in names:
        with pytest.raises(KmodelError, match=r"kmodel v3 \(nncase v0.1\) is not supported"):
            kpu_sim.load(refkit.REFERENCE / name)


def test_there_are_many_real_files() -> None:
    assert len(SHIPPED_V4) >= 20 and SHIPPED_V3


# -- recording ------------------------------------------------------------------------------------------


def record() -> None:
    """Check every available v4 file against the oracles above, then write GOLDEN."""
    names = set(SHIPPED_V4)
    if refkit.REFERENCE.is_dir():
        names |= set(_kmodels(refkit.REFERENCE, V4_MAGIC))
    names = sorted(names - NCC_INFER)
    for a, b in PLAN_PAIRS:
        if _path(a).is_file() and _path(b).is_file():
            assert _summary(_run(a)) == _summary(_run(b)), f"{a} and {b} disagree"
    entries = {}
    if not refkit.REFERENCE.is_dir() and GOLDEN.is_file():  # without the kit, keep its files' entries
        entries = {n: e for n, e in _golden()["kmodels"].items() if not (refkit.SHIPPED / n).is_file()}
    for name in names:
        layers, compared = check_kpu_layers(name)
        print(f"{name}: {compared} outputs of {layers} KPU layers match the scalar reference", flush=True)
        outputs = _run(name)
        assert all(np.isfinite(o).all() for o in outputs), name
        entries[name] = {"kmodel_sha256": hashlib.sha256(_path(name).read_bytes()).hexdigest(),
                         "kpu_layers": layers, **_summary(outputs)}
    test_float_iris_example_matches_tflite()
    GOLDEN.parent.mkdir(exist_ok=True)
    doc = {"about": "kpu_sim's outputs of the real kmodel v4 files on a seeded input; written by "
                    "tests/kpu_sim/test_sim_reference.py --record",
           "seed": SEED, "kmodels": dict(sorted(entries.items()))}  # fmt: skip
    GOLDEN.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(entries)} goldens to {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/kpu_sim/test_sim_reference.py --record")
    record()
