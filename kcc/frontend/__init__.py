"""TFLite frontend: `import_tflite(path_or_bytes) -> Graph`; `import_model` also returns a quantized
model's own grids (see kcc.frontend.importer)."""

from kcc.frontend.importer import SUPPORTED_OPS, ImportedModel, import_model, import_tflite, scan_model

__all__ = ["import_tflite", "import_model", "ImportedModel", "scan_model", "SUPPORTED_OPS"]
