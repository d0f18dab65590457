"""The output-shape record: the NCHW shape of each kmodel output, which the format does not store.

A kmodel stores shapes only for inputs and inside node bodies; an output is a memory range, datatype
and byte size, nothing more (kmodel_v4.md §5). Writer and reader share one rule, so that the writer
(kcc.emit, `with_output_shapes`) appends a record exactly when the reader (`kcc info`,
kcc/report/info.py, `output_shapes`) could not recover the compiled model's shapes from the nodes.
An output's NCHW shape comes from, in this order:

1. the output-shape record kcc appends to the constants blob when (2) would not give the compiled
   model's shapes (below, `with_output_shapes`);
2. the node that last wrote the output range before it is used (`output_shape`):
   * bodies that state their output shape: kpu_conv2d (N, C_out, H', W'), transpose (permuted
     in_shape), (quantized_)binary and reduce (out_shape), pad, strided_slice, resize_image,
     windowed ops, (quantized_)matmul (rows, cols), softmax, concat (outer, sum(dims), inner);
   * element-wise ops (dequantize, quantize, memory_copy, table_lookup1d, unary, nnil): the shape of
     their input, found the same way, one step further back;
   * a model input: its declared shape;
   * several nodes that each write a slice of the range (a concatenation kcc's allocator placed in
     place, so no concat node exists): their shapes joined along the one axis in which they differ.
     A reshape costs no node, so the shape a model gives such an output after its reshape is not in
     the file: when the pieces do not join along exactly one axis the shape is reported unknown.

A shape is only reported if its element count matches the range's byte size.

The record (kcc only; the runtime never reads it). Every constant a node uses is a range inside
the constants blob (§5); the nncase v0 runtime reaches the blob only through such ranges (§11.1),
so bytes no range points at are never read. `with_output_shapes` appends, after the blob padded to
8 bytes, and only if the file alone does not determine the shapes the compiler knows:

    shape4[outputs] (16 B each, NCHW front-padded, §3.3) | u32 outputs | u32 record bytes | "kccoshp4"

Files whose outputs the nodes already determine (most models) keep their bytes. The blob stays a
multiple of 8 (§5), nothing follows the last body (§2), and reserved fields keep no meaning (§13).
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Any

from kcc import kmodel as km

Shape = tuple[int, int, int, int]
_PASS_THROUGH = (km.Dequantize, km.Quantize, km.MemoryCopy, km.TableLookup1D, km.Unary, km.NnilUnaryMethod)


def _window(size: int, f: int, stride: int, dilation: int, pad: km.Padding) -> int:
    if stride <= 0:
        return 0
    return (size + pad.before + pad.after - ((f - 1) * dilation + 1) + stride) // stride


def _conv_out(body: Any, channels: int) -> Shape:
    n, _, h, w = body.in_shape
    return (n, channels, _window(h, body.filter_h, body.stride_h, body.dilation_h, body.padding_h),
            _window(w, body.filter_w, body.stride_w, body.dilation_w, body.padding_w))


def stated_shape(body: km.Body) -> Shape | None:
    """The NCHW shape of the node's (main) output as its body states it, or None."""
    if isinstance(body, km.KpuConv2D):
        lay = body.layer
        return (body.batches, lay.out_channels, lay.out_height, lay.out_width)
    if isinstance(body, km.Transpose):
        return tuple(body.in_shape[p] for p in body.perm) if sorted(body.perm) == [0, 1, 2, 3] else None
    if isinstance(body, (km.Binary, km.QuantizedBinary)):
        return tuple(body.out_shape if body.in_a_shape != body.in_b_shape else body.in_a_shape)
    if isinstance(body, km.Reduce):
        return tuple(body.out_shape)
    if isinstance(body, km.Pad):
        return tuple(d + p.before + p.after for d, p in zip(body.in_shape, body.paddings))
    if isinstance(body, km.StridedSlice):
        return tuple(len(range(b, e, s)) if s else 0 for b, e, s in zip(body.begin, body.end, body.strides))
    if isinstance(body, km.ResizeImage):
        return (body.in_shape[0], body.in_shape[1], body.out_h, body.out_w)
    if isinstance(body, (km.Conv2D, km.QuantizedConv2D)):
        return _conv_out(body, body.out_channels)
    if isinstance(body, km.ReduceWindow2D) and not isinstance(body, km.CpuReduceWindow2D):
        return _conv_out(body, body.in_shape[1])
    if isinstance(body, km.Conv2DTranspose):
        return tuple(body.out_shape)
    if isinstance(body, (km.MatMul, km.QuantizedMatMul)):
        return (1, 1, body.a_rows, body.b_cols)
    if isinstance(body, km.Softmax):
        return (1, 1, body.outer_size, body.inner_size)
    if isinstance(body, km.Concat):
        itemsize = body.output.datatype.itemsize
        return km.Shape4.of([body.outer_size, sum(body.dims), body.inner_size // itemsize])
    return None


def _overlaps(a: km.MemoryRange, b: km.MemoryRange) -> bool:
    return a.memory_type is b.memory_type and a.size > 0 and b.size > 0 and a.start < b.end and b.start < a.end


def _same(a: km.MemoryRange, b: km.MemoryRange) -> bool:
    return a.memory_type is b.memory_type and a.start == b.start and a.size == b.size


def _writer(model: km.KModel, r: km.MemoryRange, before: int) -> int | None:
    """Index of the last node before `before` that writes into `r`."""
    for i in range(before - 1, -1, -1):
        if any(_overlaps(out, r) for out in model.nodes[i].body.output_ranges().values()):
            return i
    return None


def _count(shape: Any) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


def _checked(shape: Shape | None, r: km.MemoryRange) -> Shape | None:
    if shape is None or len(shape) != 4:
        return None
    count = _count(shape)
    if count <= 0 or min(int(d) for d in shape) <= 0 or count * r.datatype.itemsize != r.size:
        return None
    return tuple(int(d) for d in shape)


def _pieces(model: km.KModel, r: km.MemoryRange, before: int) -> list[tuple[int, km.MemoryRange]] | None:
    """The nodes before `before` whose writes tile `r` (latest write of each byte), in address order;
    None unless every byte of `r` is written and each write lies inside `r`."""
    pieces: list[tuple[int, km.MemoryRange]] = []
    covered = 0
    for i in range(before - 1, -1, -1):
        for out in model.nodes[i].body.output_ranges().values():
            if not _overlaps(out, r):
                continue
            if out.start < r.start or out.end > r.end:
                return None
            clash = [p for _, p in pieces if _overlaps(p, out)]
            if not clash:
                pieces.append((i, out))
                covered += out.size
            elif any(out.start < p.start or out.end > p.end for p in clash):
                return None  # partly overwritten later: no clean tiling
        if covered == r.size:
            return sorted(pieces, key=lambda item: item[1].start)
    return None


def _joined(shapes: list[Shape]) -> Shape | None:
    """The shape of pieces laid one after another in memory: they must differ in exactly one axis,
    and every axis before it must be 1 (a concat with outer size 1, §8.2); None if that axis is not
    unique (equal pieces, or pieces that only a reshape could join)."""
    axes = {k for k in range(4) if len({s[k] for s in shapes}) > 1}
    if len(axes) != 1:
        return None
    (k,) = axes
    if any(d != 1 for d in shapes[0][:k]):
        return None
    first = shapes[0]
    return (*first[:k], sum(s[k] for s in shapes), *first[k + 1:])


def _derive(model: km.KModel, r: km.MemoryRange, before: int, depth: int = 0) -> tuple[Shape | None, str]:
    """(NCHW shape of range `r` as of node `before`, where it came from)."""
    if depth > len(model.nodes) + 1:
        return None, ""
    index = _writer(model, r, before)
    if index is None:
        for i, (inp, shape) in enumerate(zip(model.inputs, model.input_shapes)):
            if _overlaps(inp, r):
                return _checked(tuple(shape), r), f"input {i}"
        return None, ""
    node = model.nodes[index]
    label = f"node {index} ({node.name})"
    if any(_same(out, r) for out in node.body.output_ranges().values()):
        if isinstance(node.body, _PASS_THROUGH):  # same element count: the input's shape
            shape, source = _derive(model, node.body.input, index, depth + 1)
            return _checked(shape, r), source
        return _checked(stated_shape(node.body), r), label
    pieces = _pieces(model, r, before)
    if pieces is None or len(pieces) < 2:
        return None, label
    label = "concatenation of nodes " + ", ".join(str(i) for i, _ in pieces)
    shapes = [_derive(model, piece, i + 1, depth + 1)[0] for i, piece in pieces]
    if any(s is None for s in shapes):
        return None, label
    return _checked(_joined(shapes), r), label


def output_shape(model: km.KModel, r: km.MemoryRange) -> tuple[Shape | None, str]:
    """(NCHW shape of range `r` at the end of the model or None, where it came from:
    'node 12 (concat)', 'input 0', 'concatenation of nodes 70, 72, 74' or '')."""
    return _derive(model, r, len(model.nodes))


# -- the output-shape record (module docstring) ------------------------------------------------

RECORD_MAGIC = b"kccoshp4"
RECORD_SOURCE = "kcc output-shape record"
_CONST_ALIGN = 8  # §5: ncc (and kcc) keep the constants blob a multiple of 8


def _record_bytes(shapes: list[Shape]) -> bytes:
    body = b"".join(km.Shape4(*s).pack() for s in shapes)
    return body + struct.pack("<2I", len(shapes), len(body) + 16) + RECORD_MAGIC


def recorded_shapes(model: km.KModel) -> list[Shape] | None:
    """The output shapes kcc recorded at the end of the constants blob, or None if there is no valid
    record: wrong count, a node range reaching into it, or a shape whose size disagrees with its range."""
    blob = model.constants
    if len(blob) < 16 or blob[-8:] != RECORD_MAGIC:
        return None
    count, size = struct.unpack_from("<2I", blob, len(blob) - 16)
    start = len(blob) - size
    if count != len(model.outputs) or size != 16 * count + 16 or start < 0 or start % _CONST_ALIGN:
        return None
    record = km.MemoryRange(km.MemoryType.CONST, km.DataType.UINT8, start, size)
    if any(_overlaps(record, used) for node in model.nodes for used in node.body.ranges().values()):
        return None  # the bytes are some node's constant, not a record
    shapes = [struct.unpack_from("<4i", blob, start + 16 * i) for i in range(count)]
    checked = [_checked(s, r) for s, r in zip(shapes, model.outputs)]
    return None if any(s is None for s in checked) else checked


def output_shapes(model: km.KModel) -> list[tuple[Shape | None, str]]:
    """(shape, source) of every output: the record if there is one, else derived from the nodes."""
    recorded = recorded_shapes(model)
    if recorded is not None:
        return [(s, RECORD_SOURCE) for s in recorded]
    return [output_shape(model, r) for r in model.outputs]


def with_output_shapes(model: km.KModel, shapes: list[tuple[int, ...]]) -> km.KModel:
    """`model` with the output-shape record appended to its constants, if the nodes alone do not give
    `shapes` (the compiled graph's output shapes, front-padded to NCHW, §3.3); else `model` itself.
    Outputs of rank > 4 have no shape4 and get no record."""
    if any(len(s) > 4 for s in shapes) or len(shapes) != len(model.outputs):
        return model
    want = [tuple(km.Shape4.of(s)) for s in shapes]
    if [output_shape(model, r)[0] for r in model.outputs] == want:
        return model
    if any(_checked(s, r) is None for s, r in zip(want, model.outputs)):
        return model  # cannot happen for an emitted model; a record must never disagree with a range
    blob = model.constants + bytes(-len(model.constants) % _CONST_ALIGN)
    return dataclasses.replace(model, constants=blob + _record_bytes(want))
