"""Every exception kcc raises on purpose.

A `KccError` is a user-facing problem: the CLI prints it as one `error: ...` line and exits non-zero.
Anything else escaping the library is an internal bug and keeps its traceback (under `--debug`).
This module imports nothing from kcc so that every package, `kcc.kmodel` and `kpu_sim` included, can use it.
"""

from __future__ import annotations


class KccError(Exception):
    """A problem the user can act on. `str(err)` is a single line naming the file, op or tensor."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{text} (hint: {self.hint})" if self.hint else text


class ModelFormatError(KccError):
    """The input model file cannot be read (not a tflite flatbuffer, truncated, empty)."""


class UnsupportedModelError(KccError):
    """The model is readable but uses ops, types or shapes kcc cannot compile."""


class KmodelError(KccError):
    """A kmodel file is malformed, truncated, or of an unsupported version."""


class DatasetError(KccError):
    """A calibration or inference dataset is missing, empty, or of the wrong size/format."""


class VerifyError(KccError):
    """The IR verifier found an inconsistent graph; this is a compiler bug and names the node."""


class ModelTooLargeError(KccError):
    """The kmodel plus its working memory need more RAM than any K210 has; the message names the
    largest items (kcc.report.summary.too_large)."""


class SimulatorError(KccError):
    """kpu_sim cannot execute a node (bad datatype, unknown op value at run time)."""


class ForeignModelError(ModelFormatError):
    """The input is another framework's model (ONNX, Caffe, Keras, PyTorch, TensorFlow) or an already
    compiled kmodel; the message names the format and how to get a .tflite (kcc.frontend.tflite.reader)."""

    def __init__(self, message: str, *, model_format: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.model_format = model_format
