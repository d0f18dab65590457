"""What kcc tells a user about a compile or a kmodel, after the fact; nothing here changes a kmodel.

* `compile_report`: `kcc compile --report DIR` (report.md, report.json, PNGs from `plots`), with the
  per-KPU-layer quantization error of `quant_error`;
* `summary`: the lines `kcc compile` prints once the kmodel is written (placements, CPU time, names);
* `info`: `kcc info MODEL.kmodel` (inputs, outputs and their shapes, nodes, memory, MaixPy lines);
* `weights_range`: `--dump-weights-range`, ncc's `name{min, max}` lines;
* `supported_ops`: docs/supported_ops.md, generated from the frontend's importer table.

Deliberately empty: `kcc.pipeline` imports `weights_range`, so importing the package must load
nothing else (no kpu_sim, no matplotlib); each command imports the module it needs.
"""
