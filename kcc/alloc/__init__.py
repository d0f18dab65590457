"""Memory planning: buffer lifetimes and their packing into one address space."""

from kcc.alloc.packing import Buffer, Plan, first_fit, live_lower_bound

__all__ = ["Buffer", "Plan", "first_fit", "live_lower_bound"]
