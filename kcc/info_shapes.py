"""Per-node summaries and output-shape recovery for `kcc info` (kcc/info.py).

A kmodel stores shapes only for inputs and inside node bodies (kmodel_v4.md §5, §8, §9), so the
NCHW shape of a range is read off the node that last wrote it before it is used:

* bodies that state their output shape: kpu_conv2d (N, C_out, H', W'), transpose (permuted
  in_shape), (quantized_)binary and reduce (out_shape), pad, strided_slice, resize_image,
  windowed ops, (quantized_)matmul (rows, cols), softmax, concat (outer, sum(dims), inner);
* element-wise ops (dequantize, quantize, memory_copy, table_lookup1d, unary, nnil): the shape of
  their input, found the same way, one step further back;
* a model input: its declared shape.

A shape is only reported if its element count matches the range's byte size.
"""

from __future__ import annotations

from typing import Any

from kcc import kmodel as km

Shape = tuple[int, int, int, int]
_PASS_THROUGH = (km.Dequantize, km.Quantize, km.MemoryCopy, km.TableLookup1D, km.Unary, km.NnilUnaryMethod)


def _dims(shape: Any) -> str:
    return "x".join(str(int(d)) for d in shape)


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


def _writer(model: km.KModel, r: km.MemoryRange, before: int) -> int | None:
    """Index of the last node before `before` that writes into `r`."""
    for i in range(before - 1, -1, -1):
        if any(_overlaps(out, r) for out in model.nodes[i].body.output_ranges().values()):
            return i
    return None


def output_shape(model: km.KModel, r: km.MemoryRange) -> tuple[Shape | None, str]:
    """(NCHW shape of output range `r` or None, where it came from: 'node 12 (concat)' etc.)."""
    before = len(model.nodes)
    for _ in range(len(model.nodes) + 1):
        index = _writer(model, r, before)
        if index is None:
            for i, (inp, shape) in enumerate(zip(model.inputs, model.input_shapes)):
                if _overlaps(inp, r):
                    return _checked(tuple(shape), r, f"input {i}")
            return None, ""
        node = model.nodes[index]
        label = f"node {index} ({node.name})"
        if isinstance(node.body, _PASS_THROUGH):
            before, r = index, node.body.input  # same element count: take the input's shape
            continue
        return _checked(stated_shape(node.body), r, label)
    return None, ""


def _checked(shape: Shape | None, r: km.MemoryRange, label: str) -> tuple[Shape | None, str]:
    if shape is None:
        return None, label
    count = 1
    for d in shape:
        count *= int(d)
    if count <= 0 or count * r.datatype.itemsize != r.size:
        return None, label
    return tuple(int(d) for d in shape), label


def node_summary(body: km.Body) -> str:
    """One line of the key parameters of a node."""
    if isinstance(body, km.KpuConv2D):
        lay = body.layer
        parts = [(f"{lay.in_channels}x{lay.in_height}x{lay.in_width} -> "
                 f"{lay.out_channels}x{lay.out_height}x{lay.out_width}"),
                 f"{lay.filter_size}x{lay.filter_size}"]
        if lay.depth_wise_layer:
            parts.append("depthwise")
        parts.append(f"pool {lay.pool_type.name.lower()}")
        if body.batches != 1:
            parts.append(f"batches {body.batches}")
        parts.append(f"KPU @{lay.image_src_addr * 64} -> @{lay.image_dst_addr * 64}")
        if body.main_mem_output.size:
            parts.append(f"+ main @{body.main_mem_output.start}")
        return ", ".join(parts)
    if isinstance(body, km.KpuUpload):
        return f"{_dims(body.in_shape)} main @{body.input.start} -> KPU @{body.output.start}"
    if isinstance(body, (km.Quantize, km.Dequantize)):
        q = body.quant_param
        return f"{body.input.count} elements, zero point {q.zero_point}, scale {q.scale:.6g}"
    if isinstance(body, km.Transpose):
        return f"{_dims(body.in_shape)} perm {_dims(body.perm)}"
    if isinstance(body, (km.Binary, km.QuantizedBinary)):
        return f"{body.binary_op.name.lower()} {_dims(body.in_a_shape)}, {_dims(body.in_b_shape)} -> {_dims(body.out_shape)}"
    if isinstance(body, km.Concat):
        return f"{len(body.inputs)} inputs, dims {list(body.dims)}, outer {body.outer_size}, inner {body.inner_size} B"
    if isinstance(body, (km.Conv2D, km.QuantizedConv2D)):
        return (f"{_dims(body.in_shape)} -> {body.out_channels} ch, {body.filter_h}x{body.filter_w}, "
                f"stride {body.stride_h}x{body.stride_w}, groups {body.groups}")
    if isinstance(body, (km.CpuConv2D, km.CpuQuantizedConv2D)):
        return f"NHWC {_dims(body.in_shape)} -> {body.out_channels} ch, {body.filter_h}x{body.filter_w}"
    if isinstance(body, (km.CpuDepthwiseConv2D, km.CpuQuantizedDepthwiseConv2D)):
        return f"NHWC {_dims(body.in_shape)} depthwise {body.filter_h}x{body.filter_w}"
    if isinstance(body, (km.MatMul, km.QuantizedMatMul)):
        return f"{body.a_rows}x{body.a_cols} @ {body.a_cols}x{body.b_cols}"
    if isinstance(body, (km.Reduce, km.ReduceWindow2D)):
        return f"{body.reduce_op.name.lower()} {_dims(body.in_shape)}"
    if isinstance(body, km.Pad):
        pads = ",".join(f"{p.before}/{p.after}" for p in body.paddings)
        return f"{_dims(body.in_shape)} pad {pads}"
    if isinstance(body, km.Unary):
        return f"{body.unary_op.name.lower()}, {body.input.count} elements"
    if isinstance(body, km.TableLookup1D):
        return f"{body.input.size} bytes through a {body.table.size}-byte table"
    if isinstance(body, km.MemoryCopy):
        return f"{body.input.size} bytes"
    if isinstance(body, km.ResizeImage):
        return f"{body.mode.name.lower()} {_dims(body.in_shape)} -> {body.out_h}x{body.out_w}"
    if isinstance(body, km.StridedSlice):
        return f"{_dims(body.in_shape)} begin {_dims(body.begin)} end {_dims(body.end)} strides {_dims(body.strides)}"
    if isinstance(body, km.Softmax):
        return f"{body.outer_size} rows of {body.inner_size}"
    shape = stated_shape(body)
    return f"-> {_dims(shape)}" if shape else ""
