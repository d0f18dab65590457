"""Datasets for calibration (`kcc compile --dataset`) and inference (`kcc infer --dataset`).

Conventions follow ncc v0.2 (ecosystem.md §5.3) with two deliberate differences, both documented in
docs/usage.md:
* files are taken in **sorted** path order (ncc uses directory-iteration order), so runs are
  reproducible;
* a 1-channel model gets the image's **luminance** (ncc takes the blue channel despite its docs).

Image mode: every file PIL can decode, found recursively; converted to RGB (or L), resized to the
model's W x H with bilinear filtering (whole picture, no crop), scaled to [0, 1], then
`(x - mean) / std`, laid out NCHW. For a uint8-input model the raw 0..255 pixels are used as-is.
Raw mode: every file, each exactly one input tensor of the input's dtype in NCHW order (float32: 4
bytes per element, no header); `(x - mean) / std` is applied to float inputs, as ncc does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from kcc.errors import DatasetError

FORMATS = ("image", "raw")
# Suffixes PIL reliably decodes; other files in an image folder are skipped (like ncc skips files
# OpenCV cannot read), and a folder with no image at all is an error.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: Path
    data: np.ndarray  # NCHW, dtype of the model input


def list_files(path: str | Path, fmt: str) -> list[Path]:
    """The dataset's files in sorted order; raises DatasetError if there are none."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format '{fmt}' (expected one of: {', '.join(FORMATS)})")
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"dataset '{root}' does not exist")
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if fmt == "image":
            files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        what = "image files (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")" if fmt == "image" else "files"
        raise DatasetError(f"dataset '{root}' contains no {what}")
    return files


def load_image(path: Path, shape: tuple[int, int, int, int], dtype: np.dtype,
               mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """One image as an NCHW array of the model input's shape and dtype."""
    from PIL import Image, UnidentifiedImageError

    n, c, h, w = shape
    if c not in (1, 3):
        raise DatasetError(f"image dataset needs a 1- or 3-channel input, but the model input has {c} channels; "
                           f"use --dataset-format raw")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"cannot read image '{path}': {e}") from None
    chw = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
    if np.dtype(dtype) == np.uint8:
        x = chw
    else:
        x = (chw.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std)
    return np.broadcast_to(x[None], (n, c, h, w)).astype(dtype)


def load_raw(path: Path, shape: tuple[int, ...], dtype: np.dtype, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    dtype = np.dtype(dtype)
    expect = int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expect:
        dims = "x".join(map(str, shape))
        raise DatasetError(f"raw file '{path}' has {size} bytes, expected {expect} "
                           f"({dims} {dtype.name}, NCHW, no header)")
    x = np.fromfile(path, dtype=dtype).reshape(shape)
    if dtype == np.float32 and (mean != 0.0 or std != 1.0):
        x = (x - np.float32(mean)) / np.float32(std)
    return x


def iter_dataset(path: str | Path, fmt: str, shape: tuple[int, ...], dtype: np.dtype = np.float32,
                 mean: float = 0.0, std: float = 1.0, files: list[Path] | None = None) -> Iterator[Sample]:
    """Yield one Sample per file, in sorted order."""
    for f in files if files is not None else list_files(path, fmt):
        if fmt == "image":
            if len(shape) != 4:
                raise DatasetError(f"image dataset needs a 4-D input, the model input is {len(shape)}-D; "
                                   f"use --dataset-format raw")
            yield Sample(f, load_image(f, tuple(shape), dtype, mean, std))
        else:
            yield Sample(f, load_raw(f, tuple(shape), dtype, mean, std))
