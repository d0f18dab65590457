"""TFLite frontend: `import_tflite(path_or_bytes) -> Graph` (see kcc.frontend.importer)."""

from kcc.frontend.importer import SUPPORTED_OPS, import_tflite, scan_model

__all__ = ["import_tflite", "scan_model", "SUPPORTED_OPS"]
