"""The `onnx` package's own node test cases (onnx/backend/test/case/node) for every op kcc imports.

Each case is a one-op model (or its function expansion) with inputs and the expected outputs of the ONNX
reference implementation, built in memory by the package. Only the modules of the ops kcc supports are
loaded (loading all 1900 cases takes ~10 s). Adaptation, the only one: kcc compiles static models, so an
input that is not a float image (shapes, axes, pads, scales: integer inputs), and, when the op needs
them constant, every input after the first (conv weights, PRelu slopes, Clip bounds), become initializers
holding the case's own values; the first input stays a run-time input.

Outcome per case: pass (kcc's float interpreter matches the expected outputs within the case's own
rtol / atol, the bar of onnx's backend test runner), skip (kcc refuses the model with an
UnsupportedModelError, shown as the skip reason: an attribute or form the IR cannot honour, a non-float
type), or fail. The default suite runs the first data set of every case; the slow suite all data sets.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kcc.errors import UnsupportedModelError
from kcc.eval.interpreter import run
from kcc.frontend.onnx import SUPPORTED_OPS, import_onnx

_MODULES = {"BatchNormalization": "batch_normalization"}  # op -> module of onnx.backend.test.case.node
# Building these modules' cases takes 3.3 s (3-D pools with large references): slow suite only; the
# default suite checks the pools against onnxruntime (test_ops_spatial.py).
HEAVY = {"averagepool", "maxpool"}
DEFAULT_SHARE = 3  # the default suite runs every third case of the light modules (~1 s)
# measured with onnx 1.23 (slow suite, all modules, every data set): 317 of 598 cases pass, the others are skips whose
# reasons -rs lists (3-D pools, cubic resize, float8 casts, training-mode ops...)
MIN_PASSING = 317


def _package():
    import onnx.backend.test.case.node as package

    return package


def module_names() -> list[str]:
    """The node-case modules of the supported ops (names only: nothing is imported)."""
    wanted = {_MODULES.get(op, op.lower()) for op in SUPPORTED_OPS}
    return sorted(info.name for info in pkgutil.iter_modules(_package().__path__) if info.name.rstrip("_") in wanted)


@functools.lru_cache(maxsize=None)
def cases_of(module: str) -> dict[str, object]:
    """name -> onnx TestCase of one module (its export functions run on import and register them)."""
    package = _package()
    before = len(package._NodeTestCases)
    with np.errstate(all="ignore"):
        importlib.import_module(f"{package.__name__}.{module}")
    return {c.name: c for c in package._NodeTestCases[before:] if c.kind == "node"}


def node_cases() -> dict[str, object]:
    return {name: c for m in module_names() if m not in HEAVY for name, c in cases_of(m).items()}


def _freeze(m: onnx.ModelProto, feeds: list[np.ndarray], keep: set[int]) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """Inputs not in `keep` become initializers holding the case's values."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    g = m2.graph
    kept_inputs, kept_feeds = [], []
    for k, (vi, x) in enumerate(zip(list(g.input), feeds)):
        if k in keep:
            kept_inputs.append(vi)
            kept_feeds.append(x)
        else:
            g.initializer.append(numpy_helper.from_array(np.asarray(x), vi.name))
    del g.input[:]
    g.input.extend(kept_inputs)
    return m2, kept_feeds


def _is_float(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float16, np.float64)


def import_case(case, feeds: list):
    """(graph, run-time feeds): float inputs stay inputs if the op accepts them at run time."""
    floats = {k for k, x in enumerate(feeds) if _is_float(x)}
    attempts = [floats, set(sorted(floats)[:1])]
    for keep in attempts:
        m, kept = _freeze(case.model, feeds, keep)
        try:
            return import_onnx(m.SerializeToString(), case.name), kept
        except UnsupportedModelError as e:
            if "computed at run time" not in str(e) or keep == attempts[-1]:
                raise
    raise AssertionError("unreachable")


# Cases where onnxruntime (the float oracle) and the reference implementation disagree; kcc is
# checked against onnxruntime on them.
ORT_NOT_REFERENCE = {
    # align_corners with scales: the reference divides by the unfloored length in * scale (2.4), onnxruntime
    # by the output size (floor(2.4) = 2), as the spec's output_dimension = floor(in * scale) reads
    "test_resize_downsample_scales_linear_align_corners",
}


def _numeric(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype.kind in "fiub"


def check_case(case, all_data_sets: bool) -> None:
    name = case.name
    sets = case.data_sets if all_data_sets else case.data_sets[:1]
    for inputs, expected in sets:
        if not all(_numeric(x) for x in (*inputs, *expected)):
            pytest.skip("inputs or outputs of a type numpy cannot hold (float8, int4, ...): not a kcc model")
        try:
            graph, feeds = import_case(case, list(inputs))
        except UnsupportedModelError as e:
            pytest.skip(e.one_line())
        if name in ORT_NOT_REFERENCE:
            from onnx_builder import run_ort

            expected = run_ort(case.model.SerializeToString(), list(inputs))
        with np.errstate(all="ignore"):
            got = run(graph, [np.asarray(x, np.float32) for x in feeds])
        assert len(got) == len(expected)
        for k, (g, want) in enumerate(zip(got, expected)):
            want = np.asarray(want)
            assert g.shape == want.shape, f"{name} output {k}: shape {g.shape} vs {want.shape}"
            np.testing.assert_allclose(g, want.astype(np.float32), rtol=case.rtol, atol=max(case.atol, 1e-6),
                                       err_msg=f"{name} output {k}")


def _default_names() -> list[str]:
    return sorted(node_cases())[::DEFAULT_SHARE]


@pytest.mark.parametrize("name", _default_names())
def test_onnx_node_case(name):
    check_case(node_cases()[name], all_data_sets=False)


def _outcomes(module: str) -> tuple[list[str], list[str]]:
    """(passed, skipped with reason) over every case and data set of a module; failures raise."""
    passed, skipped = [], []
    for name, case in sorted(cases_of(module).items()):
        try:
            check_case(case, all_data_sets=True)
        except pytest.skip.Exception as e:
            skipped.append(f"{name}: {e.msg}")
            continue
        passed.append(name)
    return passed, skipped


@pytest.mark.slow
@pytest.mark.parametrize("module", module_names())
def test_onnx_node_cases_of_module(module):
    passed, skipped = _outcomes(module)
    assert passed or skipped


@pytest.mark.slow
def test_enough_node_cases_pass():
    """The count of the closing note, and a regression guard on it."""
    passed = sum(len(_outcomes(m)[0]) for m in module_names())
    assert passed >= MIN_PASSING, passed
