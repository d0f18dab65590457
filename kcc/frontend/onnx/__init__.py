"""ONNX frontend: `import_model(path_or_bytes) -> ImportedModel` (needs the `onnx` package, the
`kcc[onnx]` extra; see kcc.frontend.onnx.importer)."""

from kcc.frontend.onnx.importer import SUPPORTED_OPS, import_model, import_onnx, is_prequantized, scan_model

__all__ = ["import_model", "import_onnx", "is_prequantized", "scan_model", "SUPPORTED_OPS"]
