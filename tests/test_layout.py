"""The package's shape: no import cycle between modules, and lower layers never import the stages or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "alad"
# the stages and front ends, and the packages below them that must never reach up to them
UPPER = {"recipes", "cli", "export", "finetuning", "__main__"}
LOWER = {"io", "data", "evaluation", "adapters", "tasks", "compression", "models", "training", "alignment"}
LOWER |= {"validation"}
INFRASTRUCTURE = LOWER - {"alignment"}  # below alignment: never import it either


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """alad modules imported by ``path``: at module level, and anywhere (function-level included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    top, anywhere = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("alad"):
            for alias in node.names:  # "from alad.x import y": y may be a submodule
                sub = f"{node.module}.{alias.name}"
                names.append(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("alad")]
        found = {name for name in names if name in modules}
        anywhere |= found
        if id(node) in top_level:
            top |= found
    return top, anywhere


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {name: _imports(path, modules)[0] - {name} for name, path in modules.items()}
    # a package's __init__ may import its own submodules (re-exports); cycles through it are not real
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and modules[t].name == "__init__.py")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*trail, node, target])
            if target not in state:
                visit(target, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert len(state) > 40  # every module was read


def test_lower_layers_never_import_the_stages_or_the_cli():
    modules = _modules()
    for name, path in modules.items():
        package = _package(name)
        if package not in LOWER:
            continue
        _, anywhere = _imports(path, modules)
        upward = sorted(m for m in anywhere if _package(m) in UPPER)
        assert not upward, f"{name} imports {upward}, a stage or front end above it"
        if package in INFRASTRUCTURE:
            assert not [m for m in anywhere if _package(m) == "alignment"], f"{name} imports alignment, a layer above"
