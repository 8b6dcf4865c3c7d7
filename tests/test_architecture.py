"""The layout's rules, checked from the source: dependencies among ``hotdog`` modules point
one way (no cycles, counting imports inside functions too), the engine never imports
streamlit, and pages never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from hotdog import data`
    return out


def hotdog_graph() -> dict[str, set[str]]:
    files = sorted((REPO / "hotdog").rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    graph = {}
    for name, f in modules.items():
        deps = {m for m in imports_of(f) if m in modules and m != name and m != "hotdog"}
        # A package's __init__ re-exporting its own submodules is not a dependency cycle.
        graph[name] = {d for d in deps if not (f.name == "__init__.py" and d.startswith(name + "."))}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles_in_hotdog():
    cycle = find_cycle(hotdog_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_engine_never_imports_streamlit():
    for f in (REPO / "hotdog").rglob("*.py"):
        assert not any(m.split(".")[0] == "streamlit" for m in imports_of(f)), f


def test_run_store_knows_nothing_of_the_engine():
    engine = {"hotdog.train", "hotdog.settings", "hotdog.models", "hotdog.predict", "hotdog.jobs"}
    assert not (imports_of(REPO / "hotdog" / "runs.py") & engine)


def test_pages_do_not_import_each_other():
    pages = {f"pages.{p.stem}" for p in (REPO / "pages").glob("*.py")}
    for f in (REPO / "pages").glob("*.py"):
        assert not (imports_of(f) & pages), f
