import sys
from pathlib import Path

# Helper modules shared by tests and bench/ scripts (refkit: the reference kit; tflite_builder: tiny
# .tflite models) live in tests/support. Only that folder goes on sys.path: tests/ itself holds
# folders named like the packages (tests/kpu_sim, tests/kmodel) that would shadow them.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))


def pytest_runtest_setup(item):
    # A test marked `kit` reads the full reference kit (../shared/reference): missing in CI = error.
    if item.get_closest_marker("kit") is not None:
        import refkit

        refkit.require_kit()
