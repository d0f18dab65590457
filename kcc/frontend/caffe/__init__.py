"""Caffe frontend: `import_model(path_or_bytes, prototxt=None) -> ImportedModel` reads a .caffemodel
alone (as ncc does) or with its .prototxt (kcc.frontend.caffe.importer)."""

from kcc.frontend.caffe.importer import SUPPORTED_OPS, import_caffe, import_model, is_prequantized, scan_net
from kcc.frontend.caffe.ops import IMPORTERS

__all__ = ["IMPORTERS", "SUPPORTED_OPS", "import_caffe", "import_model", "is_prequantized", "scan_net"]
