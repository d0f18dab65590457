"""Body builders of the K210 path (emit step 3): quantize, dequantize, kpu_upload and kpu_conv2d, and
the uint8 CPU matmul of a fully-connected layer too wide for the KPU (kcc.quant.cpu_matmul) and the
uint8 CPU convs of a conv the KPU does not take (kcc.quant.cpu_conv).

The register values are the ones ncc writes (kmodel_v4.md §9.3, "ncc writes" column), derived from
the layer's shapes by `kcc.target.k210.layer_fields`, the function the validator
`kcc.kmodel.layer_problems` checks files against, so the real K210 runtime and `ncc infer` accept
the layers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kcc import kmodel as K
from kcc.emit.storage import Storage, shape4
from kcc.ir import kpu_ops as KO
from kcc.ir.graph import Node
from kcc.kmodel.layer import wrap_signed
from kcc.kmodel.spec import BinaryOp, KpuFilterType, KpuPoolType
from kcc.target.k210 import KPU_LINE_SIZE, layer_fields


def _quantize(n: Node, st: Storage) -> K.Body:
    return K.Quantize(input=st.range(n.inputs[0]), output=st.range(n),
                      quant_param=K.QuantParam(n.op.zero_point, n.op.scale))


def _dequantize(n: Node, st: Storage) -> K.Body:
    return K.Dequantize(input=st.range(n.inputs[0]), output=st.range(n),
                        quant_param=K.QuantParam(n.op.zero_point, n.op.scale))


def _upload(n: Node, st: Storage) -> K.Body:
    x = n.inputs[0]
    return K.KpuUpload(input=st.range(x), output=st.range(n), in_shape=shape4(x.shape))


def layer_argument(n: Node, st: Storage, main_output: bool) -> K.KpuLayerArgument:
    op: KO.QuantKpuLayer = n.op
    x = n.inputs[0]
    _, c, h, w = x.shape
    _, oc, oh, ow = n.shape
    return K.KpuLayerArgument(
        depth_wise_layer=int(op.depthwise),
        image_src_addr=st.range(x).start // KPU_LINE_SIZE, image_dst_addr=st.range(n).start // KPU_LINE_SIZE,
        kernel_type=KpuFilterType.FILTER_3X3 if op.kernel == 3 else KpuFilterType.FILTER_1X1,
        pool_type=KpuPoolType(KO.KPU_POOLS[op.pool][0]), pad_value=op.pad_value,
        arg_w=wrap_signed(op.arg_w, 24), arg_x=wrap_signed(op.arg_x, 24), arg_add=wrap_signed(op.arg_add, 40),
        send_data_out=int(main_output), **layer_fields((c, h, w), (oc, oh, ow), op.kernel, op.depthwise))


def _activation_table(table: np.ndarray) -> K.KpuActivationTable:
    return K.KpuActivationTable(tuple(
        K.KpuActivationSegment(shift_number=int(sh), y_mul=int(mul), x_start=int(xs), bias=int(bias))
        for xs, mul, sh, bias in table))


def _kpu_conv2d(n: Node, st: Storage) -> K.Body:
    op: KO.QuantKpuLayer = n.op
    download = st.downloads.get(id(n))
    bn = op.bn
    return K.KpuConv2D(
        main_mem_output=st.range(download) if download is not None else K.ABSENT_RANGE,
        batches=n.shape[0],
        layer=layer_argument(n, st, download is not None),
        batch_norm=K.KpuBatchNormTable(norm_mul=bn[:, 0], norm_add=bn[:, 2], norm_shift=bn[:, 1]),
        activation=_activation_table(op.act_table),
        weights=np.ascontiguousarray(op.weights, np.uint8).ravel())


def _quantized_matmul(n: Node, st: Storage) -> K.Body:
    op: KO.QuantMatMul = n.op
    a, b = n.inputs
    return K.QuantizedMatMul(input_a=st.range(a), input_b=st.range(b), output=st.range(n), a_rows=a.shape[0],
                             a_cols=a.shape[1], b_cols=b.shape[1], input_a_offset=op.a_offset,
                             input_b_offset=op.b_offset, output_mul=op.mul, output_shift=op.shift,
                             output_offset=op.out_q[0], bias=np.ascontiguousarray(op.bias, np.int32))


def _quantized_conv2d(n: Node, st: Storage) -> K.Body:
    """A channel run of a uint8 CPU conv (kcc.quant.cpu_conv): a depthwise run reads its own channels
    of x, a block of the NCHW tensor, in place."""
    op: KO.QuantConv = n.op
    x, w = n.inputs
    nb, c, h, wd = x.shape
    xr = st.range(x)
    in_c = c
    if op.depthwise:
        in_c = op.o1 - op.o0
        xr = K.MemoryRange(xr.memory_type, xr.datatype, xr.start + op.o0 * h * wd, nb * in_c * h * wd)
    return K.QuantizedConv2D(input=xr, output=st.range(n), in_shape=K.Shape4(nb, in_c, h, wd),
                             groups=in_c if op.depthwise else 1, out_channels=op.o1 - op.o0,
                             padding_h=K.Padding(*op.padding[0]), padding_w=K.Padding(*op.padding[1]),
                             filter_h=w.shape[2], filter_w=w.shape[3], stride_h=op.stride[0],
                             stride_w=op.stride[1], dilation_h=op.dilation[0], dilation_w=op.dilation[1],
                             input_offset=op.in_offset, filter_offset=op.w_offset, output_mul=op.mul,
                             output_shift=op.shift, output_offset=op.out_q[0],
                             bias=np.ascontiguousarray(op.bias, np.int32),
                             weights=np.ascontiguousarray(w.data, np.uint8).ravel())


def _quantized_binary(n: Node, st: Storage) -> K.Body:
    op: KO.QuantBinary = n.op
    a, b = n.inputs
    return K.QuantizedBinary(input_a=st.range(a), input_b=st.range(b), output=st.range(n),
                             binary_op=BinaryOp[op.op.upper()], in_a_shape=shape4(a.shape),
                             in_b_shape=shape4(b.shape), out_shape=shape4(n.shape),
                             input_a_offset=op.a[0], input_a_mul=op.a[1], input_a_shift=op.a[2],
                             input_b_offset=op.b[0], input_b_mul=op.b[1], input_b_shift=op.b[2],
                             output_offset=op.out[0], output_mul=op.out[1], output_shift=op.out[2])


def _table_lookup1d(n: Node, st: Storage) -> K.Body:
    x, table = n.inputs
    return K.TableLookup1D(input=st.range(x), table=st.range(table), output=st.range(n))


KPU_EMITTERS: dict[type, Callable[[Node, Storage], K.Body]] = {
    KO.Quantize: _quantize,
    KO.Dequantize: _dequantize,
    KO.KpuUpload: _upload,
    KO.QuantKpuLayer: _kpu_conv2d,
    KO.QuantMatMul: _quantized_matmul,
    KO.QuantConv: _quantized_conv2d,
    KO.QuantBinary: _quantized_binary,
    KO.QuantTable: _table_lookup1d,
}
