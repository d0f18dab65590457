"""Decode a `kpu_conv2d` body into the numbers the KPU pipeline uses (kpu_semantics.md §1.1, §3).

The simulator runs from the **encoded** register words, like nncase's `k210_ops.cpp`: the body's
layer, batch-norm and activation tables are re-encoded to their u64 words and decoded again with
the sign extension of each field (arg_x/arg_w 24 bits, arg_add 40, norm_mul 24, norm_add 32,
y_mul 16, x_start 36). For a body read from a file that is the identity; for an in-memory
body it guarantees that anything which could not be encoded is rejected instead of simulated.

Decoding, and the weight matrices prepared for the matmuls, are cached per body (bodies are
immutable), so a program pays for them once, not on every run.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from kcc.kmodel import (
    KpuActivationTable,
    KpuBatchNormTable,
    KpuConv2D,
    KpuLayerArgument,
    KpuPoolType,
)
from kcc.kmodel.spec import KPU_LINE_SIZE

T = TypeVar("T")

_CACHE: OrderedDict[int, tuple[object, object]] = OrderedDict()
_CACHE_SIZE = 512


def cached(body: object, build: Callable[[], T]) -> T:
    """`build()` once per body object (identity-keyed, bounded LRU; the entry keeps the body alive
    so its id cannot be reused while cached)."""
    key = id(body)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is body:
        _CACHE.move_to_end(key)
        return hit[1]  # type: ignore[return-value]
    value = build()
    _CACHE[key] = (body, value)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


@dataclass(frozen=True, eq=False)
class Activation:
    """The 16 decoded segments (§3 step 4) as int64 arrays, plus facts the fast paths need."""

    start: np.ndarray  # x_start, s36
    mul: np.ndarray  # y_mul, s16
    shift: np.ndarray  # shift_number, u8
    add: np.ndarray  # bias byte, u8

    @property
    def is_sorted(self) -> bool:
        return bool(np.all(np.diff(self.start) >= 0))


@dataclass(frozen=True, eq=False)
class KpuLayer:
    """One KPU layer as the nncase simulator sees it after decoding the registers."""

    batches: int
    in_c: int
    in_h: int
    in_w: int
    out_c: int
    out_h: int
    out_w: int
    filter: int  # 1 or 3
    depthwise: bool
    pool: KpuPoolType
    pad_value: int
    arg_x: int
    shift_x: int
    arg_w: int
    shift_w: int
    arg_add: int
    src: int  # byte offset of the input map in KPU RAM (image_src_addr * 64)
    dst: int  # byte offset of the output map
    bn_mul: np.ndarray  # per output channel, int64
    bn_shift: np.ndarray
    bn_add: np.ndarray
    activation: Activation
    weights: np.ndarray  # uint8 [oc][ic][k][k] or [oc][k][k] (depthwise)

    @property
    def in_shape(self) -> tuple[int, int, int, int]:
        return (self.batches, self.in_c, self.in_h, self.in_w)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batches, self.out_c, self.out_h, self.out_w)

    @property
    def g_ic(self) -> int:
        """Input channels per group: C_in for a normal conv, 1 for depthwise (§3 step 2)."""
        return 1 if self.depthwise else self.in_c


def decode_activation(table: KpuActivationTable) -> Activation:
    words = table.pack()
    regs = struct.unpack_from("<16Q", words)
    fields = [(_bits(w, 24, 36, True), _bits(w, 8, 16, True), _bits(w, 0, 8, False)) for w in regs]
    start, mul, shift = (np.array(col, dtype=np.int64) for col in zip(*fields))
    add = np.frombuffer(words[128:144], dtype=np.uint8).astype(np.int64)  # bias0 then bias1
    return Activation(start, mul, shift, add)


def _bits(word: int, lsb: int, width: int, signed: bool) -> int:
    raw = (word >> lsb) & ((1 << width) - 1)
    return raw - (1 << width) if signed and raw >> (width - 1) else raw


def _decode_batch_norm(table: KpuBatchNormTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    decoded = KpuBatchNormTable.from_words(table.words())
    return decoded.norm_mul, decoded.norm_shift, decoded.norm_add


def decode(body: KpuConv2D) -> KpuLayer:
    """Decode (cached) the layer of a kpu_conv2d body. Raises `KmodelError` for unencodable fields."""
    return cached(body, lambda: _decode(body))


def _decode(body: KpuConv2D) -> KpuLayer:
    words = body.layer.registers(bwsx_base_addr=0, active_addr=0, para_start_addr=0)
    f = KpuLayerArgument.from_registers(words)  # sign-extends arg_x, arg_w (24) and arg_add (40)
    bn_mul, bn_shift, bn_add = _decode_batch_norm(body.batch_norm)
    return KpuLayer(
        batches=body.batches,
        in_c=f.in_channels, in_h=f.in_height, in_w=f.in_width,
        out_c=f.out_channels, out_h=f.out_height, out_w=f.out_width,
        filter=f.filter_size, depthwise=bool(f.depth_wise_layer), pool=f.pool_type,
        pad_value=f.pad_value, arg_x=f.arg_x, shift_x=f.shr_x, arg_w=f.arg_w, shift_w=f.shr_w, arg_add=f.arg_add,
        src=f.image_src_addr * KPU_LINE_SIZE, dst=f.image_dst_addr * KPU_LINE_SIZE,
        bn_mul=bn_mul, bn_shift=bn_shift, bn_add=bn_add,
        activation=decode_activation(body.activation),
        weights=np.asarray(body.weights, dtype=np.uint8),
    )  # fmt: skip
