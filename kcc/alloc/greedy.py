"""Greedy packers: a buffer order plus a gap rule, tried in several combinations.

ncc packs in birth order (first fit, kpu_semantics.md §7), which fragments badly on chains whose
tensor sizes alternate: the big buffer that comes third finds no hole and goes on top. Placing the
largest (or largest size × lifetime) buffers first, each in the lowest or the tightest hole left by
the already-placed buffers that overlap it in time, is the "greedy by size" planner of TFLite's
arena and reaches the live-size lower bound on most CNNs. Every candidate is deterministic
(total orders with the buffer name as last key), so the best of them is too.
"""

from __future__ import annotations

from collections.abc import Callable

from kcc.alloc.packing import Buffer, Plan, slot_size

#: A total order on buffers (the sort key) and its name in reports.
Order = Callable[[Buffer], tuple]

ORDERS: dict[str, Order] = {
    "size": lambda b: (-b.size, b.birth - b.death, b.birth, b.name),
    "area": lambda b: (-b.size * (b.death - b.birth + 1), -b.size, b.birth, b.name),
    "lifetime": lambda b: (b.birth - b.death, -b.size, b.birth, b.name),
}
GAP_RULES = ("first", "best")


def _slot(size: int, busy: list[tuple[int, int]], rule: str) -> int:
    """Offset for a block of `size` among the `busy` (start, end) ranges, sorted by start.

    "first": the lowest hole that fits; "best": the smallest hole that fits (lowest on ties).
    Without a fitting hole the block goes on top of the highest busy range.
    """
    best_offset, best_gap = -1, -1
    offset = 0
    for start, end in busy:
        gap = start - offset
        if gap >= size:
            if rule == "first":
                return offset
            if best_gap < 0 or gap < best_gap:
                best_offset, best_gap = offset, gap
        offset = max(offset, end)
    return best_offset if best_offset >= 0 else offset


def place(buffers: list[Buffer], order: Order, rule: str, align: int) -> Plan:
    """Place `buffers` one by one in `order`, each by the gap `rule` (see `_slot`)."""
    placed: list[tuple[Buffer, int, int]] = []  # (buffer, offset, end)
    offsets: dict[str, int] = {}
    peak = 0
    for buf in sorted(buffers, key=order):
        size = slot_size(buf, align)
        busy = sorted((off, end) for o, off, end in placed if o.overlaps_in_time(buf))
        offset = _slot(size, busy, rule)
        offsets[buf.name] = offset
        placed.append((buf, offset, offset + size))
        peak = max(peak, offset + size)
    return Plan(offsets, peak)


def greedy_candidates(buffers: list[Buffer], align: int) -> list[tuple[str, Plan]]:
    """Every (order, gap rule) combination, in a fixed sequence, labelled "<order>/<rule>-fit"."""
    return [(f"{name}/{rule}-fit", place(buffers, order, rule, align))
            for name, order in ORDERS.items() for rule in GAP_RULES]
