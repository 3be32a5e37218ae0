"""The import map of the package: imports run one way (cli -> serve -> apps, interop -> train -> runs -> families
-> eval -> data, models, runtime, config -> optim, errors, fileio, version) and no modules import each other in a
circle.

Read from the source with ``ast`` (every import statement, also those inside functions), so the test needs
nothing imported and names the offending import when it fails."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "src" / "smoltrain"
# Higher imports lower (or its own level). The package face (__init__) and __main__ sit on top of everything.
LEVELS = {
    "__main__": 10, "__init__": 10, "cli": 9, "serve": 8, "apps": 7, "interop": 7, "train": 6, "runs": 5, "families": 4,
    "eval": 3, "data": 2, "models": 2, "runtime": 2, "config": 2, "recipes": 2,
    "optim": 1, "errors": 0, "fileio": 0, "version": 0,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported smoltrain module, line, at module level) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smoltrain"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(name, node.lineno, id(node) in top) for name in [node.module, *names]]
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names
                      if alias.name.startswith("smoltrain")]
    return found


def _level(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return LEVELS[part]


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_imports_run_one_way() -> None:
    modules = _modules()
    upward = []
    for name, path in modules.items():
        is_face = path.name == "__init__.py" and path.parent == PACKAGE
        for target, line, _ in _imports(path):
            if target not in modules or is_face:  # a name imported from a module, or the lazy package face
                continue
            if _level(target) > _level(name if path.name != "__init__.py" else name + ".__init__"):
                upward.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_no_module_level_import_circle() -> None:
    modules = _modules()
    # A submodule's own parent packages are being imported when it runs: no edge to them.
    graph = {name: sorted({t for t, _, top in _imports(path)
                           if top and t in modules and t != name and not name.startswith(t + ".")})
             for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
