"""Ranges from a pre-quantized model's own grids, in place of calibration.

A uint8 / int8 .tflite states the grid of every activation tensor (kcc.frontend.quantization). Its
weights and biases were trained (quantization-aware training) or calibrated for exactly those grids,
so kcc uses them as the quantization points' ranges: no dataset is needed, and each KPU layer
quantizes its output on the model's own grid, as TFLite's uint8 kernels do.

`quantize` turns a calibrated range into nncase's (z, s) with `get_quant_param`. For a tflite range
[scale*(0 - z), scale*(255 - z)] that gives back z exactly, and s = float32(1/scale) for all 96
uint8 activation tensors of the Coral MobileNets, but not always: for about one random scale in six
the float32 division lands one ulp away; and the KPU layers need s beyond float32 (target_param).
So the ranges made here are `GridRange`s, which carry the grid itself to `quantize`
(kcc.quant.params.range_param): the model's grid, verbatim.

Quantization points are IR nodes, named after the tflite tensor they compute (kcc.ir.graph), but
legalization adds nodes around a KPU layer. `model_ranges` finds each point's tensor:
* by name;
* else through data movement, which keeps the values and the grid: a KPU layer `X/kpu` that a crop
  (StridedSlice `X`) follows, a reshape, a pad in front of a layer (`X/kpu_pad`), a concatenation
  of views of one tensor, a KPU layer `X/full` whose odd rows a copy `X` picks (kcc.passes.row_pick:
  TFLite's uint8 conv on X's grid, at every pixel);
* the input of an activation fused into a layer L (its pre-activation point, which the calibration
  view links to L: kcc.quant.calibration_view.CalibrationView) is the output of the conv that the layer's
  tensor L comes from, found through the recorded producers.
A point with no tensor (an intermediate a rewrite invented) raises a DatasetError that names it:
calibrating with --dataset still works for such models.
"""

from __future__ import annotations

import numpy as np

from kcc.errors import DatasetError
from kcc.frontend.quantization import PRODUCER_CONV, ModelQuantization, TensorQuant
from kcc.ir import ops as O
from kcc.ir.code_moves import moves_codes
from kcc.ir.graph import Node
from kcc.quant.calibrate import input_range_override
from kcc.quant.calibration_view import CalibrationView
from kcc.quant.params import GridRange, QuantParam

F32 = np.float32
Range = tuple[float, float]
_MOVES = (O.Reshape, O.Transpose, O.StridedSlice, O.Pad)  # keep values (and so the grid)


def _with(r: Range, v: float) -> Range:
    """r widened to contain v (a pad value); keeps a GridRange when v lies inside it."""
    return r if r[0] <= v <= r[1] else (min(r[0], v), max(r[1], v))


def target_param(tq: TensorQuant) -> QuantParam:
    """The tflite grid in kcc's convention: z = zero point, s = 1/scale levels per unit.

    s is kept in float64: the KPU layers' multipliers are computed from it (kcc.quant.kpu_params)
    and must reproduce TFLite's s_x*s_w/s_y to ~1e-9, so that an output rounds as TFLite's does even
    a few 1e-6 of a step from a half; every op that stores a scale rounds it to float32, as before."""
    return QuantParam(tq.zero_point, 1.0 / float(F32(tq.scale)))


def grid_range(tq: TensorQuant) -> GridRange:
    """The tensor's real range [scale*(0 - z), scale*(255 - z)], carrying the grid itself."""
    return GridRange(*tq.real_range, target_param(tq))


