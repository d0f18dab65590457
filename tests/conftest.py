import sys
from pathlib import Path

# Helper modules shared by tests and bench/ scripts (refkit: the reference kit; tflite_builder: tiny
# .tflite models) live in tests/support. Only that folder goes on sys.path: tests/ itself holds
# folders named like the packages (tests/kpu_sim, tests/kmodel) that would shadow them.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
