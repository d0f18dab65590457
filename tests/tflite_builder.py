"""Build tiny .tflite models in-process, for per-op tests against the real TFLite interpreter.

Uses only the flatbuffers builder functions the `tflite` package generates from schema.fbs
(`tflite.ModelStart`, `tflite.OperatorAddInputs`, `tflite.Conv2DOptionsAddPadding`, ...), so a
test states a model in a few lines:

    b = TfliteBuilder()
    x = b.input([1, 8, 8, 3])
    w = b.const(rng.standard_normal((4, 3, 3, 3), np.float32))
    y = b.op("CONV_2D", [x, w, -1], padding="SAME", stride_w=2, fused_activation_function="RELU6")
    b.output(y)
    data = b.build()          # output shapes are filled in by asking the TFLite interpreter

Options are the snake_case field names of the op's options table; enum fields take member names.
`run_tflite(data, inputs)` runs the model with ai-edge-litert (the float reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import flatbuffers
import numpy as np
import tflite
from tflite.utils import BUILTIN_OPCODE2NAME

OPCODES = {name: code for code, name in BUILTIN_OPCODE2NAME.items()}

# Builtin op -> its options table (schema.fbs `BuiltinOptions` union member).
OPTIONS_TABLE = {
    "CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "TRANSPOSE_CONV": "TransposeConvOptions", "FULLY_CONNECTED": "FullyConnectedOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions",
    "ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions",
    "CONCATENATION": "ConcatenationOptions", "RESHAPE": "ReshapeOptions", "SQUEEZE": "SqueezeOptions",
    "STRIDED_SLICE": "StridedSliceOptions", "SPLIT": "SplitOptions", "SPLIT_V": "SplitVOptions",
    "SOFTMAX": "SoftmaxOptions", "LEAKY_RELU": "LeakyReluOptions", "MEAN": "ReducerOptions",
    "SUM": "ReducerOptions", "REDUCE_MAX": "ReducerOptions", "REDUCE_MIN": "ReducerOptions",
    "RESIZE_BILINEAR": "ResizeBilinearOptions", "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
    "L2_NORMALIZATION": "L2NormOptions", "PACK": "PackOptions", "UNPACK": "UnpackOptions",
    "PAD": "PadOptions", "PADV2": "PadV2Options", "TRANSPOSE": "TransposeOptions",
    "EXPAND_DIMS": "ExpandDimsOptions", "SLICE": "SliceOptions", "MAXIMUM": "MaximumMinimumOptions",
    "MINIMUM": "MaximumMinimumOptions", "DEQUANTIZE": "DequantizeOptions",
    "HARD_SWISH": "HardSwishOptions", "SQUARED_DIFFERENCE": "SquaredDifferenceOptions",
    "SHAPE": "ShapeOptions", "GATHER": "GatherOptions", "CAST": "CastOptions", "REDUCE_PROD": "ReducerOptions",
    "FLOOR_DIV": "FloorDivOptions", "FLOOR_MOD": "FloorModOptions",
}
_ENUMS = {"padding": tflite.Padding, "fused_activation_function": tflite.ActivationFunctionType,
          "weights_format": tflite.FullyConnectedOptionsWeightsFormat, "in_data_type": tflite.TensorType,
          "out_data_type": tflite.TensorType}
_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT64": np.int64,
          "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16}


@dataclass
class _Tensor:
    name: str
    shape: list[int] | None  # None: filled in by build() from the interpreter
    type_name: str
    buffer: int
    quant: tuple[np.ndarray, np.ndarray, int] | None = None
    signature: list[int] | None = None  # shape_signature (-1 = dynamic), written only if given


@dataclass
class _Op:
    opcode: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any]
    custom_code: str = ""


class TfliteBuilder:
    def __init__(self) -> None:
        self.tensors: list[_Tensor] = []
        self.buffers: list[bytes] = [b""]
        self.ops: list[_Op] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    # ------------------------------------------------------------------ tensors
    def _tensor(self, shape, type_name: str, name: str | None, data: bytes = b"", quant=None) -> int:
        buf = 0
        if data:
            self.buffers.append(data)
            buf = len(self.buffers) - 1
        self.tensors.append(_Tensor(name or f"t{len(self.tensors)}", None if shape is None else list(shape),
                                    type_name, buf, quant))
        return len(self.tensors) - 1

    def input(self, shape: Sequence[int], name: str | None = None, type_name: str = "FLOAT32",
              signature: Sequence[int] | None = None) -> int:
        t = self._tensor(shape, type_name, name)
        self.tensors[t].signature = None if signature is None else list(signature)
        self.inputs.append(t)
        return t

    def const(self, data: np.ndarray, name: str | None = None, type_name: str | None = None,
              quant: tuple[Sequence[float], Sequence[int], int] | None = None) -> int:
        data = np.asarray(data)
        if type_name is None:
            type_name = {v: k for k, v in _TYPES.items()}[data.dtype.type]
        # astype keeps 0-d (scalar) constants 0-d, as ascontiguousarray would not; tobytes() is C order.
        data = data.astype(np.dtype(_TYPES[type_name]).newbyteorder("<"))
        q = None if quant is None else (np.asarray(quant[0], np.float32), np.asarray(quant[1], np.int64), quant[2])
        return self._tensor(data.shape, type_name, name, data.tobytes(), q)

    def output(self, *tensors: int) -> None:
        self.outputs.extend(tensors)

    # ------------------------------------------------------------------ operators
    def op(self, opcode: str, inputs: Sequence[int], n_outputs: int = 1, name: str | None = None,
           custom_code: str = "", out_type: str = "FLOAT32", out_shape: Sequence[int] | None = None,
           **options: Any) -> Any:
        """Append an operator; returns its output tensor index (a list if n_outputs > 1).

        Output shapes are inferred by TFLite at build() unless `out_shape` is given (needed when the
        model is not one TFLite can prepare, e.g. for error tests). SHAPE's ShapeOptions.out_type is
        the output tensor's type (`out_type`).
        """
        if opcode == "SHAPE":
            options = {"out_type": getattr(tflite.TensorType, out_type), **options}
        base = name or f"{opcode.lower()}_{len(self.ops)}"
        outs = [self._tensor(out_shape, out_type, base if n_outputs == 1 else f"{base}:{k}")
                for k in range(n_outputs)]
        self.ops.append(_Op(opcode, list(inputs), outs, options, custom_code))
        return outs[0] if n_outputs == 1 else outs

    # ------------------------------------------------------------------ serialisation
    def build(self) -> bytes:
        """Serialise; unknown output shapes are taken from the TFLite interpreter's shape inference."""
        if any(t.shape is None for t in self.tensors):
            from ai_edge_litert.interpreter import Interpreter, OpResolverType

            interp = Interpreter(model_content=self._serialise(),
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            interp.allocate_tensors()
            shapes = {d["index"]: list(d["shape"]) for d in interp.get_tensor_details()}
            for i, t in enumerate(self.tensors):
                if t.shape is None:
                    t.shape = [int(v) for v in shapes[i]]
        return self._serialise()

    def _serialise(self) -> bytes:
        b = flatbuffers.Builder(1024)
        buffers = [self._buffer(b, data) for data in self.buffers]
        tensors = [self._tensor_table(b, t) for t in self.tensors]
        codes: list[tuple[str, str]] = []
        for op in self.ops:
            if (op.opcode, op.custom_code) not in codes:
                codes.append((op.opcode, op.custom_code))
        code_tables = [self._opcode_table(b, *c) for c in codes]
        op_tables = [self._operator_table(b, op, codes.index((op.opcode, op.custom_code))) for op in self.ops]

        t_vec = _table_vector(b, tflite.SubGraphStartTensorsVector, tensors)
        in_vec = _int_vector(b, self.inputs)
        out_vec = _int_vector(b, self.outputs)
        op_vec = _table_vector(b, tflite.SubGraphStartOperatorsVector, op_tables)
        name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, t_vec)
        tflite.SubGraphAddInputs(b, in_vec)
        tflite.SubGraphAddOutputs(b, out_vec)
        tflite.SubGraphAddOperators(b, op_vec)
        tflite.SubGraphAddName(b, name)
        subgraph = tflite.SubGraphEnd(b)

        codes_vec = _table_vector(b, tflite.ModelStartOperatorCodesVector, code_tables)
        sub_vec = _table_vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
        buf_vec = _table_vector(b, tflite.ModelStartBuffersVector, buffers)
        desc = b.CreateString("kcc test model")
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, codes_vec)
        tflite.ModelAddSubgraphs(b, sub_vec)
        tflite.ModelAddDescription(b, desc)
        tflite.ModelAddBuffers(b, buf_vec)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _buffer(b: flatbuffers.Builder, data: bytes) -> int:
        vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        return tflite.BufferEnd(b)

    @staticmethod
    def _tensor_table(b: flatbuffers.Builder, t: _Tensor) -> int:
        name = b.CreateString(t.name)
        shape = b.CreateNumpyVector(np.asarray(t.shape if t.shape is not None else [1], np.int32))
        signature = None if t.signature is None else b.CreateNumpyVector(np.asarray(t.signature, np.int32))
        quant = None
        if t.quant is not None:
            scale = b.CreateNumpyVector(t.quant[0])
            zp = b.CreateNumpyVector(t.quant[1])
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scale)
            tflite.QuantizationParametersAddZeroPoint(b, zp)
            tflite.QuantizationParametersAddQuantizedDimension(b, t.quant[2])
            quant = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, getattr(tflite.TensorType, t.type_name))
        tflite.TensorAddBuffer(b, t.buffer)
        tflite.TensorAddName(b, name)
        if signature is not None:
            tflite.TensorAddShapeSignature(b, signature)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        return tflite.TensorEnd(b)

    @staticmethod
    def _opcode_table(b: flatbuffers.Builder, opcode: str, custom: str) -> int:
        code = OPCODES[opcode]
        custom_off = b.CreateString(custom) if custom else None
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddVersion(b, 1)
        if custom_off is not None:
            tflite.OperatorCodeAddCustomCode(b, custom_off)
        return tflite.OperatorCodeEnd(b)

    @staticmethod
    def _operator_table(b: flatbuffers.Builder, op: _Op, code_index: int) -> int:
        table_name = OPTIONS_TABLE.get(op.opcode)
        options = _options_table(b, table_name, op.options) if table_name else None
        ins = _int_vector(b, op.inputs)
        outs = _int_vector(b, op.outputs)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, code_index)
        tflite.OperatorAddInputs(b, ins)
        tflite.OperatorAddOutputs(b, outs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, table_name))
            tflite.OperatorAddBuiltinOptions(b, options)
        return tflite.OperatorEnd(b)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _options_table(b: flatbuffers.Builder, table: str, options: dict[str, Any]) -> int:
    vectors = {k: b.CreateNumpyVector(np.asarray(v, np.int32)) for k, v in options.items()
               if isinstance(v, (list, tuple))}
    getattr(tflite, f"{table}Start")(b)
    for key, value in options.items():
        add = getattr(tflite, f"{table}Add{_camel(key)}")
        if key in vectors:
            add(b, vectors[key])
        elif key in _ENUMS:
            add(b, getattr(_ENUMS[key], value))
        else:
            add(b, value)
    return getattr(tflite, f"{table}End")(b)


