"""read_caffe(): a .caffemodel (binary NetParameter), with or without its .prototxt, -> `CaffeNet`.

A .caffemodel holds the whole net: every layer's definition and its blobs (weights), which is how ncc
reads it (`-i caffe` takes the .caffemodel alone). A .prototxt holds the definitions only; given one
(`prototxt=`, or the file with the same stem beside the .caffemodel), the layers come from it and each
layer's blobs from the .caffemodel's layer of the same name (Caffe's Net::CopyTrainedLayersFrom rule),
so a deploy definition can be paired with weights saved from the training net.

Layers are kept when they belong to the TEST phase (caffe.proto NetStateRule, Net::StateMeetsRule),
as Caffe builds a deploy net. The V1 format (`layers`, 2014) is refused with the upgrade command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import text_format

from kcc.errors import ModelFormatError, UnsupportedModelError
from kcc.frontend.caffe import schema as S

_V1_TEXT = re.compile(r"^\s*layers\s*\{", re.MULTILINE)
_V1_HINT = ("upgrade it with Caffe's own tools: upgrade_net_proto_binary OLD.caffemodel NEW.caffemodel "
            "(and upgrade_net_proto_text OLD.prototxt NEW.prototxt)")


@dataclass
class CaffeNet:
    """What the importer needs: the TEST-phase layers in file order, their blobs, the old-style inputs."""

    name: str  # the file name used in messages
    layers: list  # LayerParameter messages
    #: layer name -> its blobs as float32 arrays, each in its stored shape
    blobs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    #: net-level inputs of files written before the Input layer: (blob name, shape)
    inputs: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    prototxt: str | None = None  # the definition file's name, when the layers came from one


def read_caffe(source, name: str | None = None, prototxt: str | Path | None = None) -> CaffeNet:
    """Parse a .caffemodel (path or bytes), or a .prototxt whose .caffemodel lies beside it.

    `prototxt`: the network definition; None = the .prototxt with the same stem beside a .caffemodel
    path, if there is one, else the .caffemodel's own layer definitions."""
    data, label = _read(source, name)
    if _looks_like_text(data):  # given the definition: the weights are in the .caffemodel beside it
        if prototxt is not None or not isinstance(source, (str, Path)):
            raise ModelFormatError(f"{label}: a Caffe network definition (.prototxt) holds no weights",
                                   hint="give the .caffemodel as the model and this file as --prototxt")
        weights_path = Path(source).with_suffix(".caffemodel")
        if not weights_path.is_file():
            raise ModelFormatError(f"{label}: a Caffe network definition (.prototxt) holds no weights and "
                                   f"there is no {weights_path.name} beside it",
                                   hint="give the .caffemodel as the model and this file as --prototxt")
        prototxt, data, label = source, weights_path.read_bytes(), weights_path.name
    weights = _parse_binary(data, label)
    if prototxt is None and isinstance(source, (str, Path)):
        beside = Path(source).with_suffix(".prototxt")
        prototxt = beside if beside.is_file() else None
    if prototxt is None:
        definition, def_name = weights, None
    else:
        definition, def_name = _parse_text(Path(prototxt)), Path(prototxt).name
    if len(definition.layers) and not len(definition.layer):
        where = def_name or label
        raise UnsupportedModelError(f"{where}: a V1 Caffe model (the `layers` format of 2014); kcc reads the "
                                    f"current `layer` format", hint=_V1_HINT)
    net = CaffeNet(name=label, layers=[lay for lay in definition.layer if _in_test_phase(definition, lay)],
                   prototxt=def_name)
    net.inputs = _net_inputs(definition, def_name or label)
    stored = {lay.name: lay.blobs for lay in weights.layer}
    stored.update({lay.name: lay.blobs for lay in weights.layers if lay.name not in stored})  # V1 weights
    for lay in net.layers:
        blobs = lay.blobs if len(lay.blobs) else stored.get(lay.name, ())
        net.blobs[lay.name] = [_blob_array(b, label, lay.name, i) for i, b in enumerate(blobs)]
    return net


