"""kpu_sim: runs any kmodel v4 (nncase v0.2, K210) with the nncase v0 runtime's semantics.

    program = kpu_sim.load("model.kmodel")
    outputs = program.run([x])          # flat 1-D arrays, one per model output

Imports only `kcc.kmodel` and `kcc.errors` from kcc.
"""

from kpu_sim.kernels import KERNELS
from kpu_sim.memory import Memory
from kpu_sim.program import Program, TensorInfo, Trace, load

__all__ = ["KERNELS", "Memory", "Program", "TensorInfo", "Trace", "load"]
