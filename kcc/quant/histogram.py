"""The 2048-bin activation histogram of nncase v0.2's l2 calibration (kpu_semantics.md §4.2).

A histogram covers `[lo, hi] = fixup_range(no_clip range)` (§4.1) with `bins` equal bins, all
arithmetic in float32 as nncase does:

    interval = (hi - lo) / bins
    bin(v)   = trunc(clamp((v - lo) / interval, 0, bins - 1))
    p_i      = lo + interval * i          (left edge of bin i, i = 0..bins)
    zb       = trunc(clamp((0 - lo) / interval, 0, bins - 1))     (the bin holding 0)

Values below `lo` / above `hi` land in the first / last bin; +-inf too. NaN is skipped (nncase
casts it to an index, which is undefined behaviour). nncase keeps the counts as float32 and adds 1
per value, so a count saturates at 2^24; `float_counts` reproduces that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kcc.target.quant_rules import fixup_range

F32 = np.float32
BINS = 2048
#: float32 + 1 stops changing here (2^24 + 1 rounds back to 2^24).
FLOAT_COUNT_LIMIT = 1 << 24


def bin_interval(lo: float, hi: float, bins: int = BINS) -> float:
    """interval = (hi - lo) / bins in float32."""
    return float(F32(F32(hi) - F32(lo)) / F32(bins))


def bin_edges(lo: float, interval: float, bins: int = BINS) -> np.ndarray:
    """p_i = lo + interval * i for i = 0..bins (float32; p_bins is the right end)."""
    return (F32(lo) + F32(interval) * np.arange(bins + 1, dtype=F32)).astype(F32)


def zero_bin(lo: float, interval: float, bins: int = BINS) -> int:
    """zb = trunc(clamp((0 - lo) / interval, 0, bins - 1)), float32."""
    r = F32(F32(0) - F32(lo)) / F32(interval)
    return int(min(max(r, F32(0)), F32(bins - 1)))


def bin_counts(values: np.ndarray, lo: float, interval: float, bins: int = BINS) -> np.ndarray:
    """Integer count per bin of `values` (any shape), binned as nncase's histogram::record."""
    v = np.asarray(values, F32).ravel()
    r = (v - F32(lo)) / F32(interval)
    if np.isnan(r).any():
        r = r[~np.isnan(r)]
    np.clip(r, F32(0), F32(bins - 1), out=r)
    return np.bincount(r.astype(np.intp), minlength=bins).astype(np.int64)


@dataclass
class Histogram:
    """Counts over `[lo, hi]` (already fixed up); build with `Histogram.over(range)`."""

    lo: float
    hi: float
    bins: int = BINS
    counts: np.ndarray = field(default=None, repr=False)  # int64 [bins]

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(self.bins, np.int64)

    @classmethod
    def over(cls, lo: float, hi: float, bins: int = BINS) -> Histogram:
        """An empty histogram over `fixup_range(lo, hi)`, as nncase's begin_collect_distribution."""
        flo, fhi = fixup_range(lo, hi)
        return cls(flo, fhi, bins)

    @property
    def interval(self) -> float:
        return bin_interval(self.lo, self.hi, self.bins)

    @property
    def zero_bin(self) -> int:
        return zero_bin(self.lo, self.interval, self.bins)

    def edges(self) -> np.ndarray:
        return bin_edges(self.lo, self.interval, self.bins)

    def float_counts(self) -> np.ndarray:
        """The counts nncase's float32 accumulation holds: min(n, 2^24), as float64."""
        return np.minimum(self.counts, FLOAT_COUNT_LIMIT).astype(np.float64)

    def add(self, values: np.ndarray) -> None:
        self.counts += bin_counts(values, self.lo, self.interval, self.bins)
