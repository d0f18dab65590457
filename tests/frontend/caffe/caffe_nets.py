"""Small Caffe models built in-process with kcc's own schema (kcc.frontend.caffe.schema), written as a
binary .caffemodel (definitions and blobs, as Caffe saves them) and a .prototxt (definitions only),
and run by OpenCV's Caffe importer (cv2.dnn.readNetFromCaffe), the float oracle of these tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from kcc.frontend.caffe import schema as S

RNG = np.random.default_rng(17)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


class Net:
    """A NetParameter under construction: `input`, then `add` layers in execution order."""

    def __init__(self, name: str = "net"):
        self.msg = S.NetParameter(name=name)
        self.inputs: list[tuple[str, tuple[int, ...]]] = []

    def input(self, name: str, shape: tuple[int, ...]) -> Net:
        lay = self.msg.layer.add(name=name, type="Input", top=[name])
        lay.input_param.shape.add(dim=list(shape))
        self.inputs.append((name, tuple(shape)))
        return self

    def add(self, type_: str, name: str, bottom, top=None, blobs=(), **params) -> Net:
        """`params`: e.g. convolution_param={"num_output": 8, "kernel_size": [3]}."""
        bottom = [bottom] if isinstance(bottom, str) else list(bottom)
        top = [name] if top is None else ([top] if isinstance(top, str) else list(top))
        lay = self.msg.layer.add(name=name, type=type_, bottom=bottom, top=top, **params)
        for b in blobs:
            b = np.asarray(b, np.float32)
            lay.blobs.add(shape={"dim": list(b.shape)}, data=b.ravel().tolist())
        return self

    def caffemodel(self) -> bytes:
        return self.msg.SerializeToString()

    def prototxt(self) -> str:
        """The definitions without the blobs (a deploy .prototxt)."""
        definition = S.NetParameter()
        definition.CopyFrom(self.msg)
        for lay in definition.layer:
            del lay.blobs[:]
        return text_format.MessageToString(definition)

    def write(self, folder: Path, stem: str = "net") -> tuple[Path, Path]:
        model, proto = folder / f"{stem}.caffemodel", folder / f"{stem}.prototxt"
        model.write_bytes(self.caffemodel())
        proto.write_text(self.prototxt())
        return model, proto

    def opencv(self, folder: Path, feeds: list[np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """The model run by OpenCV's dnn module (its own Caffe reader and float kernels)."""
        import cv2

        model, proto = self.write(folder, "opencv")
        net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        for (name, _), x in zip(self.inputs, feeds):
            net.setInput(x, name)
        return [np.asarray(o, np.float32) for o in net.forward(outputs)]
