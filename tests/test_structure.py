"""The package's shape, read from its source (ast, nothing imported): no import circle among nexsearch's modules
(imports under ``if TYPE_CHECKING:`` aside), no module importing another's private name, the verbs as siblings
(none imports another), and no function longer than 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nexsearch"

# the commands' modules: each reads the run through nexsearch.runview, none imports another
VERBS = ("nexsearch.evaluate", "nexsearch.export", "nexsearch.analysis.report", "nexsearch.runners.status")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """(module, names) of every import outside ``if TYPE_CHECKING:`` blocks, at any depth."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        stack.extend(ast.iter_child_nodes(node))


def _edges() -> dict[str, set[str]]:
    """Module -> the nexsearch modules it imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        out = edges.setdefault(name, set())
        for module, names in _imports(ast.parse(path.read_text())):
            if not module.startswith("nexsearch"):
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            if subs:
                out.update(subs)
            if module in MODULES and (len(subs) < len(names) or not names):
                out.add(module)
        out.discard(name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _reach(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in edges.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_checker_finds_a_circle_and_a_verb_edge():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _reach({"a": {"b"}, "b": {"c"}}, "a") == {"b", "c"}
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\ndef f():\n    import y\n")
    assert sorted(m for m, _ in _imports(tree)) == ["typing", "y"]


def test_no_import_circle():
    assert _cycles(_edges()) == []


def test_no_module_imports_a_private_name_of_another():
    private = []
    for name, path in MODULES.items():
        for module, names in _imports(ast.parse(path.read_text())):
            if module.startswith("nexsearch"):
                private += [f"{name}: from {module} import {n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_the_verbs_import_none_of_each_other():
    edges = _edges()
    assert {v: sorted(_reach(edges, v) & set(VERBS)) for v in VERBS} == {v: [] for v in VERBS}


def test_the_run_view_and_the_evaluation_store_load_nothing_heavy():
    """``nexsearch status`` reads through them: no torch, SMAC, pandas or matplotlib on the way."""
    edges = _edges()
    for module in ("nexsearch.runview", "nexsearch.runners.status", "nexsearch.objectives.table",
                   "nexsearch.runners.optimizers"):
        reached = _reach(edges, module) | {module}
        assert "nexsearch.device" not in reached and "nexsearch.search_space.builder" not in reached, module


MAX_FUNCTION_LINES = 60


def _long_functions(tree: ast.AST, where: str) -> list[str]:
    """Functions and methods (nested ones too) of more than ``MAX_FUNCTION_LINES`` lines, decorators aside."""
    return [f"{where}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_the_length_checker_finds_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert _long_functions(ast.parse(f"def f():\n{body}\n"), "m") == [f"m:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
    assert _long_functions(ast.parse("def f():\n    return 1\n"), "m") == []


def test_no_function_is_longer_than_60_lines():
    long = [f for name, path in MODULES.items() for f in _long_functions(ast.parse(path.read_text()), name)]
    assert long == []
