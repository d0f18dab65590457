"""TFLite frontend: `import_tflite(path_or_bytes) -> Graph`; `import_model` also returns a quantized
model's own grids (see kcc.frontend.tflite.importer)."""

from kcc.frontend.tflite.importer import (
    SUPPORTED_OPS,
    import_model,
    import_tflite,
    is_prequantized,
    scan_model,
)

__all__ = ["import_tflite", "import_model", "is_prequantized", "scan_model", "SUPPORTED_OPS"]
