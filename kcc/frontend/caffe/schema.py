"""kcc's own subset of the Caffe schema, built at import time: `NetParameter` and the messages it holds.

No protoc step and no generated `_pb2` module: the table below is turned into a
`descriptor_pb2.FileDescriptorProto`, added to a private `DescriptorPool` (so it cannot clash with
another copy of caffe.proto loaded in the same process, e.g. by a user's pycaffe) and made into
message classes with `message_factory.GetMessageClass`. The same classes parse the binary
.caffemodel (wire format) and the .prototxt (`google.protobuf.text_format`).

Field numbers, types and defaults are those of BVLC caffe.proto (src/caffe/proto/caffe.proto, the
2017 master), plus `PermuteParameter` (field 202 of LayerParameter, `repeated uint32 order = 1`) from
the SSD fork (weiliu89/caffe), which ULFFD-style detectors use. Only what the importer reads is
declared: parsing keeps every other field of a binary file as an unknown field, and the text parser
is told to skip unknown ones (fillers, lr_mult, engine...), which change nothing at inference.

`PoolingParameter.ceil_mode` is not BVLC's: forks that predate `round_mode` (BVLC PR #3057) spell
the same switch `ceil_mode: false`; it is declared at 1013, the number those forks moved it to, so
a prototxt saying it is honoured instead of skipped.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "kcc.caffe"
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32, "int64": _F.TYPE_INT64, "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES,
}

# enum name -> [(value name, number)]; nested enums are written "Message.Enum".
_ENUMS: dict[str, list[tuple[str, int]]] = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
    "EltwiseParameter.EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
    "PoolingParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "PoolingParameter.RoundMode": [("CEIL", 0), ("FLOOR", 1)],
}

# message -> [(field name, number, type, "optional" | "repeated" | "packed", default or None)]
# A type is a scalar name, a message name or an enum name of _ENUMS.
_MESSAGES: dict[str, list[tuple[str, int, str, str, Any]]] = {
    "BlobShape": [("dim", 1, "int64", "packed", None)],
    "BlobProto": [
        ("shape", 7, "BlobShape", "optional", None),
        ("data", 5, "float", "packed", None),
        ("double_data", 8, "double", "packed", None),
        # the 4-D shape of files written before BlobShape (2015)
        ("num", 1, "int32", "optional", 0), ("channels", 2, "int32", "optional", 0),
        ("height", 3, "int32", "optional", 0), ("width", 4, "int32", "optional", 0),
    ],
    "NetState": [
        ("phase", 1, "Phase", "optional", "TEST"), ("level", 2, "int32", "optional", 0),
        ("stage", 3, "string", "repeated", None),
    ],
    "NetStateRule": [
        ("phase", 1, "Phase", "optional", None), ("min_level", 2, "int32", "optional", None),
        ("max_level", 3, "int32", "optional", None), ("stage", 4, "string", "repeated", None),
        ("not_stage", 5, "string", "repeated", None),
    ],
    "NetParameter": [
        ("name", 1, "string", "optional", None),
        # the network input of deploy files written before the Input layer (2016)
        ("input", 3, "string", "repeated", None),
        ("input_shape", 8, "BlobShape", "repeated", None),
        ("input_dim", 4, "int32", "repeated", None),
        ("state", 6, "NetState", "optional", None),
        ("layer", 100, "LayerParameter", "repeated", None),
        ("layers", 2, "V1LayerParameter", "repeated", None),  # the 2014 format: refused with advice
    ],
    "LayerParameter": [
        ("name", 1, "string", "optional", None), ("type", 2, "string", "optional", None),
        ("bottom", 3, "string", "repeated", None), ("top", 4, "string", "repeated", None),
        ("phase", 10, "Phase", "optional", None),
        ("blobs", 7, "BlobProto", "repeated", None),
        ("include", 8, "NetStateRule", "repeated", None), ("exclude", 9, "NetStateRule", "repeated", None),
        ("batch_norm_param", 139, "BatchNormParameter", "optional", None),
        ("clip_param", 148, "ClipParameter", "optional", None),
        ("concat_param", 104, "ConcatParameter", "optional", None),
        ("convolution_param", 106, "ConvolutionParameter", "optional", None),
        ("dropout_param", 108, "DropoutParameter", "optional", None),
        ("eltwise_param", 110, "EltwiseParameter", "optional", None),
        ("flatten_param", 135, "FlattenParameter", "optional", None),
        ("inner_product_param", 117, "InnerProductParameter", "optional", None),
        ("input_param", 143, "InputParameter", "optional", None),
        ("pooling_param", 121, "PoolingParameter", "optional", None),
        ("prelu_param", 131, "PReLUParameter", "optional", None),
        ("relu_param", 123, "ReLUParameter", "optional", None),
        ("reshape_param", 133, "ReshapeParameter", "optional", None),
        ("scale_param", 142, "ScaleParameter", "optional", None),
        ("softmax_param", 125, "SoftmaxParameter", "optional", None),
        ("slice_param", 126, "SliceParameter", "optional", None),
        ("permute_param", 202, "PermuteParameter", "optional", None),  # SSD fork
    ],
    "V1LayerParameter": [  # enough to recognise the format and to take weights from it by name
        ("bottom", 2, "string", "repeated", None), ("top", 3, "string", "repeated", None),
        ("name", 4, "string", "optional", None), ("type", 5, "int32", "optional", None),
        ("blobs", 6, "BlobProto", "repeated", None),
    ],
    "BatchNormParameter": [
        ("use_global_stats", 1, "bool", "optional", None),
        ("moving_average_fraction", 2, "float", "optional", 0.999),
        ("eps", 3, "float", "optional", 1e-5),
    ],
    "ClipParameter": [("min", 1, "float", "optional", None), ("max", 2, "float", "optional", None)],
    "ConcatParameter": [("axis", 2, "int32", "optional", 1), ("concat_dim", 1, "uint32", "optional", 1)],
    "ConvolutionParameter": [
        ("num_output", 1, "uint32", "optional", None), ("bias_term", 2, "bool", "optional", True),
        ("pad", 3, "uint32", "repeated", None), ("kernel_size", 4, "uint32", "repeated", None),
        ("stride", 6, "uint32", "repeated", None), ("dilation", 18, "uint32", "repeated", None),
        ("pad_h", 9, "uint32", "optional", 0), ("pad_w", 10, "uint32", "optional", 0),
        ("kernel_h", 11, "uint32", "optional", None), ("kernel_w", 12, "uint32", "optional", None),
        ("stride_h", 13, "uint32", "optional", None), ("stride_w", 14, "uint32", "optional", None),
        ("group", 5, "uint32", "optional", 1), ("axis", 16, "int32", "optional", 1),
        ("force_nd_im2col", 17, "bool", "optional", False),
    ],
    "DropoutParameter": [("dropout_ratio", 1, "float", "optional", 0.5)],
    "EltwiseParameter": [
        ("operation", 1, "EltwiseParameter.EltwiseOp", "optional", "SUM"),
        ("coeff", 2, "float", "repeated", None),
        ("stable_prod_grad", 3, "bool", "optional", True),
    ],
    "FlattenParameter": [("axis", 1, "int32", "optional", 1), ("end_axis", 2, "int32", "optional", -1)],
    "InnerProductParameter": [
        ("num_output", 1, "uint32", "optional", None), ("bias_term", 2, "bool", "optional", True),
        ("axis", 5, "int32", "optional", 1), ("transpose", 6, "bool", "optional", False),
    ],
    "InputParameter": [("shape", 1, "BlobShape", "repeated", None)],
    "PoolingParameter": [
        ("pool", 1, "PoolingParameter.PoolMethod", "optional", "MAX"),
        ("pad", 4, "uint32", "optional", 0), ("pad_h", 9, "uint32", "optional", 0),
        ("pad_w", 10, "uint32", "optional", 0),
        ("kernel_size", 2, "uint32", "optional", None), ("kernel_h", 5, "uint32", "optional", None),
        ("kernel_w", 6, "uint32", "optional", None),
        ("stride", 3, "uint32", "optional", 1), ("stride_h", 7, "uint32", "optional", None),
        ("stride_w", 8, "uint32", "optional", None),
        ("global_pooling", 12, "bool", "optional", False),
        ("round_mode", 13, "PoolingParameter.RoundMode", "optional", "CEIL"),
        ("ceil_mode", 1013, "bool", "optional", True),
    ],
    "PReLUParameter": [("channel_shared", 2, "bool", "optional", False)],
    "ReLUParameter": [("negative_slope", 1, "float", "optional", 0.0)],
    "ReshapeParameter": [
        ("shape", 1, "BlobShape", "optional", None), ("axis", 2, "int32", "optional", 0),
        ("num_axes", 3, "int32", "optional", -1),
    ],
    "ScaleParameter": [
        ("axis", 1, "int32", "optional", 1), ("num_axes", 2, "int32", "optional", 1),
        ("bias_term", 4, "bool", "optional", False),
    ],
    "SoftmaxParameter": [("axis", 2, "int32", "optional", 1)],
    "SliceParameter": [
        ("axis", 3, "int32", "optional", 1), ("slice_point", 2, "uint32", "repeated", None),
        ("slice_dim", 1, "uint32", "optional", 1),
    ],
    "PermuteParameter": [("order", 1, "uint32", "repeated", None)],
}


def _default_text(value: Any) -> str:
    """A default in descriptor syntax: 'true', '1e-05', 'SUM'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="kcc_caffe_subset.proto", package=_PACKAGE, syntax="proto2")
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in _MESSAGES:
        messages[name] = fdp.message_type.add(name=name)
    for full, values in _ENUMS.items():
        owner, _, enum_name = full.rpartition(".")
        enum = (messages[owner].enum_type if owner else fdp.enum_type).add(name=enum_name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for name, fields in _MESSAGES.items():
        for field_name, number, type_name, label, default in fields:
            f = messages[name].field.add(name=field_name, number=number)
            f.label = _F.LABEL_REPEATED if label in ("repeated", "packed") else _F.LABEL_OPTIONAL
            if label == "packed":
                f.options.packed = True
            if type_name in _SCALARS:
                f.type = _SCALARS[type_name]
            elif type_name in _ENUMS:
                f.type, f.type_name = _F.TYPE_ENUM, f".{_PACKAGE}.{type_name}"
            else:
                f.type, f.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{type_name}"
            if default is not None:
                f.default_value = _default_text(default)
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def message_class(name: str) -> type:
    """The message class of one of the schema's messages, e.g. message_class('LayerParameter')."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


NetParameter = message_class("NetParameter")
LayerParameter = message_class("LayerParameter")
BlobProto = message_class("BlobProto")

#: enum values the importer compares against (caffe.proto numbers)
PHASE_TEST = 1
ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX = 0, 1, 2
POOL_MAX, POOL_AVE, POOL_STOCHASTIC = 0, 1, 2
ROUND_CEIL, ROUND_FLOOR = 0, 1
