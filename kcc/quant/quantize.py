"""quantize: float graph with KpuConv2D layers + calibrated ranges -> the uint8 K210 graph.

Every KPU layer reads and writes uint8 in KPU RAM; the rest of the graph stays float32 on the CPU.
Data crosses between the two through explicit ops, created lazily per tensor:

    float x --quantize--> u8 (main) --kpu_upload--> u8 (KPU RAM) --kpu_layer--> u8 (KPU RAM)
    u8 (KPU RAM) --kpu_download--> u8 (main) --dequantize--> float

Consecutive KPU layers therefore hand data over in KPU RAM directly, and data-movement ops between
two layers (pad, strided_slice, reshape, transpose) run on uint8 in main memory with the producing
layer's quant param ("range broadcast", kpu_semantics.md §4.2), so no requantization is needed.
A Pad's value is quantized with that param (0.0 -> the zero point, matching the KPU's own border).
So does a concatenation of uint8 tensors on one grid (kcc.quant.policy.share_concat_grids).

A QuantResidual(x) (decompose_kernels' residual channels) becomes, on the grid q its stack is read
on: dequantize(quantize(x)) subtracted from x, quantized at gain times q's resolution. A KPU layer
reading only a residual (a summed term's twin) gets its output range from a bound
(kcc.quant.policy.residual_term_ranges).

A CPU pool whose output range is its input's grid (a pre-quantized model's pools: TFLite requires
it) runs on the codes too: dequantize with (0, 1), pool, quantize with (0, 1). Max and mean commute
with the affine map from codes to values, and float32 holds the codes and their sums exactly, so a
mean rounds half up exactly as TFLite's uint8 average pool does; the KPU's mean pools floor instead.
The final quantize scales by 1 + 2^-20 so that exact .5 ties round up on the K210 too, whose
float-to-int conversion rounds them to even (kpu_semantics.md §4.1).
"""

from __future__ import annotations

from typing import Callable

from kcc.ir import kpu_ops as KO
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.ir.types import DType
from kcc.passes.manager import CompileContext
from kcc.quant.kpu_params import LayerRanges, kpu_layer
from kcc.quant.params import QuantParam, range_param
from kcc.quant.weight_rounding import InputMoments

LAYOUT_OPS = (O.Pad, O.StridedSlice, O.Reshape, O.Transpose)
# codes -> codes with ties rounded up: x*(1 + 2^-20) moves k + 1/2 up by >= 2^-21 (a float32 keeps it,
# |x| <= 255), and a non-tie mean of n codes is >= 1/(2n) away from a half, far more than 255*2^-20
CODE_ROUNDING_SCALE = 1.0 + 2.0 ** -20
Ranges = dict[str, tuple[float, float]]


def _drops_channels(n: Node) -> bool:
    """A slice that keeps only some channels: quantizing its input instead would quantize (and move)
    data it throws away."""
    return isinstance(n.op, O.StridedSlice) and n.shape[1] < n.inputs[0].shape[1]


def pre_activation_name(layer: Node) -> str:
    return layer.name + "/pre_act"


def calibration_view(g: Graph) -> tuple[Graph, list[Node]]:
    """The graph to calibrate, and the nodes whose ranges `quantize` needs.

    A layer with a fused function f also needs the range of its input to f (what the activation
    table reads): the view is a new graph over g's nodes that adds, as extra outputs, the same layer
    without f and without pool. `g` itself is left as it is (its node list, outputs and names)."""
    view = Graph(list(g.nodes), list(g.outputs), {n.name for n in g.nodes})
    points: dict[int, Node] = {}
    for n in g.nodes:
        if isinstance(n.op, KO.KpuConv2D):
            points[id(n)] = n
            points[id(n.inputs[0])] = n.inputs[0]
            if n.op.fn is not None:
                pre = view.add(KO.KpuConv2D(n.op.kernel, n.op.depthwise, "bypass", n.op.act, None), n.inputs,
                               pre_activation_name(n))
                view.outputs.append(pre)
                points[id(pre)] = pre
        elif isinstance(n.op, (O.Input, O.Pool2D)):  # a pool's range decides if it runs on codes
            points[id(n)] = n
    return view, list(points.values())


