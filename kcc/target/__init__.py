"""The compile target: what the K210 and its nncase v0.2 runtime allow and cost, in one place.

    k210         the KPU's limits, the 64-byte line layout, the weight-load rule, the register fields
                 derived from a layer's shapes, and the cycle cost model of the KPU and the runtime's CPU
    quant_rules  nncase v0.2's range fixup and the uint8 weight grids the KPU represents exactly

Used by the passes (legalize_kpu, decompose_kernels), the emitter, the quantizer and `kcc.latency`;
it imports only `kcc.kmodel`, `kcc.errors` and numpy, never a pass, emit, alloc or OR-tools, so any
pass may import it.

Why the format facts stay in `kcc.kmodel` and are re-exported here: the line layout fixes
`memory_range.size` of KPU tensors, and the derived register fields are what `kmodel.layer_problems`
checks any kmodel against (ncc's files too). The reader, that validator and `kpu_sim` need them with
no compiler code behind them, and `kcc.kmodel` is the leaf both the writer and the simulator import.
So the facts of the file format are written once there, and `kcc.target.k210` adds what only a
compiler needs (placement limits, costs) and names the whole set for the compiler's use.
"""
