"""Packing buffers with known lifetimes into one address space (main memory or KPU RAM).

A buffer occupies `[offset, offset + size)` during the node steps `[birth, death]` (inclusive): it
is written by the node at `birth` and last read by the node at `death`. Two buffers may share
addresses only if their step intervals are disjoint, so a node never writes its output over one of
its own inputs (ncc's lifetimes are the same: outputs are allocated before the inputs are released,
kpu_semantics.md §7). Offsets are multiples of the space's alignment and every size is rounded up to
it: 8 bytes for main memory (kmodel_v4.md §7.1), 64 for KPU RAM (§7.2).

This module holds the data types, the live-size lower bound, ncc-style first fit and a validity
check; `greedy`, `solver` and `planner` build on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int  # bytes actually used
    birth: int
    death: int

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.birth <= other.death and other.birth <= self.death

    def alive_at(self, step: int) -> bool:
        return self.birth <= step <= self.death


@dataclass(frozen=True)
class Plan:
    offsets: dict[str, int]
    peak: int  # bytes of the address space used: max(offset + aligned size)


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def slot_size(buf: Buffer, align: int) -> int:
    """Bytes a buffer reserves: its size rounded up to the alignment (at least one unit)."""
    return align_up(max(buf.size, 1), align)


def live_at(buffers: list[Buffer], step: int) -> list[Buffer]:
    return [b for b in buffers if b.alive_at(step)]


def live_lower_bound(buffers: list[Buffer], align: int = 1) -> int:
    """The largest total (aligned) size of buffers alive at one step: no packing can beat it.

    The live set only grows at a birth, so the births are the only steps worth checking.
    """
    if not buffers:
        return 0
    events = sorted({b.birth for b in buffers})
    return max(sum(slot_size(b, align) for b in live_at(buffers, t)) for t in events)


def first_fit(buffers: list[Buffer], align: int = 8) -> Plan:
    """Place buffers in birth order (larger first on ties) at the lowest free aligned address.

    Deterministic and O(n^2); the placement of each buffer only looks at already-placed buffers whose
    lifetime overlaps its own. This is kcc's equivalent of ncc's `--max-allocator-solve-secs 0`.
    """
    order = sorted(buffers, key=lambda b: (b.birth, -b.size, b.name))
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    peak = 0
    for buf in order:
        size = slot_size(buf, align)
        busy = sorted((off, off + slot_size(o, align)) for o, off in placed if o.overlaps_in_time(buf))
        offset = 0
        for start, end in busy:
            if offset + size <= start:
                break
            offset = max(offset, end)
        offsets[buf.name] = offset
        placed.append((buf, offset))
        peak = max(peak, offset + size)
    return Plan(offsets, peak)


def plan_errors(buffers: list[Buffer], plan: Plan, align: int) -> list[str]:
    """Everything wrong with `plan` (empty if it is valid): missing or unaligned offsets, a peak
    below an end address, and pairs of time-overlapping buffers whose address ranges overlap."""
    errors: list[str] = []
    spans: list[tuple[Buffer, int, int]] = []
    for b in buffers:
        off = plan.offsets.get(b.name)
        if off is None:
            errors.append(f"{b.name}: no offset")
            continue
        if off < 0 or off % align:
            errors.append(f"{b.name}: offset {off} is not a non-negative multiple of {align}")
        end = off + slot_size(b, align)
        if end > plan.peak:
            errors.append(f"{b.name}: ends at {end}, above the peak {plan.peak}")
        spans.append((b, off, end))
    spans.sort(key=lambda s: s[1])
    for i, (a, a_off, a_end) in enumerate(spans):
        for b, b_off, b_end in spans[i + 1:]:
            if b_off >= a_end:
                break
            if a.overlaps_in_time(b):
                errors.append(f"{a.name} [{a_off}, {a_end}) and {b.name} [{b_off}, {b_end}) overlap at steps "
                              f"{max(a.birth, b.birth)}..{min(a.death, b.death)}")
    return errors
