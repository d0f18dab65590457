"""Run the simulator's matmuls on one OpenBLAS thread.

A KPU layer's matmul is small (at most a few MFLOP), and OpenBLAS's thread start-up and
hand-off then costs far more than the arithmetic: on a 2-core machine a (32 x 2304) @ (2304 x 80)
float64 product took 12 ms on the default thread pool and 0.6 ms on one thread. `single_thread()`
limits the OpenBLAS that numpy loaded (found through the process's mapped libraries, as
threadpoolctl does) for the duration of a run and restores the previous count afterwards. If no
OpenBLAS can be found (another BLAS, another OS) it does nothing: results never depend on it,
only the speed does.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np

_SET_NAMES = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
              "openblas_set_num_threads")
_GET_NAMES = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
              "openblas_get_num_threads")
_LOCK = threading.Lock()


def _candidate_libraries() -> list[str]:
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            paths += sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        pass
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    if libs.is_dir():
        paths += [str(p) for p in sorted(libs.glob("*openblas*"))]
    return paths


@cache
def _openblas() -> tuple[object, object] | None:
    for path in _candidate_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _SET_NAMES if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GET_NAMES if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            getter.restype = ctypes.c_int
            return setter, getter
    return None


_active = 0
_previous = 1


@contextmanager
def single_thread() -> Iterator[None]:
    """Limit OpenBLAS to one thread inside the block (no-op without OpenBLAS).

    Re-entrant and thread-safe: the first block to enter saves the thread count, the last one
    to leave restores it.
    """
    global _active, _previous
    funcs = _openblas()
    if funcs is None:
        yield
        return
    setter, getter = funcs
    with _LOCK:
        if _active == 0:
            _previous = getter()
            setter(1)
        _active += 1
    try:
        yield
    finally:
        with _LOCK:
            _active -= 1
            if _active == 0:
                setter(_previous)
