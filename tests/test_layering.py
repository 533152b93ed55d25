"""The package's import graph: no cycles, no upward imports, `modeling` and `data` apart (docs/ARCHITECTURE.md).

Every `import` / `from ... import` statement counts, module level or inside a function (a lazy import is still a
dependency). Modules are placed in layers by name prefix (the longest prefix wins); a module may import from its own
layer or below.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maskformer"

# lowest first; names relative to `maskformer.`
LAYERS: list[tuple[str, ...]] = [
    ("", "config", "structures", "layers", "cpu_tuning"),  # "" = the package's own __init__
    ("backbones", "modeling"),
    ("matcher", "criterion", "point_sampling", "mask_losses", "inference", "fast_postprocess", "numpy_postprocess"),
    ("data", "io", "evaluation", "checkpoint", "convert"),
    ("hub", "pipeline", "tta", "precision"),
    # evaluation.loop runs the pipeline; sharding splits eval / predict over processes
    ("engine", "predict", "export", "backends", "serve", "visualize", "evaluation.loop", "sharding"),
    ("commands", "cli", "__main__"),
]
NEVER = [("modeling", "data"), ("data", "modeling")]  # (importer prefix, imported prefix)


def module_files(package: Path) -> dict[str, Path]:
    """{"maskformer.a.b": path} for every .py file under `package` (packages by their __init__.py)."""
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its file (`from pkg import sub` resolves to pkg.sub)."""
    root = name.split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == root}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: up level-1 packages from this one
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == root:
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest matching prefix; None for a module the table does not place."""
    rel = module.partition(".")[2]
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for p in names:
            hit = rel == p or (p and rel.startswith(p + "."))
            if hit and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per import that goes upward, crosses a NEVER pair, or touches a module the table does not place."""
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            ls, ld = layer_of(src), layer_of(dst)
            if ls is None or ld is None:
                bad.append(f"{src} -> {dst}: {src if ls is None else dst} has no layer in tests/test_layering.py")
            elif ld > ls:
                bad.append(f"{src} (layer {ls}) imports {dst} (layer {ld}): upward")
            rs, rd = src.partition(".")[2], dst.partition(".")[2]
            for a, b in NEVER:
                if (rs == a or rs.startswith(a + ".")) and (rd == b or rd.startswith(b + ".")):
                    bad.append(f"{src} imports {dst}: {a} and {b} never import each other")
    return bad


def test_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_package_imports_follow_the_layers():
    assert violations(import_graph()) == []


def test_checker_sees_lazy_relative_and_upward_imports(tmp_path):
    """The walker itself: a function-local import, a relative one, a cycle, an upward and a forbidden import."""
    pkg = tmp_path / "maskformer"
    (pkg / "modeling").mkdir(parents=True)
    (pkg / "data").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from maskformer.commands import run\n")
    (pkg / "modeling" / "__init__.py").write_text("from .heads import Head\n")
    (pkg / "modeling" / "heads.py").write_text("from maskformer import modeling\nimport maskformer.data.io\n")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "io.py").write_text("")
    (pkg / "commands.py").write_text("")
    graph = import_graph(pkg)
    assert graph["maskformer.config"] == {"maskformer.commands"}
    assert graph["maskformer.modeling"] == {"maskformer.modeling.heads"}
    assert cycles(graph) == [["maskformer.modeling", "maskformer.modeling.heads"]]
    assert violations(graph) == [
        "maskformer.config (layer 0) imports maskformer.commands (layer 6): upward",
        "maskformer.modeling.heads (layer 1) imports maskformer.data.io (layer 3): upward",
        "maskformer.modeling.heads imports maskformer.data.io: modeling and data never import each other",
    ]
