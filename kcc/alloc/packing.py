"""Packing buffers with known lifetimes into one address space (main memory or KPU RAM).

A buffer occupies `[offset, offset + size)` during the node steps `[birth, death]` (inclusive): it
is written by the node at `birth` and last read by the node at `death`. Two buffers may share
addresses only if their step intervals are disjoint, so a node never writes its output over one of
its own inputs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int  # bytes actually used
    birth: int
    death: int

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return self.birth <= other.death and other.birth <= self.death


@dataclass(frozen=True)
class Plan:
    offsets: dict[str, int]
    peak: int  # bytes of the address space used: max(offset + aligned size)


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def live_lower_bound(buffers: list[Buffer], align: int = 1) -> int:
    """The largest total (aligned) size of buffers alive at one step: no packing can beat it."""
    if not buffers:
        return 0
    events = sorted({b.birth for b in buffers})
    return max(sum(align_up(b.size, align) for b in buffers if b.birth <= t <= b.death) for t in events)


def first_fit(buffers: list[Buffer], align: int = 8) -> Plan:
    """Place buffers in birth order (larger first on ties) at the lowest free aligned address.

    Deterministic and O(n^2); the placement of each buffer only looks at already-placed buffers whose
    lifetime overlaps its own.
    """
    order = sorted(buffers, key=lambda b: (b.birth, -b.size, b.name))
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    peak = 0
    for buf in order:
        size = align_up(max(buf.size, 1), align)
        busy = sorted((off, off + align_up(max(o.size, 1), align)) for o, off in placed if o.overlaps_in_time(buf))
        offset = 0
        for start, end in busy:
            if offset + size <= start:
                break
            offset = max(offset, end)
        offsets[buf.name] = offset
        placed.append((buf, offset))
        peak = max(peak, offset + size)
    return Plan(offsets, peak)
