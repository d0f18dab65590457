"""kpu_upload (kmodel_v4.md §9.1); kpu_conv2d, the other K210 op, lives in kpu_conv.py."""

from __future__ import annotations

import numpy as np

from kcc.kmodel import KpuUpload
from kpu_sim.kernels.elementwise import shape_count
from kpu_sim.memory import Memory


def kpu_upload(mem: Memory, body: KpuUpload) -> None:
    """§9.1, §7.3: NCHW uint8 from main memory into the KPU layout; padding bytes keep their value."""
    x = mem.read(body.input, np.uint8, shape_count(body.in_shape, "in_shape")).reshape(body.in_shape)
    mem.upload(body.output, x)
