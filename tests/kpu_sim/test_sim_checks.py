"""Load-time checks (kpu_sim/checks.py): a kpu_conv2d the simulator could not run safely is
rejected before running, with one KmodelError line naming the node and the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import refkit
from kpu_reference import Layer, identity_plus_one, layer_model

import kcc.kmodel as km
import kpu_sim
from kcc.errors import KmodelError


def _model(**layer_changes) -> km.KModel:
    x_shape = (1, 2, 4, 4)
    layer = Layer(x_shape, 2, np.ones((2, 2, 1, 1), np.uint8), bn=[(1, 0, 0)] * 2, act=identity_plus_one())
    model, _ = layer_model(layer)
    body = model.nodes[0].body
    if layer_changes:
        body = dataclasses.replace(body, layer=body.layer.replace(**layer_changes))
    model.nodes = [km.Node.of(body)]
    return model


def test_a_consistent_layer_loads() -> None:
    kpu_sim.load(_model())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"o_row_wid": 1}, r"field o_row_wid: output width 2 is not the input width 4 after pool bypass \(4\)"),
        ({"o_col_high": 2, "o_row_wid": 1, "pool_type": km.KpuPoolType.MAX_2_S2},
         r"field o_col_high: output height 3 is not the input height 4 after pool max_2_s2 \(2\)"),
        ({"image_src_addr": 32767}, r"field input exceeds KPU RAM"),
        ({"image_dst_addr": 32766}, r"field output exceeds KPU RAM"),
        ({"arg_x": 2**23}, r"field arg_x: value 8388608 does not fit in 24 bits"),
    ],
)  # fmt: skip
def test_layer_registers_are_checked(changes, message) -> None:
    with pytest.raises(KmodelError, match=r"^node 0 \(kpu_conv2d\): " + message):
        kpu_sim.load(_model(**changes))


def test_depthwise_layers_cannot_have_more_outputs_than_inputs() -> None:
    layer = Layer((1, 2, 4, 4), 3, np.ones((3, 1, 1), np.uint8), depthwise=True, bn=[(1, 0, 0)] * 3,
                  act=identity_plus_one())  # fmt: skip
    model, _ = layer_model(layer)
    with pytest.raises(KmodelError, match=r"field o_ch_num: a depthwise layer with 2 input channels cannot have 3"):
        kpu_sim.load(model)


def test_main_mem_output_must_hold_the_output() -> None:
    model = _model()
    body = model.nodes[0].body
    small = dataclasses.replace(body.main_mem_output, size=31)  # the layer writes 2*4*4 = 32 bytes
    model.nodes = [km.Node.of(dataclasses.replace(body, main_mem_output=small))]
    with pytest.raises(KmodelError, match=r"field main_mem_output: holds 31 bytes, the layer writes 32"):
        kpu_sim.load(km.write(model))
    const = km.MemoryRange(km.MemoryType.CONST, km.DataType.UINT8, 0, 32)
    model.constants = bytes(32)
    model.nodes = [km.Node.of(dataclasses.replace(body, main_mem_output=const))]
    with pytest.raises(KmodelError, match="field main_mem_output: lies in constant memory"):
        kpu_sim.load(model)


def test_main_memory_limit() -> None:
    model = _model()
    model.main_mem = 2**31
    with pytest.raises(KmodelError, match="main_mem 2147483648 exceeds the simulator's limit"):
        kpu_sim.load(model)


def test_truncated_real_model_names_the_node_and_field() -> None:
    data = (refkit.SHIPPED / "ncc-outputs" / "kmodels" / "ulffd_landmark_no_clip_ff.kmodel").read_bytes()
    with pytest.raises(KmodelError, match=r"^<kmodel bytes>: node 73 \(kpu_conv2d\): body \(body_size 1640 at offset "
                       r"413784\) extends beyond the end of the file \(413944 bytes\)$"):
        kpu_sim.load(data[: len(data) - 5000])
