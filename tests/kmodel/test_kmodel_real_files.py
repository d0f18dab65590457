"""Byte-exact round trip of every real kmodel v4 file ncc produced (kmodel_v4.md §2, §4, §9.5).

`write(read(data))` must equal the file after normalising exactly the bytes ncc leaves
uninitialised, and nothing else:
  * header `reserved0` (bytes 36..39, §4),
  * the final body's missing padding (§2: appended as zeros),
  * bits 60..63 of the 16 `activate_para` words of every kpu_conv2d activation table
    (reserved; ncc-outputs/README.md "Runs are not byte-identical").
The normaliser decodes the file with plain `struct`, independently of `kcc.kmodel`.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import pytest

import kcc.kmodel as km
from kcc.errors import KmodelError

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"


def _all_kmodels() -> list[Path]:
    if not REFERENCE.is_dir():
        return []
    return sorted(REFERENCE.rglob("*.kmodel"))


def _is_v4(path: Path) -> bool:
    return path.read_bytes()[:8] == b"LDMK\x04\x00\x00\x00"


V4_FILES = [p for p in _all_kmodels() if _is_v4(p)]
V3_FILES = [p for p in _all_kmodels() if p.read_bytes()[:4] == b"\x03\x00\x00\x00"]
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference kit not found at {REFERENCE}")


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


@needs_reference
def test_corpus_is_present() -> None:
    assert len(V4_FILES) >= 30, V4_FILES
    assert len(V3_FILES) == 2, V3_FILES


@needs_reference
@pytest.mark.parametrize("path", V4_FILES, ids=lambda p: str(p.relative_to(REFERENCE)))
def test_round_trip_is_byte_exact(path: Path) -> None:
    data = path.read_bytes()
    model = _read(path)
    written = km.write(model)
    assert written == _normalise(data)
    again = km.read(written)
    assert again.nodes == model.nodes
    assert (again.inputs, again.input_shapes, again.outputs) == (model.inputs, model.input_shapes, model.outputs)


@needs_reference
@pytest.mark.parametrize("path", V3_FILES, ids=lambda p: str(p.relative_to(REFERENCE)))
def test_kmodel_v3_is_rejected(path: Path) -> None:
    with pytest.raises(KmodelError, match=r"kmodel v3 \(nncase v0.1\) is not supported"):
        km.read_file(path)


@needs_reference
def test_known_facts_of_yolo() -> None:
    """§4 example and §9.3 worked example (yolo.kmodel node 0)."""
    model = km.read_file(REFERENCE / "nncase-examples" / "yolo.kmodel")
    assert (model.main_mem, len(model.constants), len(model.nodes)) == (43752, 0, 17)
    assert model.inputs[0] == km.MemoryRange(km.MemoryType.K210_KPU, km.DataType.UINT8, 0, 230400)
    assert model.input_shapes[0] == (1, 3, 240, 320)
    node0 = model.nodes[0].body
    assert isinstance(node0, km.KpuConv2D) and node0.table_padding is None
    layer = node0.layer
    assert (layer.image_dst_addr, layer.i_ch_num, layer.o_ch_num) == (3600, 2, 15)
    assert (layer.para_size, layer.channel_switch_addr, layer.arg_x, layer.dma_total_byte) == (432, 1200, -134, 307199)
    assert layer.pool_type is km.KpuPoolType.MAX_2_S2


@needs_reference
def test_alpha_alignment_is_kept_explicitly() -> None:
    """§9.2: alpha builds aligned batch-norm tables to 8 only; the reader keeps their skip counts."""
    model = km.read_file(REFERENCE / "nncase-examples" / "kfpkg" / "yolo.kmodel")
    kpu = [n.body for n in model.nodes if isinstance(n.body, km.KpuConv2D)]
    assert any(b.table_padding is not None for b in kpu)


@needs_reference
def test_real_kpu_layers_are_consistent() -> None:
    """§9.3 derived fields hold in every ncc layer but one (a dev build that overflowed a field)."""
    problems = {}
    for path in V4_FILES:
        for i, node in enumerate(_read(path).nodes):
            if isinstance(node.body, km.KpuConv2D) and km.layer_problems(node.body):
                problems[(path.relative_to(REFERENCE).as_posix(), i)] = km.layer_problems(node.body)
    assert problems == {
        ("nncase-examples/history/8678f7f/yolo.kmodel", 0): [
            "channel_byte_num is 11263, expected 76799 (does not fit in 16 bits)"
        ]
    }
