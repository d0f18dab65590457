"""Reading Caffe files: .caffemodel alone or with its .prototxt (given, or beside it), old-style net
inputs, the TEST phase, V1 files, and every unsupported layer reported at once in one line."""

from __future__ import annotations

import numpy as np
import pytest
from caffe_nets import Net, rand

from kcc.errors import KccError, ModelFormatError, UnsupportedModelError
from kcc.eval.interpreter import run
from kcc.frontend import detect_format, import_model
from kcc.frontend.caffe import SUPPORTED_OPS, import_caffe
from kcc.frontend.caffe import schema as S


def _conv_net(name: str = "net") -> Net:
    n = Net(name).input("data", (1, 3, 6, 6))
    n.add("Convolution", "conv", "data", blobs=[rand(4, 3, 3, 3), rand(4)],
          convolution_param={"num_output": 4, "kernel_size": [3], "pad": [1]})
    return n.add("ReLU", "relu", "conv", "conv")


def _reference(x: np.ndarray, n: Net) -> np.ndarray:
    return run(import_caffe(n.caffemodel()), [x])[0]


def test_content_picks_the_caffe_frontend(tmp_path) -> None:
    model, _ = _conv_net().write(tmp_path)
    assert detect_format(model) == "caffe"
    g = import_model(model).graph
    assert [i.name for i in g.inputs] == ["data"] and g.outputs[0].shape == (1, 4, 6, 6)


def test_training_weights_with_a_deploy_prototxt(tmp_path) -> None:
    """Weights saved from a training net (Data layer, loss, TRAIN-only layers) compile with the deploy
    definition: blobs are matched by layer name."""
    deploy = _conv_net()
    train = Net("train")
    train.msg.layer.add(name="data", type="Data", top=["data", "label"])
    train.msg.layer.extend(deploy.msg.layer[1:])
    train.add("SoftmaxWithLoss", "loss", ["conv", "label"])
    (tmp_path / "train.caffemodel").write_bytes(train.caffemodel())
    (tmp_path / "deploy.prototxt").write_text(deploy.prototxt())
    x = rand(1, 3, 6, 6)
    g = import_caffe(tmp_path / "train.caffemodel", prototxt=tmp_path / "deploy.prototxt")
    np.testing.assert_array_equal(run(g, [x])[0], _reference(x, deploy))
    with pytest.raises(UnsupportedModelError) as e:  # alone, the training net is refused, all at once
        import_caffe(tmp_path / "train.caffemodel")
    line = e.value.one_line()
    assert "2 unsupported layer types: Data x1 (first: 'data'), SoftmaxWithLoss x1 (first: 'loss')" in line
    assert "--prototxt" in line


def test_prototxt_beside_the_caffemodel_is_used(tmp_path) -> None:
    """The definition with the same stem wins over the .caffemodel's own (here: a different slope)."""
    n = _conv_net()
    model = tmp_path / "m.caffemodel"
    model.write_bytes(n.caffemodel())
    leaky = S.NetParameter()
    leaky.CopyFrom(n.msg)
    leaky.layer[2].relu_param.negative_slope = 0.5
    for lay in leaky.layer:
        del lay.blobs[:]
    from google.protobuf import text_format

    (tmp_path / "m.prototxt").write_text(text_format.MessageToString(leaky))
    assert type(import_caffe(model).outputs[0].op).__name__ == "LeakyRelu"
    assert type(import_caffe(n.caffemodel()).outputs[0].op).__name__ == "Clamp"


def test_prototxt_given_as_the_model(tmp_path) -> None:
    n = _conv_net()
    model, proto = n.write(tmp_path)
    x = rand(1, 3, 6, 6)
    np.testing.assert_array_equal(run(import_caffe(proto), [x])[0], _reference(x, n))
    model.unlink()
    with pytest.raises(ModelFormatError, match="holds no weights and there is no net.caffemodel beside it"):
        import_caffe(proto)


def test_old_net_level_inputs(tmp_path) -> None:
    """`input:` + `input_dim:` (4 per input) and `input:` + `input_shape {}` (deploy files before 2016)."""
    n = _conv_net()
    model = tmp_path / "m.caffemodel"
    model.write_bytes(n.caffemodel())
    body = n.prototxt().split("layer {", 2)
    rest = "layer {" + body[2]  # without the Input layer
    x = rand(1, 3, 6, 6)
    for head in ('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 6\ninput_dim: 6\n',
                 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 6 dim: 6 }\n'):
        (tmp_path / "m.prototxt").write_text(head + rest)
        g = import_caffe(model)
        assert [i.shape for i in g.inputs] == [(1, 3, 6, 6)]
        np.testing.assert_array_equal(run(g, [x])[0], _reference(x, n))


def test_phase_rules() -> None:
    n = _conv_net()
    n.add("Dropout", "train_only", "conv", "conv")
    n.msg.layer[-1].include.add(phase=0)  # TRAIN
    n.add("Sigmoid", "not_in_test", "conv", "conv")
    n.msg.layer[-1].exclude.add(phase=1)  # TEST
    n.add("TanH", "test_only", "conv", "conv")
    n.msg.layer[-1].include.add(phase=1)
    kinds = [nd.op.kind for nd in import_caffe(n.caffemodel()).nodes if not nd.is_constant]
    assert kinds == ["input", "conv2d", "clamp", "unary"]


