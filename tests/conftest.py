import os
import sys
from pathlib import Path

import pytest

# Helper modules shared by tests and bench/ scripts (refkit: the reference kit; tflite_builder: tiny
# .tflite models) live in tests/support. Only that folder goes on sys.path: tests/ itself holds
# folders named like the packages (tests/kpu_sim, tests/kmodel) that would shadow them.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
# bench/'s measurement modules that tests check (conv_coverage), after everything installed
sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))

import refkit  # noqa: E402


class KitReadError(RuntimeError):
    """Not an OSError, so that no `except OSError` (pathlib's glob has one) can swallow it."""


# Policy: the default suite reads only files in the repo; a test that reads the full kit
# (../shared/reference) is marked both `kit` and `slow`. The guard below enforces the first half while a
# test without the `kit` marker runs (setup, call, teardown), even on a machine that has the kit.
_KIT_ROOTS = tuple({os.path.abspath(refkit.REFERENCE),
                    os.path.abspath(refkit.ROOT / ".." / "shared" / "reference")})
_guarded: list[str] = []  # the node id of the running test without the `kit` marker, if any


def _audit(event: str, args: tuple) -> None:
    if not _guarded or event not in ("open", "os.listdir", "os.scandir") or not args:
        return
    path = args[0]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return  # a file descriptor
    path = os.path.abspath(os.fsdecode(path))
    if any(path == root or path.startswith(root + os.sep) for root in _KIT_ROOTS):
        raise KitReadError(f"{_guarded[0]} reads {path} from the full reference kit: ship what it needs in "
                           f"tests/reference (see its README) or mark the test slow and kit")


sys.addaudithook(_audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    kit = item.get_closest_marker("kit") is not None
    if not kit:
        _guarded.append(item.nodeid)
    try:
        yield
    finally:
        _guarded.clear()


def pytest_collection_modifyitems(config, items):
    # The other half of the policy: `-m 'not slow'` (the default) must never select a kit test.
    unslow = [item.nodeid for item in items
              if item.get_closest_marker("kit") and not item.get_closest_marker("slow")]
    if unslow:
        raise pytest.UsageError("tests marked kit must also be marked slow: " + ", ".join(unslow))


def pytest_runtest_setup(item):
    # A test marked `kit` reads the full reference kit (../shared/reference): missing in CI = error.
    if item.get_closest_marker("kit") is not None:
        refkit.require_kit()
