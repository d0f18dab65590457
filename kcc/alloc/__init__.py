"""Memory planning: buffer lifetimes and their packing into one address space.

`plan_memory` is the entry point (first fit, greedy packers, CP-SAT; best deterministic plan);
`MemoryReport` explains the result to the user.
"""

from kcc.alloc.packing import Buffer, Plan, first_fit, live_lower_bound, plan_errors
from kcc.alloc.planner import MemoryOverflowError, PlanResult, plan_memory
from kcc.alloc.report import MemoryReport

__all__ = ["Buffer", "MemoryOverflowError", "MemoryReport", "Plan", "PlanResult", "first_fit", "live_lower_bound",
           "plan_errors", "plan_memory"]
