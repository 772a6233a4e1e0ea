"""No import cycle through the data side, counting imports inside functions too (read with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cmpt"
#: modules whose imports must be one way
CHECKED = ("cmpt.data.task", "cmpt.data.vtab", "cmpt.data.image_tasks", "cmpt.data.generated", "cmpt.data.splits",
           "cmpt.data.text_tasks", "cmpt.data.text_hub", "cmpt.features", "cmpt.target_data",
           "cmpt.published_prompts", "cmpt.bench", "cmpt.bench_config", "cmpt.perf")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every cmpt module ``path`` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from a.b import c` imports the submodule a.b.c when there is one, else names of a.b
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_data_side_modules_import_one_way():
    modules = _modules()
    assert set(CHECKED) <= set(modules)
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    bad = [sorted(c) for c in _cycles(graph) if c & set(CHECKED)]
    assert not bad, f"import cycles through the data side: {bad}"
    # the direction the design promises
    assert "cmpt.data.task" in graph["cmpt.data.vtab"] and "cmpt.data.vtab" in graph["cmpt.data.image_tasks"]
    assert "cmpt.bench_config" in graph["cmpt.perf"] and "cmpt.bench_config" in graph["cmpt.bench"]
    assert "cmpt.bench" not in graph["cmpt.perf"]


def test_the_walk_sees_imports_inside_functions():
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    assert "cmpt.perf" in graph["cmpt.bench"]  # imported inside run_bench only
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