def _int_vector(b: flatbuffers.Builder, values: Sequence[int]) -> int:
    return b.CreateNumpyVector(np.asarray(values, np.int32))


def _table_vector(b: flatbuffers.Builder, start, offsets: Sequence[int]) -> int:
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def run_tflite(model: bytes, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a model with the real TFLite interpreter (builtin kernels, no XNNPACK delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=model,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    for detail, x in zip(interp.get_input_details(), inputs):
        interp.set_tensor(detail["index"], np.ascontiguousarray(x, detail["dtype"]))
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


def to_ir_layout(x: np.ndarray) -> np.ndarray:
    """tflite NHWC -> kcc NCHW for 4-D arrays (graph inputs/outputs are NCHW in the IR)."""
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def from_ir_layout(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def check_against_tflite(model: bytes | TfliteBuilder, inputs: Sequence[np.ndarray], rtol: float = 1e-5):
    """Import `model`, evaluate it before and after canonicalize, and compare both with TFLite.

    Returns the canonicalized graph so tests can inspect its structure.
    """
    from kcc.eval.interpreter import run
    from kcc.frontend import import_tflite
    from kcc.passes.canonicalize import canonicalize

    data = model.build() if isinstance(model, TfliteBuilder) else model
    want = run_tflite(data, inputs)
    graph = import_tflite(data, name="test.tflite")
    graph.verify("import")
    ir_inputs = [to_ir_layout(np.asarray(x, np.float32)) for x in inputs]
    for stage in ("import", "canonicalize"):
        if stage == "canonicalize":
            graph = canonicalize(graph)
            graph.verify(stage)
        got = [from_ir_layout(y) for y in run(graph, ir_inputs)]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape, (stage, g.shape, w.shape)
            scale = max(float(np.abs(w).max(initial=0.0)), 1.0)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=stage)
    return graph
