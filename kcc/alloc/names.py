"""Tensor names short enough for one-line messages and tables, and still telling apart.

TFLite joins the names of fused tensors with ';' (the first is the tensor's own), so a MobileNet
activation is called 'MobilenetV1/.../Conv2d_1_pointwise/Relu6;...;.../BatchNorm_Fold/bias'. kcc's
passes then append suffixes ('/pos', '/neg', ...) to the whole name, so two buffers can share the
first part. The display name is the first part, plus the last path component when that is needed
to tell buffers apart; over-long names keep their tail, which names the layer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

LIMIT = 60


def _trim(name: str, limit: int) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


def short_name(name: str, limit: int = LIMIT) -> str:
    """The first ';'-separated part of `name`, trimmed to `limit` characters."""
    return _trim(name.split(";")[0], limit)


def display_names(names: Iterable[str], limit: int = LIMIT) -> dict[str, str]:
    """Full name -> display name for a set of names shown together (see the module docstring)."""
    names = list(dict.fromkeys(names))
    first = {n: short_name(n, limit) for n in names}
    counts = Counter(first.values())
    return {n: f if counts[f] == 1 or ";" not in n else f"{f};.../{n.rsplit('/', 1)[-1]}" for n, f in first.items()}
