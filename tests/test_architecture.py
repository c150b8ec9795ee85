"""The package's shape: imports point down the layers, with no cycle; Pyro's private
attributes are touched in one adapter module only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_svi_ext"

#: lower layers first; a module may import only from its own layer or those before it
LAYERS = [
    ("kernels",),
    ("errors", "pyro_compat", "trace"),
    ("compile",),
    ("estimators",),
    ("infer",),
    ("hookspecs", "plugin_api", "builtin_plugin", "registry", "interop", "dropin",
     "pytest_plugin", "demo", "cli", "__main__", "__init__"),
]


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
            .removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports (function-level imports included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    seen: set[str] = set()
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        if node in stack:
            found.append([*stack[stack.index(node):], node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    return found


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_there_is_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_a_cycle_is_found_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_imports_point_down_the_layers():
    upward = [(m, t) for m, targets in import_graph().items() for t in targets
              if t != "pyro_svi_ext" and _layer(t) > _layer(m)]
    assert upward == []


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)  # raises StopIteration for a module outside LAYERS


def _external_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
    return found


def test_kernels_import_torch_only_and_nothing_imports_pyro_inference_code():
    for path in (PACKAGE / "kernels").rglob("*.py"):
        outside = {m for m in _external_imports(path)
                   if not m.startswith(("pyro_svi_ext", "torch", "__future__", "math",
                                        "numbers", "collections", "dataclasses",
                                        "heapq", "typing"))}
        assert outside == set(), (path.name, outside)
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("dropin.py", "pytest_plugin.py"):
            continue
        forbidden = {m for m in _external_imports(path)
                     if m.startswith(("pyro.infer", "pyro.ops.contract", "pyro.ops.einsum"))}
        assert forbidden == set(), (path.name, forbidden)
