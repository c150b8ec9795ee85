"""The package's shape: imports point down the layers, with no cycle; Pyro's private
attributes are touched in one adapter module only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_svi_ext"

#: lower layers first; a module may import only from its own layer or those before it
LAYERS = [
    ("kernels",),
    ("errors", "protocol", "pyro_compat", "trace", "validation"),
    ("compile",),
    ("estimators",),
    ("infer",),
    ("hookspecs", "plugin_api", "builtin_plugin", "registry", "interop", "dropin",
     "pytest_plugin", "viz", "inference_data", "demo", "cli", "__main__", "__init__"),
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


def _own_names() -> set[str]:
    """Every name the package defines: functions, classes, attributes it assigns,
    parameters (so ``x._own`` on the package's own objects is allowed)."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def _root(node: ast.AST) -> str:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return node.id if isinstance(node, ast.Name) else ""


def private_reads(path: Path, own: set[str]) -> list[str]:
    """``module:line name`` of each private attribute or private infer key read in
    ``path`` that the package does not define (so: Pyro's), torch's and ``os._exit``
    (documented, underscore and all) aside."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and node.attr not in own
                and _root(node) not in ("torch", "os")):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "get" and node.args
              and isinstance(node.args[0], ast.Constant)):
            key = node.args[0].value
        if isinstance(key, str) and key.startswith("_") and not key.startswith("__"):
            found.append(f"{path.name}:{node.lineno} [{key!r}]")
    return sorted(found)


def test_only_the_adapter_reads_pyros_private_attributes():
    own = _own_names()
    reads = [r for path in PACKAGE.rglob("*.py") if path.name != "pyro_compat.py"
             for r in private_reads(path, own)]
    assert reads == []


def test_the_private_read_scan_finds_a_read():
    source = "def f(store):\n    return store._params['x'], msg['_enumerate_dim']\n"
    path = Path(__file__).parent / "_scan_probe.py"
    path.write_text(source)
    try:
        assert private_reads(path, set()) == ["_scan_probe.py:2 ._params",
                                              "_scan_probe.py:2 ['_enumerate_dim']"]
    finally:
        path.unlink()
