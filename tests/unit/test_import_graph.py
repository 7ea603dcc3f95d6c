"""The package's imports go one way: no module imports, directly or through others, a module
that imports it back. Imports inside functions count (a lazy import hides a cycle, it does not
remove it); imports only for type checkers (`if TYPE_CHECKING:`) do not."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports (a `from package import name` of a module
    counts as that module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(this)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: imports_of(path, modules) for name, path in paths.items()}
    # A package's __init__ runs before any of its modules: importing `a.b` imports `a` too.
    for name, targets in graph.items():
        for target in list(targets):
            parent = target.rpartition(".")[0]
            while parent and parent != name and not name.startswith(parent + "."):
                targets.add(parent)
                parent = parent.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "pipeline.core.correlate" in graph["pipeline.core.engine"]
    assert "pipeline.state.rocks" in graph["pipeline.replay"] or any(
        "pipeline.state.rocks" in graph[m] for m in graph if m.startswith("pipeline.replay")
    )


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_core_imports_no_adapter() -> None:
    """`pipeline.core` is pure: it imports nothing of the workers, store, API or CLI."""
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("pipeline.core"):
            outside = {
                t
                for t in targets
                if not t.startswith("pipeline.core") and t not in ("pipeline", "pipeline.resources")
            }
            assert not outside, f"{name} imports {sorted(outside)}"


def test_the_folders_import_one_way() -> None:
    """The direction docs/DESIGN.md's map gives: no folder imports one that imports it."""
    graph = import_graph()
    layers: dict[str, set[str]] = {}
    for name, targets in graph.items():
        here = name.split(".")[1] if "." in name else name
        layers.setdefault(here, set()).update(
            t.split(".")[1] for t in targets if "." in t and t.split(".")[1] != here
        )
    assert cycles(layers) == []
    assert not layers["state"] & {"stream", "replay", "store", "api"}
    assert not layers["store"] & {"stream", "replay", "state", "api"}
