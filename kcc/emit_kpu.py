"""Body builders of the K210 path: quantize, dequantize, kpu_upload and kpu_conv2d.

Registered into `kcc.emit.EMITTERS`; the register values are the ones ncc writes (kmodel_v4.md §9.3,
"ncc writes" column), so the real K210 runtime and `ncc infer` accept the layers.
"""

from __future__ import annotations

import math

import numpy as np

from kcc import kmodel as K
from kcc.emit import EMITTERS, _Storage, shape4
from kcc.ir import kpu_ops as KO
from kcc.ir.graph import Node
from kcc.kmodel.layer import wrap_signed
from kcc.kmodel.spec import KpuFilterType, KpuPoolType

WEIGHTS_PER_LOAD = 30720  # bytes of weights per load, ncc's rule (§9.3 "Weight loads")


def _quantize(n: Node, st: _Storage) -> K.Body:
    return K.Quantize(input=st.range(n.inputs[0]), output=st.range(n),
                      quant_param=K.QuantParam(n.op.zero_point, n.op.scale))


def _dequantize(n: Node, st: _Storage) -> K.Body:
    return K.Dequantize(input=st.range(n.inputs[0]), output=st.range(n),
                        quant_param=K.QuantParam(n.op.zero_point, n.op.scale))


def _upload(n: Node, st: _Storage) -> K.Body:
    x = n.inputs[0]
    return K.KpuUpload(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape))


def weight_loads(oc: int, ic: int, k: int, depthwise: bool) -> tuple[int, int, int]:
    """(para_size, load_time, o_ch_num_coef) per ncc's rule (§9.3)."""
    if depthwise:
        return oc * k * k, 0, oc - 1
    one = k * k * ic
    per_load = max(1, min(oc, WEIGHTS_PER_LOAD // one))
    return one * per_load, math.ceil(oc / per_load) - 1, per_load - 1


def layer_argument(n: Node, st: _Storage, main_output: bool) -> K.KpuLayerArgument:
    op: KO.KpuLayer = n.op
    x = n.inputs[0]
    _, c, h, w = x.shape
    _, oc, oh, ow = n.shape
    lin, lout = K.kpu_row_layout(w), K.kpu_row_layout(ow)
    para_size, load_time, coef = weight_loads(oc, c, op.kernel, op.depthwise)
    return K.KpuLayerArgument(
        depth_wise_layer=int(op.depthwise),
        image_src_addr=st.range(x).start // 64, image_dst_addr=st.range(n).start // 64,
        i_ch_num=c - 1, o_ch_num=oc - 1, o_ch_num_coef=coef,
        i_row_wid=w - 1, i_col_high=h - 1, o_row_wid=ow - 1, o_col_high=oh - 1,
        kernel_type=KpuFilterType.FILTER_3X3 if op.kernel == 3 else KpuFilterType.FILTER_1X1,
        pool_type=KpuPoolType(KO.KPU_POOLS[op.pool][0]), pad_value=op.pad_value,
        load_time=load_time, para_size=para_size,
        channel_switch_addr=lin.row_len * h, row_switch_addr=lin.row_len, coef_group=lin.groups,
        wb_channel_switch_addr=lout.row_len * oh, wb_row_switch_addr=lout.row_len, wb_group=lout.groups,
        arg_w=wrap_signed(op.arg_w, 24), arg_x=wrap_signed(op.arg_x, 24), arg_add=wrap_signed(op.arg_add, 40),
        send_data_out=int(main_output), channel_byte_num=ow * oh - 1, dma_total_byte=ow * oh * oc - 1)


def _activation_table(table: np.ndarray) -> K.KpuActivationTable:
    return K.KpuActivationTable(tuple(
        K.KpuActivationSegment(shift_number=int(sh), y_mul=int(mul), x_start=int(xs), bias=int(bias))
        for xs, mul, sh, bias in table))


def _kpu_conv2d(n: Node, st: _Storage) -> K.Body:
    op: KO.KpuLayer = n.op
    download = st.downloads.get(id(n))
    bn = op.bn
    return K.KpuConv2D(
        main_mem_output=st.range(download) if download is not None else K.ABSENT_RANGE,
        batches=n.shape[0],
        layer=layer_argument(n, st, download is not None),
        batch_norm=K.KpuBatchNormTable(norm_mul=bn[:, 0], norm_add=bn[:, 2], norm_shift=bn[:, 1]),
        activation=_activation_table(op.act_table),
        weights=np.ascontiguousarray(op.weights, np.uint8).ravel())


EMITTERS.update({
    KO.Quantize: _quantize,
    KO.Dequantize: _dequantize,
    KO.KpuUpload: _upload,
    KO.KpuLayer: _kpu_conv2d,
})