class _Quantizer:
    def __init__(self, g: Graph, ranges: Ranges, input_u8: bool, moments: InputMoments | None, turn_channels: bool):
        self.src = g
        self.turn_channels = turn_channels
        self.ranges = ranges
        self.input_u8 = input_u8
        self.moments = moments.layers if moments is not None else {}
        self.g = Graph()
        self.float: dict[int, Node] = {}  # source node -> float32 node in the new graph
        self.layer: dict[int, Node] = {}  # source KpuConv2D -> KpuLayer (KPU RAM)
        self.u8: dict[int, Node] = {}  # source node -> u8 node in main memory
        self.kpu: dict[int, Node] = {}  # source node -> u8 node in KPU RAM
        self.chains: dict[tuple[int, QuantParam], Node] = {}  # (source node, grid) -> quantized chain

    # ------------------------------------------------------------ quant params
    def _u8_source(self, n: Node) -> bool:
        """True when `n` is (a data movement of) a uint8 tensor: a KPU layer output or a u8 input."""
        while isinstance(n.op, LAYOUT_OPS) or self._pool_on_codes(n):
            n = n.inputs[0]
        return (isinstance(n.op, KO.KpuConv2D) or (isinstance(n.op, O.Input) and self.input_u8)
                or self._concat_on_codes(n))

    def _concat_on_codes(self, n: Node) -> bool:
        """A concatenation of uint8 tensors on one grid (kcc.quant.policy.share_concat_grids)."""
        if not isinstance(n.op, O.Concat) or not all(self._u8_source(i) for i in n.inputs):
            return False
        try:
            grids = {self.qparam(i) for i in n.inputs}
        except KeyError:
            return False
        return len(grids) == 1 and (n.name not in self.ranges or {range_param(self.ranges[n.name])} == grids)

    def _pool_on_codes(self, n: Node) -> bool:
        """A pool without clamp whose range is its input's grid, on a uint8 input (module docstring)."""
        if not (isinstance(n.op, O.Pool2D) and n.op.act == O.NO_CLAMP and n.name in self.ranges):
            return False
        try:
            return self._u8_source(n.inputs[0]) and range_param(self.ranges[n.name]) == self.qparam(n.inputs[0])
        except KeyError:
            return False

    def _moves_u8(self, n: Node) -> bool:
        """n computes on the uint8 codes of its input, keeping its grid."""
        return ((isinstance(n.op, LAYOUT_OPS) and self._u8_source(n)) or self._pool_on_codes(n)
                or self._concat_on_codes(n))

    def qparam(self, n: Node) -> QuantParam:
        if self._moves_u8(n):
            return self.qparam(n.inputs[0])
        if isinstance(n.op, KO.KpuConv2D):
            zp, scale = self.layer_of(n).op.out_q
            return QuantParam(zp, scale)
        if n.name not in self.ranges:
            raise KeyError(f"no calibrated range for '{n.name}'")
        return range_param(self.ranges[n.name])

    # ------------------------------------------------------------ lazily built views
    def _cached(self, cache: dict[int, Node], n: Node, make: Callable[[], Node]) -> Node:
        if id(n) not in cache:
            cache[id(n)] = make()
        return cache[id(n)]

    def float_of(self, n: Node) -> Node:
        """n as float32. Data movement of a uint8 tensor runs on the uint8 bytes (4x less memory and
        work) and is dequantized after: ncc's dequantize motion (kpu_semantics.md §4.4)."""
        if isinstance(n.op, KO.KpuConv2D) or self._moves_u8(n):
            def deq() -> Node:
                q = self.qparam(n)
                return self.g.add(KO.Dequantize(q.zero_point, q.scale), (self.u8_of(n),), n.name + "/dequantize")
            return self._cached(self.float, n, deq)
        return self.float[id(n)]

    def u8_of(self, n: Node) -> Node:
        """n as uint8 in main memory, quantized with qparam(n)."""
        def make() -> Node:
            g = self.g
            if isinstance(n.op, KO.KpuConv2D):
                return g.add(KO.KpuDownload(), (self.layer_of(n),), n.name + "/download")
            if isinstance(n.op, O.Input) and self.input_u8:
                return self.float[id(n)]  # the graph input itself is uint8
            if isinstance(n.op, LAYOUT_OPS) and self._u8_source(n):
                src = self.u8_of(n.inputs[0])
                op = n.op
                if isinstance(op, O.Pad):
                    op = O.Pad(op.paddings, float(self.qparam(n).quantize(op.value)))
                return g.add(op, (src,), n.name + "/u8")
            if self._concat_on_codes(n):
                return g.add(n.op, tuple(self.u8_of(i) for i in n.inputs), n.name + "/u8")
            if self._pool_on_codes(n):
                codes = g.add(KO.Dequantize(0, 1.0), (self.u8_of(n.inputs[0]),), n.name + "/codes")
                pooled = g.add(n.op, (codes,), n.name + "/pool_codes")
                return g.add(KO.Quantize(0, CODE_ROUNDING_SCALE), (pooled,), n.name + "/u8")
            return self._quantized_chain(n, self.qparam(n))
        return self._cached(self.u8, n, make)

    def _quantized_chain(self, n: Node, q: QuantParam) -> Node:
        """Quantize *before* data movement: pad(x) -> quantize becomes quantize(x) -> pad on uint8,
        so the float copy of the larger, padded tensor is never made. Concatenations too: the
        stacked shifted views of a decomposed conv (kcc.passes.decompose_kernels) are made from one
        quantized copy of x, on uint8 (a quarter of the memory and traffic of float32). A slice
        that drops channels is quantized after, not before (_drops_channels)."""
        key = (id(n), q)
        if key in self.chains:
            return self.chains[key]
        if isinstance(n.op, LAYOUT_OPS) and not _drops_channels(n):
            op = n.op
            if isinstance(op, O.Pad):
                op = O.Pad(op.paddings, float(q.quantize(op.value)))
            out = self.g.add(op, (self._quantized_chain(n.inputs[0], q),), n.name + "/u8")
        elif isinstance(n.op, O.Concat):
            out = self.g.add(n.op, tuple(self._quantized_chain(i, q) for i in n.inputs), n.name + "/u8")
        elif isinstance(n.op, KO.QuantResidual):
            # the residual of x on q, itself on q at `gain` times the resolution: codes z +- gain/2
            x = n.inputs[0]
            back = self.g.add(KO.Dequantize(q.zero_point, q.scale), (self._quantized_chain(x, q),), n.name + "/rounded")
            lost = self.g.add(O.Binary("sub"), (self.float_of(x), back), n.name + "/lost")
            out = self.g.add(KO.Quantize(q.zero_point, q.scale * n.op.gain), (lost,), n.name + "/u8")
        else:
            out = self.g.add(KO.Quantize(q.zero_point, q.scale), (self.float_of(n),), n.name + "/quantize")
        self.chains[key] = out
        return out

    def kpu_of(self, n: Node) -> Node:
        """n as uint8 in KPU RAM."""
        if isinstance(n.op, KO.KpuConv2D):
            return self.layer_of(n)
        return self._cached(self.kpu, n, lambda: self.g.add(KO.KpuUpload(), (self.u8_of(n),), n.name + "/upload"))

    @staticmethod
    def _floor_bias(x: Node) -> float:
        """Mean bias (in steps) of a map pooled by a KPU mean pool, which floors (kpu_params)."""
        while isinstance(x.op, LAYOUT_OPS):
            x = x.inputs[0]
        window = {"mean_2_s2": 4, "mean_2_s1": 4, "mean_4_s4": 16}.get(getattr(x.op, "pool", ""), 0)
        return (window - 1) / (2 * window) if isinstance(x.op, KO.KpuConv2D) and window else 0.0

    def layer_of(self, n: Node) -> Node:
        def make() -> Node:
            x, w, b = n.inputs
            xq = self.qparam(x)
            z = self.ranges[n.name]
            y = self.ranges.get(pre_activation_name(n), z)
            params = kpu_layer(n.op, w.data, b.data, LayerRanges(xq, y, z, self._floor_bias(x)),
                               self.moments.get(n.name), self.turn_channels)
            return self.g.add(params, (self.kpu_of(x),), n.name)
        return self._cached(self.layer, n, make)

    # ------------------------------------------------------------ driver
    def run(self) -> Graph:
        for n in self.src.nodes:
            if isinstance(n.op, KO.KpuConv2D):
                self.layer_of(n)
            elif self._moves_u8(n):
                pass  # built on demand, on uint8, by u8_of / float_of
            elif isinstance(n.op, O.Input) and self.input_u8:
                q = self.qparam(n)
                self.float[id(n)] = self.g.add(O.Input(n.op.index, n.shape, DType.uint8), (), n.name)
                self.u8[id(n)] = self.float[id(n)]
                deq = self.g.add(KO.Dequantize(q.zero_point, q.scale), (self.float[id(n)],), n.name + "/dequantize")
                self.float[id(n)] = deq
            else:
                self.float[id(n)] = self.g.add(n.op, tuple(self.float_of(i) for i in n.inputs), n.name, n.note)
        self.g.outputs = [self.float_of(o) for o in self.src.outputs]
        self.g.remove_dead()
        return self.g


def quantize(g: Graph, ctx: CompileContext | None = None) -> Graph:
    """Turn each KpuConv2D into a quantized KpuLayer over ctx.ranges; the graph input becomes uint8
    if the options ask. With the calibration's ctx.moments, KPU weights are rounded with their inputs
    in view (kcc.quant.weight_rounding); `--weight-equalization turned` turns channels over
    (kcc.quant.kpu_params.equalize_weights)."""
    ctx = ctx or CompileContext()
    opts = ctx.options
    return _Quantizer(g, ctx.ranges, opts.effective_input_type == "uint8", ctx.moments,
                      opts.weight_equalization == "turned").run()
