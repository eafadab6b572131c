"""The house's shape: wings import only downward, and no modules import each other in a loop.

The wings, lowest first (docs/architecture.md): a module may import its own wing and the ones
below it, never one above. Lazy imports inside functions count too: they are imports all the
same, only later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rebuild"
WINGS = ("base", "store", "evidence", "build", "inputs", "twin", "release", "cli")
# Top-level modules that belong to a wing without being in its folder.
MEMBERS = {"errors": "base", "runtime": "base", "checks": "base", "attest": "twin",
           "__main__": "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # the package itself: its version
    return MEMBERS.get(parts[1], parts[1])


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The rebuild modules a file imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


GRAPH = import_graph()


def test_every_module_has_a_known_wing() -> None:
    assert {wing_of(m) for m in GRAPH} <= set(WINGS), sorted(GRAPH)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    rank = WINGS.index(wing_of(module))
    upward = sorted(m for m in GRAPH[module] if WINGS.index(wing_of(m)) > rank)
    assert not upward, f"{module} ({wing_of(module)}) imports a higher wing: {upward}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "modules that import each other: " + "; ".join(
        " -> ".join(c) for c in cycles)
