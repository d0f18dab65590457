"""Windows and resampling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Resize, Upsample.

Pools: the IR's Pool2D pads max pools with -inf and averages the in-bounds taps only, which is ONNX's
`count_include_pad = 0`; with `count_include_pad = 1` the pads become an explicit zero Pad before the
pool. `ceil_mode` adds the rows / columns the rounded-up output needs as extra padding after, and
(like onnxruntime and PyTorch) drops a last window that would start in the end padding.

Resize / Upsample: the IR's Resize (kcc.ir.ops) has TFLite's three coordinate rules (asymmetric,
align_corners, half_pixel_centers) with TFLite's rounding for nearest. The importer computes, per
spatial axis, the source position (linear) or source index (nearest) ONNX defines for every output
pixel (onnx/defs/tensor/defs.cc, Resize's coordinate_transformation_mode and nearest_mode) and picks
the IR rule that yields the same ones; a mode or scale no IR rule reproduces is refused, saying which.
"""

from __future__ import annotations

import math

import numpy as np

from kcc.frontend.onnx.context import ImportContext, ImportResult, conv_pads
from kcc.frontend.onnx.reader import OnnxNode
from kcc.ir import ops as O
from kcc.ir.graph import Node


def _pool_params(ctx: ImportContext, node: OnnxNode, x: Node):
    if len(x.shape) != 4:
        raise ctx.unsupported(node, f"only 2-D pools are supported, input has shape {list(x.shape)}")
    k = list(node.attr("kernel_shape", []))
    if len(k) != 2 or min(k) < 1:
        raise ctx.unsupported(node, f"kernel_shape {k}")
    s = list(node.attr("strides", [1, 1]))
    if len(s) != 2 or min(s) < 1:
        raise ctx.unsupported(node, f"strides {s}")
    if list(node.attr("dilations", [1, 1])) != [1, 1]:
        raise ctx.unsupported(node, f"dilations {list(node.attr('dilations'))} (the IR's pools have none)")
    pads = conv_pads(ctx, node, x.shape[2:], k, s, [1, 1])
    if node.attr("ceil_mode", 0):
        extra = []
        for size, (b, a), kk, ss in zip(x.shape[2:], pads, k, s):
            out = -(-(size + b + a - kk) // ss) + 1
            if (out - 1) * ss >= size + b:  # the last window would start in the end padding
                out -= 1
            extra.append(max(0, (out - 1) * ss + kk - (size + b + a)))
    else:
        extra = [0, 0]
    return k, s, pads, extra


def max_pool(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """MaxPool (kernel_shape, strides, pads / auto_pad, ceil_mode); the Indices output must be unread."""
    if any(ctx.readers.get(t, 0) for t in node.outputs[1:] if t):
        raise ctx.unsupported(node, "the Indices output is read")
    x = ctx.input(node, 0)
    k, s, pads, extra = _pool_params(ctx, node, x)
    padding = tuple((b, a + e) for (b, a), e in zip(pads, extra))
    return ctx.add(node, O.Pool2D("max", tuple(k), tuple(s), padding), [x])


def average_pool(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """AveragePool: count_include_pad = 0 averages the in-bounds taps (the IR's mean pool); = 1 pads
    with explicit zeros first, so they count."""
    x = ctx.input(node, 0)
    k, s, pads, extra = _pool_params(ctx, node, x)
    if node.attr("count_include_pad", 0) and any(b or a for b, a in pads):
        x = ctx.add(node, O.Pad(((0, 0), (0, 0), *pads)), [x], f"{ctx.out_name(node)}/pad")
        pads = [(0, 0), (0, 0)]
    padding = tuple((b, a + e) for (b, a), e in zip(pads, extra))
    return ctx.add(node, O.Pool2D("mean", tuple(k), tuple(s), padding), [x])


def _global(kind: str, title: str):
    def importer(ctx: ImportContext, node: OnnxNode) -> ImportResult:
        x = ctx.input(node, 0)
        if len(x.shape) < 3:
            raise ctx.unsupported(node, f"input of shape {list(x.shape)} has no spatial axes")
        return ctx.add(node, O.Reduce(kind, tuple(range(2, len(x.shape))), True), [x])

    importer.__name__ = title
    importer.__doc__ = f"Reduce {kind} over every spatial axis, keeping them as size 1."
    return importer


global_average_pool = _global("mean", "global_average_pool")
global_max_pool = _global("max", "global_max_pool")


# ------------------------------------------------------------------------------------- resize
def _onnx_positions(mode: str, size_in: int, size_out: int, scale: float) -> np.ndarray:
    """Source coordinate of every output pixel (onnx Resize coordinate_transformation_mode), float64."""
    o = np.arange(size_out, dtype=np.float64)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if size_out > 1 else np.zeros(size_out)
    if mode == "align_corners":
        return o * (size_in - 1) / (size_out - 1) if size_out > 1 else np.zeros(size_out)
    if mode == "asymmetric":
        return o / scale
    if mode == "tf_half_pixel_for_nn":
        return (o + 0.5) / scale
    raise ValueError(mode)


def _round(pos: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        return np.ceil(pos - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(pos + 0.5)
    if nearest_mode == "floor":
        return np.floor(pos)
    if nearest_mode == "ceil":
        return np.ceil(pos)
    raise ValueError(nearest_mode)


def _ir_positions(size_in: int, size_out: int, align: bool, half: bool, nearest: bool) -> np.ndarray:
    """The IR Resize's source positions (linear) or indices (nearest): TFLite's formulas, in float32, as
    kcc.eval.kernels' _resize_bilinear_axis / _resize_nearest_axis compute them."""
    f32 = np.float32
    scale = f32((size_in - 1) / (size_out - 1)) if align and size_out > 1 else f32(size_in / size_out)
    o = np.arange(size_out, dtype=f32)
    if nearest:
        pos = (o + f32(0.5 if half else 0.0)) * scale
        idx = np.floor(pos + f32(0.5)) if align else np.floor(pos)
        return np.clip(idx, 0, size_in - 1).astype(np.float64)
    pos = (o + f32(0.5)) * scale - f32(0.5) if half else o * scale
    return np.clip(pos.astype(np.float64), 0, size_in - 1)


_IR_RULES = ((False, False), (True, False), (False, True))  # (align_corners, half_pixel_centers)


def _resize(ctx: ImportContext, node: OnnxNode, x: Node, out_hw: tuple[int, int], scales: tuple[float, float],
            mode: str, coord: str, nearest_mode: str) -> Node:
    """IR Resize of the two spatial axes to `out_hw`, if an IR rule matches ONNX's sampling exactly."""
    nearest = mode == "nearest"
    want = []
    for size_in, size_out, scale in zip(x.shape[2:], out_hw, scales):
        pos = _onnx_positions(coord, size_in, size_out, scale)
        if nearest:
            if nearest_mode == "simple":  # Upsample / Resize-10 in onnxruntime: truncate up, ceil down
                pos = np.floor(pos) if scale >= 1 else np.ceil(pos)
            else:
                pos = _round(pos, nearest_mode)
        want.append(np.clip(pos, 0, size_in - 1))
    for align, half in _IR_RULES:
        got = [_ir_positions(i, o, align, half, nearest) for i, o in zip(x.shape[2:], out_hw)]
        same = all((np.array_equal(g, w) if nearest else np.allclose(g, w, rtol=0, atol=1e-5 * max(1, len(w))))
                   for g, w in zip(got, want))
        if same:
            if tuple(x.shape[2:]) == tuple(out_hw) and all(np.allclose(g, np.arange(len(g))) for g in got):
                return x  # every output pixel reads its own input pixel: the identity
            return ctx.add(node, O.Resize("nearest" if nearest else "bilinear", tuple(out_hw), align, half), [x])
    what = f"{mode} with coordinate_transformation_mode {coord!r}"
    if nearest:
        what += f" and nearest_mode {nearest_mode!r}"
    raise ctx.unsupported(node, f"{what} from {list(x.shape[2:])} to {list(out_hw)} (scales {list(scales)}) samples "
                                f"pixels no IR Resize rule (asymmetric, align_corners, half_pixel) reproduces")


def _mode(ctx: ImportContext, node: OnnxNode) -> str:
    mode = node.attr("mode", "nearest")
    mode = {"bilinear": "linear"}.get(mode, mode)
    if mode not in ("nearest", "linear"):
        raise ctx.unsupported(node, f"mode {mode!r} (kcc resizes with nearest and linear only)")
    return mode


def _sizes_from_scales(ctx: ImportContext, node: OnnxNode, x: Node, scales: list[float]) -> tuple[int, int]:
    if len(scales) != len(x.shape) or len(x.shape) != 4:
        raise ctx.unsupported(node, f"scales {scales} for input of shape {list(x.shape)} (4-D NCHW only)")
    if scales[0] != 1 or scales[1] != 1:
        raise ctx.unsupported(node, f"scales {scales} resize the batch or channel axis")
    return tuple(int(math.floor(d * s + 1e-9)) for d, s in zip(x.shape[2:], scales[2:]))


def resize(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Resize: opset 10 (X, scales), asymmetric; 11+ (X, roi, scales, sizes) with
    coordinate_transformation_mode and nearest_mode; 18+ axes, antialias and keep_aspect_ratio_policy."""
    x = ctx.input(node, 0)
    if len(x.shape) != 4:
        raise ctx.unsupported(node, f"only 4-D NCHW inputs are resized, got shape {list(x.shape)}")
    mode = _mode(ctx, node)
    if ctx.model.opset < 11:
        coord, nearest_mode = "asymmetric", "simple"
        scales_i, sizes_i = 1, None
    else:
        coord = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
        scales_i, sizes_i = 2, 3
    if coord in ("tf_crop_and_resize", "half_pixel_symmetric"):
        raise ctx.unsupported(node, f"coordinate_transformation_mode {coord!r}")
    if coord not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"):
        raise ctx.unsupported(node, f"unknown coordinate_transformation_mode {coord!r}")
    if nearest_mode not in ("simple", "round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        raise ctx.unsupported(node, f"unknown nearest_mode {nearest_mode!r}")
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ctx.unsupported(node, f"keep_aspect_ratio_policy {node.attr('keep_aspect_ratio_policy')!r}")
    rank = len(x.shape)
    axes = [a + rank if a < 0 else a for a in node.attr("axes", list(range(rank)))]

    def full(values: list, fill) -> list:
        if len(values) != len(axes):
            raise ctx.unsupported(node, f"{len(values)} values for axes {axes}")
        out = [fill] * rank
        for a, v in zip(axes, values):
            out[a] = v
        return out

    sizes = ctx.const_ints(node, sizes_i, "sizes") if sizes_i is not None and ctx.has_input(node, sizes_i) else []
    scales_in = (ctx.float_const(node, scales_i, "scales").ravel().tolist()
                 if ctx.has_input(node, scales_i) else [])
    if sizes:
        sizes = full(sizes, None)
        sizes = [d if s is None else s for d, s in zip(x.shape, sizes)]
        if sizes[:2] != list(x.shape[:2]):
            raise ctx.unsupported(node, f"sizes {sizes} resize the batch or channel axis")
        out_hw = (sizes[2], sizes[3])
        scales = tuple(o / i for o, i in zip(out_hw, x.shape[2:]))
    elif scales_in:
        full_scales = full(scales_in, 1.0)
        out_hw = _sizes_from_scales(ctx, node, x, full_scales)
        scales = (full_scales[2], full_scales[3])
    else:
        raise ctx.unsupported(node, "neither scales nor sizes is given")
    if min(out_hw) < 1:
        raise ctx.unsupported(node, f"output size {list(out_hw)} is empty")
    if node.attr("antialias", 0) and mode == "linear" and min(scales) < 1:
        raise ctx.unsupported(node, "antialiased downscaling")
    return _resize(ctx, node, x, out_hw, scales, mode, coord, nearest_mode)


def upsample(ctx: ImportContext, node: OnnxNode) -> ImportResult:
    """Upsample (opsets 7-9; `scales` an attribute before 9, an input since): asymmetric coordinates,
    nearest truncates (onnxruntime's Upsample)."""
    x = ctx.input(node, 0)
    mode = _mode(ctx, node)
    scales = ctx.attr_or_input(node, "scales", 1, None, ints=False)
    if scales is None:
        raise ctx.unsupported(node, "no scales")
    scales = [float(s) for s in np.asarray(scales).ravel()]
    out_hw = _sizes_from_scales(ctx, node, x, scales)
    return _resize(ctx, node, x, out_hw, (scales[2], scales[3]), mode, "asymmetric", "simple")
