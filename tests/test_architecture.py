"""The import directions of kcc and kpu_sim (issue #19), read from the source with `ast`, nothing imported.

Every `import` counts, at module level or inside a function: a function-level import is a dependency
that only shows up later (imports under `if TYPE_CHECKING:` never run and are not counted). A
first-party import inside a function is allowed only where LAZY lists it with its reason; breaking a
cycle is not a reason. Importing `kcc.a.b` also runs the package `kcc.a` (its `__init__.py`), so
that edge is added too, except for the root `kcc`, which imports nothing at module level (checked
below) and `kcc.api` only when `kcc.compile` is first read.

The rules:
- the compiler's front half (frontend, ir, passes, quant) never reaches emit, alloc, report, cli or
  OR-tools, directly or through anything it imports;
- `kcc.kmodel` is the leaf the writer and the simulator share: it imports only `kcc.errors`, and
  `kpu_sim` reaches nothing of kcc but `kcc.kmodel` and `kcc.errors`;
- no import cycle;
- every module belongs to a layer of LAYERS and imports only the layers ALLOWED lists for it.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kcc", "kpu_sim")
EXTERNAL = ("ortools",)  # third-party nodes the rules name

# layer -> module patterns (fnmatch; "kcc.ir" also covers "kcc.ir.*"). The stages in pipeline order,
# frontend -> ir -> passes -> quant -> emit -> kmodel, plus what serves them and what drives them.
LAYERS: dict[str, tuple[str, ...]] = {
    "errors": ("kcc.errors",),
    "common": ("kcc.options", "kcc.atomic", "kcc.progress", "kcc.dataset"),  # options, file IO, bars, data
    "ir": ("kcc.ir",),
    "eval": ("kcc.eval",),  # the IR interpreter: constant folding, calibration, float references
    "frontend": ("kcc.frontend",),
    "passes": ("kcc.passes",),
    "quant": ("kcc.quant",),
    "kmodel": ("kcc.kmodel",),
    "target": ("kcc.target",),  # the K210's limits, line layout, weight-load rule, register fields, costs
    "latency": ("kcc.latency",),
    "alloc": ("kcc.alloc",),
    "emit": ("kcc.emit*",),
    "driver": ("kcc.pipeline", "kcc.api"),
    "report": ("kcc.report*",),
    "cli": ("kcc.cli*", "kcc.__main__"),
    "root": ("kcc",),
    "kpu_sim": ("kpu_sim",),
    "ortools": ("ortools",),
}

_COMPILER = {"frontend", "ir", "eval", "passes", "quant", "target", "kmodel", "latency", "alloc", "emit"}
# layer -> the other layers it may import. A stage may read the types of the stages before it, never
# one after it; kmodel and target are facts about the file and the chip that every later stage shares.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "common": {"errors"},
    "ir": {"errors"},
    "eval": {"ir", "errors"},
    "frontend": {"ir", "common", "errors"},
    "kmodel": {"errors"},
    "target": {"kmodel", "errors"},
    "passes": {"ir", "eval", "target", "kmodel", "common", "errors"},
    # quant reads the frontend's pre-quantized grids (kcc.frontend.quantization) and the passes' facts
    "quant": {"ir", "eval", "frontend", "passes", "target", "kmodel", "common", "errors"},
    "latency": {"target", "kmodel", "errors"},
    "alloc": {"ortools", "common", "errors"},
    "emit": {"ir", "quant", "target", "kmodel", "alloc", "common", "errors"},
    "driver": _COMPILER | {"report", "common", "errors"},
    # the report reads a compile result, runs the simulator and prints the version; it never drives
    "report": _COMPILER | {"kpu_sim", "root", "common", "errors"},
    "cli": _COMPILER | {"driver", "report", "kpu_sim", "root", "common", "errors"},
    "root": {"driver"},
    "kpu_sim": {"kmodel", "errors"},
    "ortools": set(),
}

# (importer pattern, imported pattern) -> why the import sits inside a function
LAZY: dict[tuple[str, str], str] = {
    ("kcc", "kcc.api"): "`kcc.compile` loads on first use: `import kcc.kmodel` (kpu_sim) must not load "
                        "the compiler",
    ("kcc.cli*", "*"): "until main() installs the Ctrl-C handler a Ctrl-C is a traceback: the commands "
                       "load the compiler, `kcc --help` and usage errors do not",
    ("kcc.api", "kcc.pipeline"): "the compiler (tflite, OR-tools) loads on the first call of `kcc.compile`, "
                                 "not when the name is read",
    ("kcc.api", "kcc.report*"): "the report (and kpu_sim) loads only when `kcc.compile(report=...)` asks",
}

FRONT_HALF = ("kcc.passes", "kcc.quant", "kcc.frontend", "kcc.ir")
BACK_END = ("kcc.emit*", "kcc.alloc", "kcc.report*", "kcc.cli*", "ortools")


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return fnmatch.fnmatchcase(module, pattern)
    return module == pattern or module.startswith(pattern + ".")


def _layer(module: str) -> str | None:
    best = None
    for layer, patterns in LAYERS.items():
        for p in patterns:
            if _matches(module, p) and (best is None or len(p) > len(best[1])):
                best = (layer, p)
    return best[0] if best else None


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module that `name` (a module, or a name inside one) loads; None if not first-party."""
    if name.split(".")[0] in EXTERNAL:
        return name.split(".")[0]
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


