"""The import graph of ``src/ferlab``: no cycle, counting the imports inside functions too, and
every import left inside a function says why (what heavy library it keeps out of a light
import: ``# lazy: torch``).

Edges come from the AST of every module: ``import ferlab.x.y`` and ``from ferlab.x import y``
(an edge to module ``ferlab.x.y`` when ``y`` is a module, else to ``ferlab.x``), at any depth,
except under ``if TYPE_CHECKING:`` (annotations only, never run)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((SRC / "ferlab").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """(target module, line, inside a function) of every ferlab import of one module."""

    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.module, self.modules = module, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []

    def _resolve(self, name: str) -> str | None:
        while name and name not in self.modules:
            name = name.rpartition(".")[0]
        return name or None

    def _add(self, target: str | None, node: ast.stmt) -> None:
        if target and target != self.module:
            self.found.append((target, node.lineno, self.depth > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node):
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.startswith("ferlab"):
                self._add(self._resolve(alias.name), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if not source.startswith("ferlab"):
            return
        for alias in node.names:
            full = f"{source}.{alias.name}"
            self._add(full if full in self.modules else self._resolve(source), node)


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    inside: list[tuple[str, int, str]] = []
    for module, path in modules.items():
        visitor = _Imports(module, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        for target, line, in_function in visitor.found:
            graph[module].add(target)
            if in_function:
                inside.append((module, line, target))
    return graph, inside


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_finder_sees_a_cycle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _a_cycle(graph) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b"}, "b": set()}) is None
    source = "def f():\n    from ferlab.x import y\n"
    visitor = _Imports("ferlab.z", False, {"ferlab.x": Path(), "ferlab.x.y": Path()})
    visitor.visit(ast.parse(source))
    assert visitor.found == [("ferlab.x.y", 2, True)]


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    graph, _ = _graph()
    assert len(graph) > 50  # the whole package was read
    cycle = _a_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_import_inside_a_function_says_why() -> None:
    _, inside = _graph()
    modules = _modules()
    silent = []
    for module, line, target in inside:
        lines = modules[module].read_text(encoding="utf-8").splitlines()
        statement = lines[line - 1]
        end = line
        while "(" in statement and ")" not in lines[end - 1]:  # a parenthesised name list
            end += 1
        if not any("#" in text for text in lines[line - 1 : end]):
            silent.append(f"{modules[module].relative_to(REPO)}:{line} imports {target}")
    assert not silent, (
        "imports inside functions without a reason (move them to the top, or say what they "
        "keep out, e.g. `# lazy: torch`):\n" + "\n".join(silent)
    )
