"""Make `tests/tflite_builder.py` importable from the frontend tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