class _Imports(ast.NodeVisitor):
    """(imported module, line, inside a function) of every import of one module."""

    def __init__(self, module: str, is_package: bool):
        self.package = module.split(".") if is_package else module.split(".")[:-1]
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If):
        test = node.test
        if isinstance(test, ast.Name | ast.Attribute) and getattr(test, "id", getattr(test, "attr", "")) \
                == "TYPE_CHECKING":
            for child in node.orelse:  # annotations only: never run
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, name: str, line: int):
        target = _resolve(name)
        if target is not None and (target, line, self.depth > 0) not in self.found:
            self.found.append((target, line, self.depth > 0))

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom):
        base = node.module or ""
        if node.level:
            up = self.package[:len(self.package) - (node.level - 1)]
            base = ".".join(up + ([node.module] if node.module else []))
        for alias in node.names:  # `from kcc import report` loads the module kcc.report
            self._add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, node.lineno)


def _graph() -> nx.DiGraph:
    """Module -> module it loads; each edge's "sites" are (line, inside a function, named in the import)."""
    g = nx.DiGraph()
    g.add_nodes_from(MODULES)

    def add(a: str, b: str, line: int, lazy: bool, named: bool):
        g.add_edge(a, b)
        g.edges[a, b].setdefault("sites", []).append((line, lazy, named))

    for module, path in MODULES.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        for target, line, lazy in visitor.found:
            if target not in own:  # `from kcc import __version__`, `import ortools`, `from kcc.ir import ops`
                add(module, target, line, lazy, True)
            parts = target.split(".")  # and the packages loading `target` runs first, but the root
            for parent in (".".join(parts[:i]) for i in range(2, len(parts))):
                if parent in MODULES and parent not in own:
                    add(module, parent, line, lazy, False)
    return g


GRAPH = _graph()


def _named(a: str, b: str) -> list[tuple[int, bool]]:
    """(line, inside a function) of the imports of `a` that name `b`."""
    return [(line, lazy) for line, lazy, named in GRAPH.edges[a, b]["sites"] if named]


def _where(a: str, b: str) -> str:
    lines = ", ".join(f"{line}{' (in a function)' if lazy else ''}" for line, lazy in _named(a, b))
    return f"{a} -> {b} ({MODULES[a].relative_to(ROOT)}:{lines})"


def _crossings(sources, outside) -> list[str]:
    """The shortest import chain from each module of `sources` to each module it reaches for which
    `outside(module)` holds, where that module is the first such one on the chain."""
    found = []
    for m in sorted(filter(sources, GRAPH)):
        for d in sorted(nx.descendants(GRAPH, m)):
            chain = nx.shortest_path(GRAPH, m, d)
            if outside(d) and not any(outside(c) for c in chain[1:-1]):
                found.append(" -> ".join(chain))
    return found


def _direct_edges():
    """(a, b) of every import statement of `a` that names `b`."""
    return [(a, b) for a, b in GRAPH.edges if _named(a, b)]


def test_the_graph_is_read():
    # a guard against a parser that finds nothing: these edges exist since the first commit
    assert GRAPH.has_edge("kpu_sim.program", "kcc.kmodel")
    assert GRAPH.has_edge("kcc.alloc.solver", "ortools")
    assert len(MODULES) > 50


def test_the_reader_sees_every_kind_of_import():
    source = """
import kcc.ir.graph
from ..ir import ops
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from kcc.alloc import planner
def f():
    from kcc.kmodel import spec
    import ortools.sat.python.cp_model
"""
    visitor = _Imports("kcc.passes.example", is_package=False)
    visitor.visit(ast.parse(source))
    assert visitor.found == [("kcc.ir.graph", 2, False), ("kcc.ir.ops", 3, False),
                             ("kcc.kmodel.spec", 8, True), ("ortools", 9, True)]


def test_every_module_has_a_layer():
    assert [m for m in GRAPH if _layer(m) is None] == []


def test_front_half_reaches_no_back_end():
    bad = _crossings(lambda m: any(_matches(m, p) for p in FRONT_HALF),
                     lambda m: any(_matches(m, p) for p in BACK_END))
    assert not bad, "\n".join(bad)


def test_kmodel_is_a_leaf():
    bad = [_where(a, b) for a, b in _direct_edges()
           if _matches(a, "kcc.kmodel") and not (_matches(b, "kcc.kmodel") or b == "kcc.errors")]
    assert not bad, "\n".join(bad)


def test_kpu_sim_reaches_only_kmodel_and_errors():
    allowed = ("kpu_sim", "kcc.kmodel", "kcc.errors")
    bad = _crossings(lambda m: _matches(m, "kpu_sim"), lambda m: not any(_matches(m, p) for p in allowed))
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(GRAPH) if len(c) > 1]
    cycles += [[a] for a, b in GRAPH.edges if a == b]
    detail = [" -> ".join(c + [c[0]]) for comp in cycles
              for c in [next(nx.simple_cycles(GRAPH.subgraph(comp)))]]
    assert not detail, "\n".join(detail)


def test_layers_import_only_what_they_may():
    bad = []
    for a, b in _direct_edges():
        la, lb = _layer(a), _layer(b)
        if la and lb and la != lb and lb not in ALLOWED[la]:
            bad.append(f"{la} -> {lb}: {_where(a, b)}")
    assert not bad, "\n".join(sorted(bad))


def test_lazy_imports_are_listed():
    bad = []
    for a, b in _direct_edges():
        listed = any(_matches(a, pa) and _matches(b, pb) for pa, pb in LAZY)
        if any(lazy for _, lazy in _named(a, b)) and b not in EXTERNAL and not listed:
            bad.append(_where(a, b))
    assert not bad, "\n".join(sorted(bad))


def test_root_package_imports_nothing_at_load():
    # kpu_sim imports kcc.kmodel, which runs kcc/__init__.py first
    loaded = [_where("kcc", b) for b in GRAPH.successors("kcc")
              if not all(lazy for _, lazy in _named("kcc", b))]
    assert loaded == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_the_tables_agree(layer):
    assert layer in LAYERS and ALLOWED[layer] <= set(LAYERS)
