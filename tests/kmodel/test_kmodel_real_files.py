"""Byte-exact round trip of every real kmodel v4 file ncc produced (kmodel_v4.md §2, §4, §9.5).

`write(read(data))` must equal the file after normalising exactly the bytes ncc leaves
uninitialised, and nothing else:
  * header `reserved0` (bytes 36..39, §4),
  * the final body's missing padding (§2: appended as zeros),
  * bits 60..63 of the 16 `activate_para` words of every kpu_conv2d activation table
    (reserved; ncc-outputs/README.md "Runs are not byte-identical").
The normaliser decodes the file with plain `struct`, independently of `kcc.kmodel`. The default suite
reads the files that ship in tests/reference; the slow suite the rest of the full kit.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import pytest
import refkit

import kcc.kmodel as km
from kcc.errors import KmodelError

SHIPPED = refkit.SHIPPED
REFERENCE = refkit.REFERENCE


def _kmodels(root: Path) -> list[Path]:
    return sorted(root.rglob("*.kmodel")) if root.is_dir() else []


def _is_v4(path: Path) -> bool:
    return path.read_bytes()[:8] == b"LDMK\x04\x00\x00\x00"


def _is_v3(path: Path) -> bool:
    return path.read_bytes()[:4] == b"\x03\x00\x00\x00"


SHIPPED_V4 = [p for p in _kmodels(SHIPPED) if _is_v4(p)]
SHIPPED_V3 = [p for p in _kmodels(SHIPPED) if _is_v3(p)]
# the kit's files that do not ship (the same relative path in tests/reference is the same file)
KIT_V4 = refkit.kit_params([p for p in _kmodels(REFERENCE) if _is_v4(p)
                            and not (SHIPPED / p.relative_to(REFERENCE)).exists()])
KIT_V3 = refkit.kit_params([p for p in _kmodels(REFERENCE) if _is_v3(p)
                            and not (SHIPPED / p.relative_to(REFERENCE)).exists()])


def _id(path: Path | None) -> str:
    for root in (SHIPPED, REFERENCE):
        if path is not None and path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


@cache
def _read(path: Path) -> km.KModel:
    return km.read(path.read_bytes(), name=path.name)


def _normalise(data: bytes) -> bytes:
    """Zero the documented garbage of an ncc kmodel and append its missing final padding."""
    buf = bytearray(data)
    buf[36:40] = bytes(4)
    _, _, _, _, n_const, _, n_nodes, n_in, n_out, _ = struct.unpack_from("<10I", buf)
    headers_at = 40 + 32 * n_in + 16 * n_out + n_const
    pos = headers_at + 8 * n_nodes
    total = pos + sum(struct.unpack_from("<I", buf, headers_at + 8 * i + 4)[0] for i in range(n_nodes))
    assert 0 <= total - len(buf) < 8, "only the last body's padding may be missing"
    buf += bytes(total - len(buf))
    for i in range(n_nodes):
        opcode, body_size = struct.unpack_from("<2I", buf, headers_at + 8 * i)
        if opcode == 0x2002:
            regs = struct.unpack_from("<12Q", buf, pos + 24)
            out_channels = ((regs[2] >> 32) & 0x3FF) + 1
            p1, p2 = regs[4] >> 32, regs[7] >> 32
            act = pos + 120 + p1 + 8 * out_channels + p2
            for seg in range(16):
                buf[act + 8 * seg + 7] &= 0x0F
        pos += body_size
    return bytes(buf)


def test_shipped_corpus_is_present() -> None:
    assert len(SHIPPED_V4) >= 20, SHIPPED_V4
    v3 = [p.relative_to(SHIPPED).as_posix() for p in SHIPPED_V3]
    assert v3 == ["nncase-examples/history/v0.1.0-rc5/iris.kmodel"]


@pytest.mark.slow
@pytest.mark.kit
def test_kit_corpus_is_present() -> None:
    assert len([p for p in _kmodels(REFERENCE) if _is_v4(p)]) >= 30
    assert len([p for p in _kmodels(REFERENCE) if _is_v3(p)]) == 2


def _round_trip(path: Path) -> None:
    data = path.read_bytes()
    model = _read(path)
    written = km.write(model)
    assert written == _normalise(data)
    again = km.read(written)
    assert again.nodes == model.nodes
    assert (again.inputs, again.input_shapes, again.outputs) == (model.inputs, model.input_shapes, model.outputs)


@pytest.mark.parametrize("path", SHIPPED_V4, ids=_id)
def test_round_trip_is_byte_exact(path: Path) -> None:
    _round_trip(path)


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("path", KIT_V4, ids=_id)
def test_kit_round_trip_is_byte_exact(path: Path) -> None:
    _round_trip(path)


@pytest.mark.parametrize("path", SHIPPED_V3, ids=_id)
def test_kmodel_v3_is_rejected(path: Path) -> None:
    with pytest.raises(KmodelError, match=r"kmodel v3 \(nncase v0.1\) is not supported"):
        km.read_file(path)


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("path", KIT_V3, ids=_id)
def test_kit_kmodel_v3_is_rejected(path: Path) -> None:
    with pytest.raises(KmodelError, match=r"kmodel v3 \(nncase v0.1\) is not supported"):
        km.read_file(path)


@pytest.mark.slow
@pytest.mark.kit
def test_known_facts_of_yolo() -> None:
    """§4 example and §9.3 worked example (yolo.kmodel node 0)."""
    model = km.read_file(REFERENCE / "nncase-examples" / "yolo.kmodel")
    assert (model.main_mem, len(model.constants), len(model.nodes)) == (43752, 0, 17)
    assert model.inputs[0] == km.MemoryRange(km.MemoryType.K210_KPU, km.DataType.UINT8, 0, 230400)
    assert model.input_shapes[0] == (1, 3, 240, 320)
    node0 = model.nodes[0].body
    assert isinstance(node0, km.KpuConv2D) and node0.table_padding == (168, 128, 112)  # beta: all on 256
    layer = node0.layer
    assert (layer.image_dst_addr, layer.i_ch_num, layer.o_ch_num) == (3600, 2, 15)
    assert (layer.para_size, layer.channel_switch_addr, layer.arg_x, layer.dma_total_byte) == (432, 1200, -134, 307199)
    assert layer.pool_type is km.KpuPoolType.MAX_2_S2


def test_alpha_alignment_is_kept_explicitly() -> None:
    """§9.2: alpha builds aligned batch-norm tables to 8 only; the reader keeps their skip counts."""
    model = km.read_file(SHIPPED / "nncase-examples" / "kfpkg" / "yolo.kmodel")
    kpu = [n.body for n in model.nodes if isinstance(n.body, km.KpuConv2D)]
    assert any(b.table_padding is not None for b in kpu)


def _layer_problems(paths: list[Path], root: Path) -> dict:
    problems = {}
    for path in paths:
        for i, node in enumerate(_read(path).nodes):
            if isinstance(node.body, km.KpuConv2D) and km.layer_problems(node.body):
                problems[(path.relative_to(root).as_posix(), i)] = km.layer_problems(node.body)
    return problems


# §9.3 derived fields hold in every ncc layer but one (a dev build that overflowed a field)
OVERFLOWED = {("nncase-examples/history/8678f7f/yolo.kmodel", 0): [
    "channel_byte_num is 11263, expected 76799 (does not fit in 16 bits)"]}


def test_real_kpu_layers_are_consistent() -> None:
    assert _layer_problems(SHIPPED_V4, SHIPPED) == OVERFLOWED


@pytest.mark.slow
@pytest.mark.kit
def test_kit_kpu_layers_are_consistent() -> None:
    assert _layer_problems([p for p in _kmodels(REFERENCE) if _is_v4(p)], REFERENCE) == OVERFLOWED
