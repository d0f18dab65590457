"""Fuzz: mutated real kmodels never escape with anything but KmodelError / SimulatorError, and never hang.

Mutations of three real files shipped in tests/reference (the uint8 and float iris models and the
alpha build of the 20-class yolo KPU model; the final yolo build of the full kit in a slow + kit
test), with a fixed seed: truncation at every section boundary, random byte changes, u32 fields of the
header / descriptors / node headers / body heads set to edge values, memory ranges made oversized,
and bit flips in kpu_conv2d layer registers. Each variant is loaded and, if that succeeds, run on a
fixed input under a per-variant time limit.
"""

from __future__ import annotations

import signal
import struct
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import refkit

import kpu_sim
from kcc.errors import KmodelError, SimulatorError

FILES = {  # file in tests/reference -> number of random mutations
    "ncc-outputs/kmodels/iris_u8_no_clip_ff.kmodel": 110,
    "nncase-examples/iris.kmodel": 60,
    "nncase-examples/kfpkg/yolo.kmodel": 40,
}
KIT_FILES = {"nncase-examples/yolo.kmodel": 40}  # only in the full kit
EDGE_VALUES = [0, 1, 3, 255, 256, 0x7FFF, 1 << 20, 1 << 24, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
TIME_LIMIT = 5.0  # seconds per variant; the real models run in well under one


class _Hang(Exception):
    pass


def _layout(data: bytes) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    """(section boundaries, [(body offset, opcode)], memory-range descriptor offsets), from the
    header counts (kmodel_v4.md §2)."""
    n_const, _, n_nodes, n_in, n_out = struct.unpack_from("<5I", data, 16)
    descriptors = [40 + 16 * i for i in range(n_in)] + [40 + 32 * n_in + 16 * i for i in range(n_out)]
    bounds = [0, 4, 8, 40, 40 + 16 * n_in, 40 + 32 * n_in, 40 + 32 * n_in + 16 * n_out]
    headers = bounds[-1] + n_const
    pos = headers + 8 * n_nodes
    bounds += [headers, pos]
    bodies = []
    for i in range(n_nodes):
        opcode, size = struct.unpack_from("<2I", data, headers + 8 * i)
        bodies.append((pos, opcode))
        pos += size
        bounds.append(pos)
    return sorted({b for b in bounds if b < len(data)}), bodies, descriptors


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    x = bytearray(data)
    _bounds, bodies, descriptors = _layout(data)
    kind = int(rng.integers(0, 5))
    if kind == 0:  # random bytes anywhere
        for _ in range(int(rng.integers(1, 5))):
            x[int(rng.integers(0, len(x)))] = int(rng.integers(0, 256))
    elif kind == 1:  # an edge value in a u32 of the header, descriptors, node headers or a body head
        heads = [(0, bodies[0][0] if bodies else 40)] + [(b, b + 120) for b, _ in bodies]
        lo, hi = heads[int(rng.integers(0, len(heads)))]
        at = lo + 4 * int(rng.integers(0, max(1, (min(hi, len(x)) - lo) // 4)))
        x[at : at + 4] = struct.pack("<I", int(rng.choice(EDGE_VALUES)))
    elif kind == 2:  # an oversized or misplaced memory range (start or size of a descriptor / body range)
        ranges = descriptors + [b + 16 * k for b, _ in bodies for k in range(3)]
        at = int(rng.choice(ranges)) + int(rng.choice([8, 12]))
        x[at : at + 4] = struct.pack("<I", int(rng.choice([0x7FFFFFFF, 0xFFFFFFF0, 1 << 21, 1 << 26, 2**31 + 8])))
    elif kind == 3 and any(op == 0x2002 for _, op in bodies):  # bit flips in kpu_conv2d registers
        start = [b for b, op in bodies if op == 0x2002][int(rng.integers(0, sum(op == 0x2002 for _, op in bodies)))]
        at = start + 24 + 8 * int(rng.integers(0, 12))
        word = struct.unpack_from("<Q", x, at)[0] ^ (1 << int(rng.integers(0, 64))) ^ (1 << int(rng.integers(0, 64)))
        x[at : at + 8] = struct.pack("<Q", word)
    else:  # single bit flip in the structured part of the file
        limit = min(len(x), (bodies[0][0] + 512) if bodies else len(x))
        x[int(rng.integers(0, limit))] ^= 1 << int(rng.integers(0, 8))
    return bytes(x)


def _run(data: bytes) -> str:
    program = kpu_sim.load(data)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(i.count).astype(np.float32) if i.dtype == np.float32
              else rng.integers(0, 256, i.count).astype(np.uint8) for i in program.inputs]  # fmt: skip
    program.run(inputs)
    return "ran"


def _outcome(data: bytes) -> tuple[str, str]:
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(_Hang()))
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    try:
        return _run(data), ""
    except KmodelError:
        return "KmodelError", ""
    except SimulatorError:
        return "SimulatorError", ""
    except _Hang:
        return "hang", "exceeded the time limit"
    except Exception:  # noqa: BLE001 - the point of the test
        return "crash", traceback.format_exc(limit=-3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fuzz(paths: dict[Path, int]) -> tuple[Counter[str], list[str]]:
    """Outcome counts over every variant of every file, and a line per crash or hang."""
    rng = np.random.default_rng(2024)
    outcomes: Counter[str] = Counter()
    failures = []
    for path, count in paths.items():
        data = path.read_bytes()
        bounds, _, _ = _layout(data)
        variants = [(f"truncated at {b}", data[:b]) for b in bounds[1:]]
        variants += [(f"mutation {i}", _mutate(data, rng)) for i in range(count)]
        for name, variant in variants:
            outcome, detail = _outcome(variant)
            outcomes[outcome] += 1
            if outcome in ("crash", "hang"):
                failures.append(f"{path.name} {name}: {detail}")
    return outcomes, failures


def test_mutated_kmodels_only_raise_kmodel_or_simulator_errors() -> None:
    started = time.perf_counter()
    outcomes, failures = _fuzz({refkit.SHIPPED / name: count for name, count in FILES.items()})
    total = sum(outcomes.values())
    assert not failures, "\n".join(failures[:5])
    assert total >= 200, outcomes
    assert outcomes["ran"] and outcomes["KmodelError"] and outcomes["SimulatorError"], outcomes
    print(f"{total} variants in {time.perf_counter() - started:.1f} s: {dict(outcomes)}")


@pytest.mark.slow
@pytest.mark.kit
def test_mutated_kit_kmodels_only_raise_kmodel_or_simulator_errors() -> None:
    outcomes, failures = _fuzz({refkit.REFERENCE / name: count for name, count in KIT_FILES.items()})
    assert not failures, "\n".join(failures[:5])
    assert outcomes["ran"] and outcomes["KmodelError"], outcomes
