"""No import cycles between cmpt's modules.

Every ``import cmpt...``, ``from cmpt... import ...`` and relative import is an edge, wherever it
stands: at module level, inside a function or method, or under ``if TYPE_CHECKING:``. A deferred
(function-level) import only hides a cycle until the import order changes, and a type-checking
import is a cycle for the type checker, so both count. ``from cmpt.x import y`` is an edge to the
submodule ``cmpt.x.y`` when there is one, else to ``cmpt.x``; ``cmpt/pkg/__init__.py`` is
``cmpt.pkg``, and an import of a package's re-exports is an edge to that ``__init__``. Importing
``cmpt.x.y`` also runs the ``__init__`` of every package above it, but Python has finished (or is
finishing) those first, so parent packages are not edges of their own.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cmpt"

#: module -> {imported module: line numbers of the imports}
Graph = dict[str, dict[str, list[int]]]


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``root`` by dotted name (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from ... import`` names (relative ones resolved against ``importer``)."""
    if node.level == 0:
        return node.module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base) or None


def imports_of(name: str, path: Path, modules: Iterable[str], package: str = PACKAGE) -> dict[str, list[int]]:
    """The modules of ``package`` that module ``name`` (the file ``path``) imports, anywhere in it."""
    known = set(modules)
    edges: dict[str, list[int]] = {}

    def add(target: str | None, line: int) -> None:
        if target and target != name and (target == package or target.startswith(package + ".")):
            lines = edges.setdefault(target, [])
            if line not in lines:  # one statement may import several names
                lines.append(line)

    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, is_package, node)
            if source is None:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in known else source, node.lineno)
    return edges


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    files = module_files(root, package)
    return {name: imports_of(name, path, files, package) for name, path in files.items()}


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The components of ``graph`` that hold a cycle: more than one module, or one importing itself."""
    return sorted(c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph.get(c[0], ()))


def a_cycle(graph: Mapping[str, Iterable[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the first module of ``component``: ``[a, b, ..., a]``."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child in members and child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")


def describe(graph: Graph, files: Mapping[str, Path], root: Path = ROOT) -> str:
    """Every cycle of ``graph``, each with one concrete loop and the lines that import."""
    lines = []
    for component in cycles(graph):
        loop = a_cycle(graph, component)
        steps = " -> ".join(
            f"{b} ({files[a].relative_to(root)}:{','.join(map(str, graph[a][b]))})" for a, b in zip(loop, loop[1:])
        )
        lines.append(f"- {{{', '.join(component)}}}: {loop[0]} -> {steps}")
    return "\n".join(lines)


def test_cmpt_has_no_import_cycles():
    files = module_files()
    assert "cmpt" in files and "cmpt.results" in files and "cmpt.backbones" in files
    graph = import_graph()
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s) between cmpt modules:\n{describe(graph, files)}"


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"g"}, "g": {"f", "a"}}
    assert cycles(graph) == [["a", "b", "c"], ["e"], ["f", "g"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert a_cycle(graph, ["e"]) == ["e", "e"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_every_kind_of_import_is_an_edge(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from cmpt.top import VALUE\n")
    (pkg / "top.py").write_text("VALUE = 1\n")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import thing\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import cmpt.top\n"
        "from .. import top\n"
        "from cmpt.sub import thing as _t, thing as _u\n"
        "if TYPE_CHECKING:\n"
        "    from cmpt.typed import T\n"
        "def thing():\n"
        "    from . import helper\n"
        "    import json\n"
        "class K:\n"
        "    def method(self):\n"
        "        from cmpt import top as again\n"
    )
    for name in ("helper", "typed"):
        (pkg / "sub" / f"{name}.py").write_text("")
    (pkg / "typed.py").write_text("from cmpt.sub.leaf import thing\n")
    graph = import_graph(tmp_path)
    assert graph["cmpt"] == {"cmpt.top": [1]}
    assert graph["cmpt.sub"] == {"cmpt.sub.leaf": [1]}
    assert graph["cmpt.sub.leaf"] == {"cmpt.top": [3, 4, 13], "cmpt.sub": [5], "cmpt.typed": [7],
                                      "cmpt.sub.helper": [9]}
    files = module_files(tmp_path)
    assert cycles(graph) == [["cmpt.sub", "cmpt.sub.leaf", "cmpt.typed"]]
    assert describe(graph, files, tmp_path) == ("- {cmpt.sub, cmpt.sub.leaf, cmpt.typed}: cmpt.sub -> cmpt.sub.leaf "
                                                "(cmpt/sub/__init__.py:1) -> cmpt.sub (cmpt/sub/leaf.py:5)")


#: The floors of the package, top first: a module imports only from its own floor or the floors above it,
#: so data flows one way (docs/architecture.md draws the same). A name stands for a module or a package
#: with everything under it (``cmpt``, the package's own ``__init__``, for itself only); every module must
#: be on a floor.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("cmpt.errors", "cmpt.atomic", "cmpt.jsonable", "cmpt.devices", "cmpt.assets", "cmpt.stats",
                    "cmpt.verdicts", "cmpt.chapter_values", "cmpt.plotting")),
    ("models", ("cmpt.backbones", "cmpt.prompts", "cmpt.transfer", "cmpt.spt")),
    ("settings", ("cmpt.settings",)),
    ("profiles", ("cmpt.profiles", "cmpt")),
    ("inputs", ("cmpt.data", "cmpt.features", "cmpt.target_data", "cmpt.published_prompts")),
    ("store", ("cmpt.results", "cmpt.model_files")),
    ("runs", ("cmpt.run_config", "cmpt.train", "cmpt.calibration", "cmpt.runner", "cmpt.sweep", "cmpt.cost",
              "cmpt.protocol", "cmpt.source_training", "cmpt.experiments", "cmpt.plans", "cmpt.scarcity")),
    ("analyses", ("cmpt.analysis", "cmpt.claims", "cmpt.scarcity_curves", "cmpt.attention_maps", "cmpt.gaps",
                  "cmpt.transferability", "cmpt.theory")),
    ("pages and tools", ("cmpt.book", "cmpt.book_chapters", "cmpt.book_kernel", "cmpt.book_pages",
                         "cmpt.book_sphinx", "cmpt.book_widgets", "cmpt.cli", "cmpt.__main__", "cmpt.bench",
                         "cmpt.bench_config", "cmpt.perf")),
)


def floor_of(module: str, floors=FLOORS) -> int | None:
    """The index of ``module``'s floor: the floor naming it, else the one naming its closest package."""
    best: tuple[int, int] | None = None  # (length of the matching name, floor)
    for index, (_, names) in enumerate(floors):
        for name in names:
            if module == name or (name != PACKAGE and module.startswith(name + ".")):
                if best is None or len(name) > best[0]:
                    best = (len(name), index)
    return None if best is None else best[1]


