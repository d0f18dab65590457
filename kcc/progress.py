"""Progress bars for the slow parts of a compile: the calibration passes (one more for l2) and the
per-layer error measurement of `--report`.

ncc draws a bar per calibration pass (ecosystem.md §5.1); users of large datasets otherwise cannot
tell a slow compile from a hung one (§2 P12). Bars go to stderr through tqdm and are drawn only
when stdout is a terminal and `-q` is not given, so logs and CI output stay clean.

`Progress` is the callback protocol of `kcc.quant.calibrate`: `progress(done, total, stage)`.
`counted(samples, progress)` makes any sample list report through it without the calibration code
knowing, one bar per pass over the data.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

Progress = Callable[[int, "int | None", str], None]


def enabled(quiet: bool = False) -> bool:
    """Bars are drawn for interactive runs only: stdout is a terminal and -q was not given."""
    return not quiet and sys.stdout.isatty()


class Bars:
    """A `Progress` callback drawing one tqdm bar per stage; a new stage closes the previous bar."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._stage: str | None = None

    def __call__(self, done: int, total: int | None, stage: str) -> None:
        from tqdm import tqdm

        if stage != self._stage or self._bar is None:
            self.close()
            self._bar = tqdm(total=total, desc=f"   {stage}", unit="sample", leave=False, file=sys.stderr,
                             dynamic_ncols=True)
            self._stage = stage
        self._bar.update(done - self._bar.n)
        if total is not None and done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


def counted(samples: Sequence[Any], progress: Progress, label: str = "calibration pass") -> Callable[[], Iterator[Any]]:
    """`samples` as a callable that returns a fresh iterator per pass, reporting each sample.

    kcc.quant.calibrate accepts such a callable and calls it once per pass over the dataset, so
    pass k shows as stage '<label> k'."""
    passes = [0]

    def again() -> Iterator[Any]:
        passes[0] += 1
        stage = f"{label} {passes[0]}"
        for i, sample in enumerate(samples):
            yield sample
            progress(i + 1, len(samples), stage)

    return again


def track(items: Iterable[Any], total: int | None, stage: str, progress: Progress | None) -> Iterator[Any]:
    """Yield `items`, reporting each one through `progress` (if any) under `stage`."""
    for i, item in enumerate(items):
        yield item
        if progress is not None:
            progress(i + 1, total, stage)
