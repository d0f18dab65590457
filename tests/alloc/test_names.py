"""kcc/alloc/names.py: the model's tensor names behind the ones kcc adds, and kcc's steps in words
(what the compile summary and the report print; the summary itself is tests/report/test_summary.py)."""

from kcc.alloc.names import STEPS, in_words, model_name


def test_model_names_behind_kcc_tensor_names():
    assert model_name("conv2d_30/dequantize") == "conv2d_30"
    assert model_name("conv2d/kpu_pad/u8") == "conv2d"
    assert model_name("p_re_lu_3/alpha_neg") == "p_re_lu_3"
    assert model_name("dw5/term0") == "dw5" and model_name("x/u8_2") == "x"
    # the model's own names stay whole: TFLite's fused names end in the model's paths
    fused = "MobilenetV1/Conv2d_0/Relu6;MobilenetV1/Conv2d_0/BatchNorm_Fold/bias"
    assert model_name(fused) == fused and model_name("block/conv1") == "block/conv1"
    assert model_name("block/pad", known={"block/pad"}) == "block/pad"
    assert in_words("conv2d/kpu_pad/upload") == f"conv2d ({STEPS['kpu_pad']}, {STEPS['upload']})"
