"""compile_model(): the whole compiler, top to bottom, one visible stage per line.

    import_tflite -> canonicalize -> lower_float -> plan memory -> emit -> kmodel.write

Every graph stage goes through `checkpoint`, which runs the verifier and, with `--dump-ir DIR`,
writes `NN-<stage>.dot` and `NN-<stage>.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kcc import kmodel
from kcc.emit import Emitted, emit
from kcc.errors import UnsupportedModelError
from kcc.frontend.importer import import_tflite
from kcc.ir.graph import Graph
from kcc.ir.printer import format_graph, to_dot
from kcc.options import CompileOptions
from kcc.passes.canonicalize import canonicalize
from kcc.passes.lower_float import lower_float

Log = Callable[[str], None]


@dataclass
class CompileResult:
    kmodel: bytes
    graph: Graph  # the IR that was emitted
    emitted: Emitted  # memory plan and node map of the kmodel
    stages: list[str] = field(default_factory=list)


class _Checkpoints:
    def __init__(self, dump_dir: Path | None):
        self.dump_dir = dump_dir
        self.names: list[str] = []
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, g: Graph) -> Graph:
        g.verify(name)
        self.names.append(name)
        if self.dump_dir is not None:
            stem = self.dump_dir / f"{len(self.names):02d}-{name}"
            stem.with_suffix(".txt").write_text(format_graph(g))
            stem.with_suffix(".dot").write_text(to_dot(g, name))
        return g


def compile_model(model: str | Path | bytes, options: CompileOptions = CompileOptions(),
                  log: Log = lambda line: None) -> CompileResult:
    """Compile a float .tflite model into kmodel v4 bytes."""
    if options.inference_type != "float":
        raise UnsupportedModelError(
            "uint8 (KPU) compilation is not implemented yet in this kcc version; "
            "use --inference-type float for now")
    checkpoint = _Checkpoints(options.dump_ir)

    log("1. Import graph...")
    g = checkpoint("import", import_tflite(model))
    log("2. Optimize (canonicalize)...")
    g = checkpoint("canonicalize", canonicalize(g))
    log("3. Lower to kmodel neutral ops (float)...")
    g = checkpoint("lower_float", lower_float(g))
    log("4. Plan buffers and emit kmodel v4...")
    emitted = emit(g)
    data = kmodel.write(emitted.model)
    return CompileResult(data, g, emitted, checkpoint.names)