class _Resolver:
    def __init__(self, view: CalibrationView, quant: ModelQuantization):
        self.known = {name: grid_range(tq) for name, tq in quant.activations.items()}
        self.producers = quant.producers
        self.users = view.graph.users()
        self.by_name = {n.name: n for n in view.graph.nodes}
        # pre-activation point -> the layer whose fused activation reads it
        self.layer_of = {pre: layer for layer, pre in view.pre_activations.items()}

    def tensor_range(self, n: Node, forward: bool = True) -> Range | None:
        """The grid of the tensor `n` computes: its own, or that of a node holding the same values
        moved around (data movement keeps the grid, in TFLite as in kcc.quant.quantize)."""
        if n.name in self.known:
            return self.known[n.name]
        found = None
        if isinstance(n.op, _MOVES):  # backwards: a pad / crop / reshape of a known tensor
            found = self.tensor_range(n.inputs[0], forward=False)
            if found is not None and isinstance(n.op, O.Pad):
                found = _with(found, n.op.value)
        elif isinstance(n.op, O.Concat):  # e.g. the stacked views of one input (decompose_kernels)
            parts = [self.tensor_range(i, forward=False) for i in n.inputs]
            if parts and all(p is not None for p in parts):
                found = parts[0] if all(p == parts[0] for p in parts) else (min(p[0] for p in parts),
                                                                            max(p[1] for p in parts))
        if found is None and forward:  # forwards: a KPU layer `X/kpu` cropped to the tensor X, or `X/full`
            cur = n                      # picked by a copy (kcc.passes.row_pick) to X
            while found is None and self._moved_to(cur) is not None:
                cur = self._moved_to(cur)
                found = self.known.get(cur.name)
        return found

    def _moved_to(self, n: Node) -> Node | None:
        """n's only user when it moves n's values and grid: data movement, or a KPU layer copying
        them (kcc.ir.code_moves.moves_codes, on its input's grid: kcc.quant.policy.copy_grids)."""
        users = self.users.get(n, ())
        if len(users) == 1 and (isinstance(users[0].op, _MOVES) or moves_codes(users[0])):
            return users[0]
        return None

    def pre_activation_range(self, layer: str) -> Range | None:
        """The range a fused activation reads: the output of the conv behind the layer's tensor (the
        tensor of the copy that picks the layer's output, for a row_pick conv)."""
        name = layer
        node = self.by_name.get(layer)
        while name not in self.producers and node is not None and self._moved_to(node) is not None:
            node = self._moved_to(node)
            name = node.name
        for _ in range(4):  # tensor <- pool <- activation <- conv at most
            kind, src = self.producers.get(name, ("", ""))
            if not kind:
                return None
            if kind == PRODUCER_CONV:
                return self.known.get(name)
            name = src
        return None

    def point_range(self, p: Node) -> Range | None:
        if p.name in self.layer_of:
            return self.pre_activation_range(self.layer_of[p.name])
        return self.tensor_range(p)


def model_ranges(view: CalibrationView, quant: ModelQuantization) -> dict[str, Range]:
    """The range of every calibration point of the view (kcc.quant.calibration_view.calibration_view), from
    the model's own grids; DatasetError naming the points that have none."""
    r = _Resolver(view, quant)
    ranges: dict[str, Range] = {}
    missing: list[str] = []
    for p in view.points:
        found = r.point_range(p)
        if found is None:
            missing.append(p.name)
        else:
            ranges[p.name] = found
    if missing:
        listing = ", ".join(f"'{m}'" for m in missing[:3])
        listing += f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(f"the pre-quantized model has no grid for {len(missing)} tensor(s) the KPU layers "
                           f"need: {listing}", hint="pass --dataset to calibrate those ranges instead")
    return ranges


def prequantized_ranges(view: CalibrationView, quant: ModelQuantization, options,
                        log=lambda line: None) -> dict[str, Range]:
    """The compiler's calibration step for a pre-quantized model: every point's range (of the
    calibration view of the legalized graph) from the model.

    --input-mean/--input-std still fix the graph input's range as they do after calibration."""
    ranges = model_ranges(view, quant)
    if options.input_mean is not None or options.input_std is not None:
        ranges[view.graph.inputs[0].name] = input_range_override(options.mean, options.std)
    log(f"   no calibration: {len(view.points)} tensors take the pre-quantized model's own grids")
    return ranges