def _read(source, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<caffemodel bytes>"
    path = Path(source)
    try:
        return path.read_bytes(), name or path.name
    except OSError as e:
        raise ModelFormatError(f"{name or path}: cannot read the model file ({e.strerror or e})") from None


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(re.search(r"^\s*(name\s*:|layers?\s*\{|input\w*\s*[:{]|#)", text, re.MULTILINE))


def _parse_binary(data: bytes, label: str):
    net = S.NetParameter()
    try:
        net.ParseFromString(data)
    except pb_message.DecodeError as e:
        raise ModelFormatError(f"{label}: not a Caffe model (binary NetParameter): {e}") from None
    if not len(net.layer) and not len(net.layers):
        raise ModelFormatError(f"{label}: a Caffe model must hold layers; this NetParameter has none")
    return net  # a V1 file still serves weights to a current .prototxt (read_caffe refuses V1 definitions)


def _parse_text(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read the Caffe network definition ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ModelFormatError(f"{path}: not a Caffe network definition (a .prototxt is UTF-8 text)") from None
    if _V1_TEXT.search(text):
        raise UnsupportedModelError(f"{path.name}: a V1 Caffe network definition (the `layers` format of "
                                    f"2014); kcc reads the current `layer` format", hint=_V1_HINT)
    net = S.NetParameter()
    try:
        # Fields outside kcc's subset of caffe.proto (fillers, lr_mult, engine...) do not change
        # inference and are skipped; kcc.frontend.caffe.schema declares every field it reads.
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as e:
        raise ModelFormatError(f"{path.name}: not a Caffe network definition (text NetParameter): "
                               f"{' '.join(str(e).split())}") from None
    return net


def _rule_met(state, rule) -> bool:
    """caffe Net::StateMeetsRule: every condition the rule states holds for `state`."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def _in_test_phase(net, layer) -> bool:
    """caffe Net::FilterNet for a deploy (TEST) net: a layer with include rules needs one met, a
    layer without them must meet no exclude rule; a layer's own `phase` must be TEST if set."""
    state = S.message_class("NetState")()
    state.CopyFrom(net.state)
    state.phase = S.PHASE_TEST
    if layer.HasField("phase") and layer.phase != S.PHASE_TEST:
        return False
    if len(layer.include):
        return any(_rule_met(state, r) for r in layer.include)
    return not any(_rule_met(state, r) for r in layer.exclude)


def _net_inputs(net, label: str) -> list[tuple[str, tuple[int, ...]]]:
    """`input:` names with `input_shape { dim... }` each, or four `input_dim:` values each."""
    names = list(net.input)
    if not names:
        return []
    if len(net.input_shape) == len(names):
        shapes = [tuple(int(d) for d in s.dim) for s in net.input_shape]
    elif len(net.input_dim) == 4 * len(names):
        dims = [int(d) for d in net.input_dim]
        shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
    else:
        raise ModelFormatError(f"{label}: {len(names)} net input(s) {names} need one input_shape or four "
                               f"input_dim values each (found {len(net.input_shape)} input_shape, "
                               f"{len(net.input_dim)} input_dim)")
    return list(zip(names, shapes))


def _blob_array(blob, label: str, layer: str, index: int) -> np.ndarray:
    """A BlobProto's values (float, or double_data) in its shape (BlobShape, or the legacy 4-D one)."""
    values = np.asarray(blob.data, np.float32) if len(blob.data) else np.asarray(blob.double_data, np.float32)
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
        # legacy blobs store 1s for unused leading axes, and 0 where nothing was set at all
        if 0 in shape:
            shape = (values.size,)
    if int(np.prod(shape, dtype=np.int64)) != values.size:
        raise ModelFormatError(f"{label}: layer '{layer}' blob {index} holds {values.size} values for shape "
                               f"{list(shape)}")
    return values.reshape(shape)