def imports_up(graph: Graph, floors=FLOORS) -> list[str]:
    """Every import of a module on a lower floor by one on a higher floor (the data flowing back)."""
    out = []
    for module, targets in sorted(graph.items()):
        here = floor_of(module, floors)
        for target, lines in sorted(targets.items()):
            there = floor_of(target, floors)
            if here is not None and there is not None and there > here:
                out.append(f"{module} ({floors[here][0]}) imports {target} ({floors[there][0]}), line {lines[0]}")
    return out


def test_every_module_is_on_a_floor_and_imports_only_from_its_floor_or_above():
    graph = import_graph()
    unplaced = sorted(m for m in graph if floor_of(m) is None)
    assert not unplaced, f"put these modules on a floor in FLOORS (and docs/architecture.md): {unplaced}"
    up = imports_up(graph)
    assert not up, "imports that go back up the data flow:\n" + "\n".join(up)


def test_an_import_back_up_is_caught():
    floors = (("top", ("pkg.a",)), ("bottom", ("pkg.b",)))
    assert imports_up({"pkg.a": {"pkg.b": [3]}, "pkg.b": {"pkg.a": [1]}}, floors) == [
        "pkg.a (top) imports pkg.b (bottom), line 3"]
    assert floor_of("pkg.b.c", floors) == 1 and floor_of("other", floors) is None
    assert floor_of("cmpt.newmodule") is None  # the package's name does not place its modules
