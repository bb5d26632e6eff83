"""The rplat distribution's import graph has no cycle, so every module can be read after the ones it imports.

The graph is built from the source, not from a running interpreter: every `import` and `from ... import`
statement of every module the distribution installs (pyproject's `package-dir` says which folder is which
package) is an edge, at module level and inside functions alike, since a function-level import only defers a
cycle to the first call. Imports under `if TYPE_CHECKING:` count too: a module that names another's types
while that one imports it back is the same knot, only hidden from the interpreter. An edge goes to the module
a statement names (`from rplat import serve` names `rplat.serve`; `from rplat.llm import Sampling` names
`rplat.llm`); the parent packages Python initialises on the way are not edges, or every package whose
`__init__` imports one of its own modules would be a cycle. Modules outside the distribution are left out, and
so are imports by name at run time (`importlib.import_module`, the kind registry's entry points): they are not
statements, and a registry that loads its plugins that way is meant to be imported by them.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Graph = Mapping[str, Sequence[str]]


def distribution_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> source file, for every module under the folders pyproject maps to packages."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules: dict[str, Path] = {}
    for package, folder in setuptools["package-dir"].items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The distribution's modules one import statement of `module` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            source = ".".join(p for p in (package, node.module) if p)
        else:
            source = node.module or ""
        # `from package import name` names the submodule when there is one, else the package itself
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]
    yield from (name for name in names if name in known)


def import_graph(modules: Mapping[str, Path]) -> dict[str, list[str]]:
    """Module -> the distribution's modules it imports, anywhere in its source."""
    known = set(modules)
    graph: dict[str, list[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = {target for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                   for target in _imported(node, module, is_package, known)}
        graph[module] = sorted(targets - {module})
    return graph


def find_knots(graph: Graph) -> list[list[str]]:
    """The modules that import each other round a cycle, knot by knot (the strongly connected parts of `graph`
    with more than one module, or one that imports itself; Tarjan's algorithm), each sorted, in name order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    knots: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            knot = []
            while not knot or knot[-1] != node:
                knot.append(stack.pop())
                on_stack.discard(knot[-1])
            if len(knot) > 1 or node in graph.get(node, ()):
                knots.append(sorted(knot))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(knots)


def cycle_in(graph: Graph, knot: Sequence[str]) -> list[str]:
    """A shortest cycle through the knot's first module, as a closed path `[a, b, ..., a]` (breadth first, inside
    the knot)."""
    start, members = knot[0], set(knot)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt in members and nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise ValueError(f"{list(knot)} is not a knot of the graph")


def describe(graph: Graph, knots: Sequence[Sequence[str]]) -> str:
    """Each knot as one of its cycles, and its other members when the cycle does not pass them all."""
    lines = []
    for knot in knots:
        cycle = cycle_in(graph, knot)
        rest = sorted(set(knot) - set(cycle))
        lines.append(" -> ".join(cycle) + (f" (tied in the same knot: {', '.join(rest)})" if rest else ""))
    return "; ".join(lines)


# --- the detector, on graphs small enough to check by hand -----------------------------------------------


def test_a_graph_without_a_cycle_has_no_knot() -> None:
    assert find_knots({"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a"]}) == []


def test_each_knot_is_found_with_all_its_modules_and_a_self_import_is_one() -> None:
    graph = {"a": ["b"], "b": ["a", "c"], "c": ["d"], "d": ["e"], "e": ["c"], "f": ["f"], "g": ["a"]}
    assert find_knots(graph) == [["a", "b"], ["c", "d", "e"], ["f"]]


def test_a_cycle_is_named_as_a_closed_path_from_the_knots_first_module() -> None:
    graph = {"d": ["b"], "b": ["c"], "c": ["d", "e"], "e": []}
    assert [cycle_in(graph, knot) for knot in find_knots(graph)] == [["b", "c", "d", "b"]]
    assert cycle_in({"f": ["f"]}, ["f"]) == ["f", "f"]


def test_the_cycle_named_is_a_shortest_one_and_the_rest_of_its_knot_is_named_too() -> None:
    graph = {"a": ["x", "b"], "x": ["y"], "y": ["a"], "b": ["a"]}
    assert cycle_in(graph, ["a", "b", "x", "y"]) == ["a", "b", "a"]
    assert describe(graph, find_knots(graph)) == "a -> b -> a (tied in the same knot: x, y)"


# --- reading the source ----------------------------------------------------------------------------------


def _graph_of(tmp_path: Path, files: dict[str, str]) -> dict[str, list[str]]:
    modules = {}
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parts = Path(name).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return import_graph(modules)


def test_every_form_of_import_is_an_edge_to_the_module_it_names(tmp_path: Path) -> None:
    graph = _graph_of(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "\n".join([
            "from typing import TYPE_CHECKING",
            "import os",                       # outside the distribution: no edge
            "from pkg import b",               # a submodule by `from package import`
            "from . import c",                 # relative, same package
            "from .sub.d import thing",        # relative, into a subpackage
            "if TYPE_CHECKING:",
            "    from pkg.e import E",
            "def later():",
            "    import pkg.f",
        ]),
        "pkg/b.py": "from pkg import VERSION",  # a name, not a module: the package itself
        "pkg/c.py": "", "pkg/e.py": "", "pkg/f.py": "",
        "pkg/sub/__init__.py": "from ..c import x\nfrom . import d",
        "pkg/sub/d.py": "",
    })
    assert graph["pkg.a"] == ["pkg.b", "pkg.c", "pkg.e", "pkg.f", "pkg.sub.d"]
    assert graph["pkg.b"] == ["pkg"]
    assert graph["pkg.sub"] == ["pkg.c", "pkg.sub.d"]


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    graph = _graph_of(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import f",
                                 "pkg/b.py": "def f():\n    from pkg import a\n"})
    assert find_knots(graph) == [["pkg.a", "pkg.b"]]


def test_every_mapped_folder_is_read() -> None:
    modules = distribution_modules()
    for module in ("rplat", "rplat.llm.hf_fast", "rplat.runners.tdg.nat", "rplat.dashboard", "rplat.migrations.env"):
        assert module in modules
    assert modules["rplat.llm.load"] == ROOT / "platform" / "rplat" / "llm" / "load.py"


# --- the distribution --------------------------------------------------------------------------------------


def test_the_distribution_has_no_import_cycle() -> None:
    graph = import_graph(distribution_modules())
    knots = find_knots(graph)
    assert not knots, f"import cycles: {describe(graph, knots)}"

