"""compile --inference-type float, then kpu_sim, against TFLite's float outputs on the real models.

Acceptance bar of the Foundation issue: cosine >= 0.99999 and max abs error <= 1e-4 * max|ref| for
every output of every sample. The default suite runs the models that ship in tests/reference; the slow
one every model of the full kit on all its samples.
"""

from pathlib import Path

import pytest
import refkit

import kpu_sim
from kcc import kmodel
from kcc.options import CompileOptions
from kcc.pipeline import compile_model

FAST = ["digits_cnn16_gray", "digits_ae16_gray", "digits_mbnet32_rgb", "iris_fc", "mobilenet_v1_0.25_128"]
SLOW = ["mobilenet_v1_0.5_160", "mobilenet_v1_0.75_192", "ulffd_landmark_320x240", "iris_landmark_64",
        "palm_detection_lite_192", "hand_landmark_lite_224", "hand_recrop_256", "deeplabv3_mnv2_257"]


def _check_model(name: str, limit: int | None, models: Path) -> None:
    result = compile_model(refkit.tflite_path(name, models), CompileOptions(inference_type="float"))
    model = kmodel.read(result.kmodel)  # the file we wrote is valid kmodel v4
    assert model.main_mem == result.emitted.model.main_mem
    program = kpu_sim.load(result.kmodel)
    samples = refkit.samples(name, limit=limit, models=models)
    assert samples
    for s in samples:
        outs = program.run([s.x])
        assert len(outs) == len(s.refs)
        for k, (got, ref) in enumerate(zip(outs, s.refs)):
            cos, err = refkit.compare(got, ref)
            assert cos >= 0.99999 and err <= 1e-4, f"{name}/{s.name} output {k}: cos {cos:.7f}, rel err {err:.2e}"


@pytest.mark.parametrize("name", FAST)
def test_float_model_matches_tflite(name):
    _check_model(name, limit=3, models=refkit.SHIPPED_MODELS)


@pytest.mark.slow
@pytest.mark.kit
@pytest.mark.parametrize("name", SLOW + FAST)
def test_float_model_matches_tflite_all_samples(name):
    _check_model(name, limit=None, models=refkit.MODELS)


def test_every_unary_op_lowers_and_runs_on_the_simulator():
    """Each IR unary op (native unary or an nnil program) gives the evaluator's result in kpu_sim."""
    import numpy as np

    from kcc.emit import emit
    from kcc.eval.interpreter import run
    from kcc.ir import ops as O
    from kcc.ir.graph import Graph

    x = np.linspace(-6, 6, 4 * 61, dtype=np.float32).reshape(1, 4, 61)
    x[0, 0, :8] = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 1e5 + 0.5, -3e6]  # rounding ties, large values
    for name in O.UNARY_OPS:
        g = Graph()
        inp = g.input(0, x.shape)
        g.outputs = [g.add(O.Unary(name), (inp,), name)]
        want = run(g, [x])[0]
        got = kpu_sim.load(kmodel.write(emit(g).model)).run([x])[0].reshape(x.shape)
        finite = np.isfinite(want)
        assert np.array_equal(np.isfinite(got), finite), name
        np.testing.assert_allclose(got[finite], want[finite], rtol=2e-6, atol=2e-6, err_msg=name)
