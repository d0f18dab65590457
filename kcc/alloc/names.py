"""Tensor names for people: the model's own names, short enough for one-line messages and tables.

TFLite joins the names of fused tensors with ';' (the first is the tensor's own), so a MobileNet
activation is called 'MobilenetV1/.../Conv2d_1_pointwise/Relu6;...;.../BatchNorm_Fold/bias'. kcc's
passes name the tensors they add after the model tensor they serve, by appending path components
(`STEPS`: 'conv2d/kpu_pad/u8' is the uint8 pre-pad of conv2d's input, 'p_re_lu/pos' a part of a
lowered PReLU). What users read is the model's name (`model_name`), and where kcc made the tensor,
what it is in words (`display_names`: 'conv2d (padded for the KPU, uint8)'); over-long names keep
their tail, which names the layer. IR names themselves are left alone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable

LIMIT = 60

#: path component kcc's passes append (Graph.unique_name may add '_N') -> the tensor in words. Only
#: tensors that become kmodel nodes or buffers: constants (weights, biases) live in the constants blob,
#: and their names ('bias', 'w0') would collide with the model's own ('.../BatchNorm_Fold/bias').
STEPS: dict[str, str] = {
    # quantize / emit: the uint8 codes of a tensor, its float value again, copies in and out of KPU RAM
    "u8": "uint8", "quantize": "uint8", "codes": "uint8", "pool_codes": "pooled uint8", "dequantize": "float",
    "rounded": "float", "lost": "rounding residual", "pre_act": "before its activation",
    "upload": "in KPU RAM", "download": "copied out of KPU RAM", "copy": "copy", "copy_zero": "copy",
    # legalize_kpu: the layer around the KPU's 3x3 'same' window, a fully-connected layer as a 1x1 conv
    "kpu_pad": "padded for the KPU", "kpu": "KPU layer output", "as_map": "as a map",
    # frontend and canonicalize: layout changes
    "nchw": "NCHW", "nhwc": "NHWC", "transpose": "transposed", "transposed": "transposed",
    "flat": "flattened", "slice": "slice", "item": "item",
    # dilated and transpose convs (space-to-batch, zero insertion)
    "s2b_pad": "space-to-batch", "s2b_split": "space-to-batch", "s2b_phase": "space-to-batch",
    "s2b": "space-to-batch", "b2s_split": "batch-to-space", "b2s_phase": "batch-to-space",
    "b2s": "batch-to-space", "zi_cols": "zeros inserted", "zi_pad_w": "zeros inserted",
    "zi_rows": "zeros inserted", "zi_pad_h": "zeros inserted", "zero_inserted": "zeros inserted",
    "zero_trim": "zeros inserted", "conv": "conv", "crop": "cropped",
    # decompose_kernels / kernel_forms: a large kernel as 3x3 KPU terms
    "view": "view of the input", "channels": "channel group", "pad": "padded",
    "residual": "rounding residual",
    "term": "3x3 term", "sum": "sum of terms", "stack": "stacked views", "stacked_conv": "stacked 3x3 terms",
    "parts": "sum of parts", "terms": "3x3 terms",
    # global_mean: a global mean's levels on the KPU
    "block_sum": "2x2 block sums",
    # lower_to_neutral: ops the kmodel lacks, as several CPU ops
    "alpha_x": "alpha x input", "pos": "positive part", "neg": "negative part",
    "alpha_neg": "alpha x negative part", "square": "squares", "max_eps": "sum of squares",
    "rsqrt": "inverse norm", "to_last": "transposed", "softmax": "softmax", "keepdims": "reduced",
    "rows": "rows", "cols": "columns", "resize_w": "resized along W", "resize_w4": "resized along W",
    "swap_hw": "transposed", "resize_h": "resized along H", "resize_h4": "resized along H",
}
#: steps kcc numbers or tags (term0, sum1, channels(0, 64)); any step may carry Graph.unique_name's '_N'
_NUMBERED = {"term", "sum", "parts", "item", "view", "channels", "stacked_conv", "block_sum"}
_TAG, _UNIQUE = re.compile(r"(\d+|\(.*\))$"), re.compile(r"_\d+$")


def _step(component: str) -> str | None:
    """The `STEPS` key of a path component, if it is one."""
    for c in (component, _UNIQUE.sub("", component)):
        if c in STEPS:
            return c
        base = _TAG.sub("", c)
        if base in _NUMBERED and base != c:
            return base
    return None


def _trim(name: str, limit: int) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


def short_name(name: str, limit: int = LIMIT) -> str:
    """The first ';'-separated part of `name`, trimmed to `limit` characters."""
    return _trim(name.split(";")[0], limit)


def split_steps(name: str, known: Collection[str] = ()) -> tuple[str, list[str]]:
    """(the model tensor `name` was made for, kcc's steps after it in order): the trailing path
    components that are kcc `STEPS` are taken off, except from a name in `known` (the model's)."""
    steps: list[str] = []
    while name not in known:
        head, sep, tail = name.rpartition("/")
        step = _step(tail) if head else None
        if step is None:
            break
        steps.insert(0, step)
        name = head
    return name, steps


def model_name(name: str, known: Collection[str] = ()) -> str:
    """The model's tensor name behind an IR name: 'conv2d' for 'conv2d/dequantize'."""
    return split_steps(name, known)[0]


def in_words(name: str, limit: int = LIMIT, known: Collection[str] = ()) -> str:
    """The model's name, short, with kcc's steps in words: 'conv2d (padded for the KPU, in KPU RAM)'."""
    base, steps = split_steps(name, known)
    words = list(dict.fromkeys(STEPS[s] for s in steps))
    return short_name(base, limit) + (f" ({', '.join(words)})" if words else "")


def display_names(names: Iterable[str], limit: int = LIMIT) -> dict[str, str]:
    """Full name -> display name for a set of names shown together: `in_words`, plus the last path
    component of the name's own part where two would read the same."""
    names = list(dict.fromkeys(names))
    first = {n: in_words(n, limit) for n in names}
    counts = Counter(first.values())
    out = {}
    for n, f in first.items():
        base = model_name(n)
        out[n] = f if counts[f] == 1 or ";" not in base else f"{f};.../{base.rsplit('/', 1)[-1]}"
    return out
