"""The frontends: one package per model format behind one table, `FRONTENDS`, keyed by ncc's `-i`.

Every frontend lowers its format into the same IR (kcc.ir, NCHW) and returns an `ImportedModel`;
nothing after the import knows which format a graph came from. A frontend module exposes
`import_model(source, name=None, **options) -> ImportedModel`, `is_prequantized(source) -> bool`
and `SUPPORTED_OPS`. Modules load on first use, so an optional dependency (the `onnx` package) is
only needed by the format that reads it.

`import_model(source, input_format=None)` picks the frontend from `input_format`, or from the
file's content when it is None (kcc.frontend.detect).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kcc.errors import KccError
from kcc.frontend.detect import model_format

if TYPE_CHECKING:  # the CLI reads FRONTENDS without loading numpy (tests/cli/test_interrupt.py)
    from kcc.frontend.imported import ImportedModel


@dataclass(frozen=True)
class Frontend:
    name: str  # the `-i` value
    title: str  # the format's name in messages
    module: str  # the package implementing it
    suffixes: tuple[str, ...]  # file extensions of the format
    extra: str | None = None  # the pip extra that installs its dependency, when it has one

    def load(self) -> ModuleType:
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            if self.extra is None or (e.name or "").startswith("kcc"):
                raise
            raise KccError(f"reading {self.title} models needs the '{e.name}' package, which is not installed",
                           hint=f"pip install 'kcc[{self.extra}]'") from None


FRONTENDS: dict[str, Frontend] = {
    "tflite": Frontend("tflite", "TFLite", "kcc.frontend.tflite", (".tflite",)),
    "onnx": Frontend("onnx", "ONNX", "kcc.frontend.onnx", (".onnx",), extra="onnx"),
    "caffe": Frontend("caffe", "Caffe", "kcc.frontend.caffe", (".caffemodel",)),
}


def load_frontend(input_format: str) -> ModuleType:
    if input_format not in FRONTENDS:
        raise KccError(f"input format '{input_format}' is not supported; kcc reads {', '.join(FRONTENDS)}")
    return FRONTENDS[input_format].load()


def _read(source: str | Path | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    return Path(source).read_bytes(), str(source)


def detect_format(source: str | Path | bytes | bytearray | memoryview) -> str | None:
    """The `-i` name of the frontend that reads this file, from its content; None if none does."""
    data, name = _read(source)
    kind = model_format(data, name)
    return kind if kind in FRONTENDS else None


def frontend_for(source: str | Path | bytes | bytearray | memoryview, input_format: str | None = None) -> ModuleType:
    """The frontend module for `source`: `input_format`'s, or the one its content names. A file no
    frontend reads goes to the TFLite reader, whose error says what the file is."""
    if input_format is None:
        input_format = detect_format(source) or "tflite"
    return load_frontend(input_format)


def import_model(source: str | Path | bytes | bytearray | memoryview, name: str | None = None,
                 input_format: str | None = None, **options: Any) -> ImportedModel:
    """Import a model file (path or bytes) into the IR with the frontend of its format."""
    return frontend_for(source, input_format).import_model(source, name, **options)


def is_prequantized(source: str | Path | bytes, input_format: str | None = None) -> bool:
    """Whether the model states its own activation grids (then it needs no calibration dataset)."""
    return frontend_for(source, input_format).is_prequantized(source)


def import_tflite(source: str | Path | bytes | bytearray | memoryview, name: str | None = None):
    """The TFLite frontend's graph alone (kept for tests and scripts)."""
    return load_frontend("tflite").import_tflite(source, name)


__all__ = ["FRONTENDS", "Frontend", "detect_format", "frontend_for", "import_model",
           "import_tflite", "is_prequantized", "load_frontend"]