def test_every_unsupported_layer_at_once() -> None:
    n = _conv_net()
    for i in range(3):
        n.add("LRN", f"norm{i}", "conv", "conv")
    n.add("PriorBox", "priors", ["conv", "data"], "priors")
    n.add("Pooling", "stoch", "conv", "stoch", pooling_param={"pool": "STOCHASTIC", "kernel_size": 2})
    with pytest.raises(UnsupportedModelError) as e:
        import_caffe(n.caffemodel(), "det.caffemodel")
    line = e.value.one_line()
    assert line.startswith("det.caffemodel: 3 unsupported layer types: LRN x3 (first: 'norm0'), "
                           "Pooling(STOCHASTIC) x1 (first: 'stoch'), PriorBox x1 (first: 'priors')"), line
    assert "SSD post-processing" in line and "\n" not in line


def test_v1_files_are_refused_with_the_upgrade_command(tmp_path) -> None:
    v1 = S.NetParameter(name="old")
    v1.layers.add(name="conv1", type=4, bottom=["data"], top=["conv1"])  # V1 CONVOLUTION
    with pytest.raises(UnsupportedModelError) as e:
        import_caffe(v1.SerializeToString(), "old.caffemodel")
    assert "V1 Caffe model" in e.value.one_line() and "upgrade_net_proto_binary" in e.value.one_line()
    (tmp_path / "old.prototxt").write_text('name: "old"\nlayers {\n  name: "conv1"\n  type: CONVOLUTION\n}\n')
    model, _ = _conv_net().write(tmp_path)
    with pytest.raises(UnsupportedModelError) as e:
        import_caffe(model, prototxt=tmp_path / "old.prototxt")
    assert "V1 Caffe network definition" in e.value.one_line() and "upgrade_net_proto_text" in e.value.one_line()


def test_v1_weights_serve_a_current_prototxt(tmp_path) -> None:
    """Weights in a V1 .caffemodel are found by layer name for an upgraded .prototxt."""
    n = _conv_net()
    v1 = S.NetParameter(name="old")
    conv = n.msg.layer[1]
    v1.layers.add(name="conv", type=4, bottom=["data"], top=["conv"]).blobs.extend(conv.blobs)
    (tmp_path / "old.caffemodel").write_bytes(v1.SerializeToString())
    (tmp_path / "new.prototxt").write_text(n.prototxt())
    x = rand(1, 3, 6, 6)
    g = import_caffe(tmp_path / "old.caffemodel", prototxt=tmp_path / "new.prototxt")
    np.testing.assert_array_equal(run(g, [x])[0], _reference(x, n))


@pytest.mark.parametrize("mutate, message", [
    (lambda n: n.msg.layer[1].ClearField("blobs"), "Convolution 'conv': has no weights (blob 0)"),
    (lambda n: n.msg.layer[1].blobs[0].ClearField("data"), "layer 'conv' blob 0 holds 0 values for shape [4, 3, 3, 3]"),
    (lambda n: n.msg.layer[2].bottom.__setitem__(0, "nope"), "bottom blob 'nope' is not produced"),
    (lambda n: n.msg.layer[0].input_param.shape[0].ClearField("dim"), "input 'data' has shape []"),
    (lambda n: n.msg.layer.__delitem__(0), "bottom blob 'data' is not produced"),
])
def test_bad_models_say_what_is_wrong(mutate, message) -> None:
    n = _conv_net()
    mutate(n)
    with pytest.raises(KccError) as e:
        import_caffe(n.caffemodel(), "bad.caffemodel")
    assert message in e.value.one_line() and e.value.one_line().startswith("bad.caffemodel: ")


def test_missing_or_binary_prototxt(tmp_path) -> None:
    model, _ = _conv_net().write(tmp_path)
    with pytest.raises(ModelFormatError, match=r"nope.prototxt: cannot read the Caffe network definition \(No such"):
        import_caffe(model, prototxt=tmp_path / "nope.prototxt")
    (tmp_path / "bin.prototxt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelFormatError, match="not a Caffe network definition"):
        import_caffe(model, prototxt=tmp_path / "bin.prototxt")
    (tmp_path / "bad.prototxt").write_text("layer { name: ")
    with pytest.raises(ModelFormatError, match="bad.prototxt: not a Caffe network definition"):
        import_caffe(model, prototxt=tmp_path / "bad.prototxt")


def test_garbage_is_not_a_caffe_model() -> None:
    with pytest.raises(ModelFormatError, match="not a Caffe model"):
        import_caffe(b"\xff\xff\xff\xff garbage", "x.caffemodel")


def test_supported_ops_table() -> None:
    for layer in ("Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "Scale", "ReLU", "PReLU",
                  "Sigmoid", "TanH", "Pooling", "Eltwise", "Concat", "Split", "Slice", "Flatten", "Reshape",
                  "Permute", "Softmax", "Dropout", "Input"):
        assert layer in SUPPORTED_OPS
