"""The library's imports, read with `ast`: no circle between files and no import up the stage order.

The order is the one docs/contracts.md states (its "Stage order" line, read here so the doc stays the one place);
every import counts, at module level or inside a function, relative ones resolved. A function-level import that
breaks a circle at run time is still a circle to a reader of the code.
"""
from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

ORDER_LINE = re.compile(r"^\s*common\s*<.*$", re.M)


def stage_layers() -> list[set[str]]:
    """[{package, ...}, ...] lowest first, from the order line of docs/contracts.md
    (`common < shards, trainer < pretrain < ...`)."""
    doc = (ROOT / "docs" / "contracts.md").read_text()
    lines = ORDER_LINE.findall(doc)
    assert len(lines) == 1, "docs/contracts.md must state the stage order on one line starting `common <`"
    return [{p.strip().strip("`") for p in layer.split(",")} for layer in lines[0].split("<")]


def library_packages() -> list[str]:
    """The packages pyproject.toml installs (its packages.find include list)."""
    text = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include\s*=\s*\[([^\]]*)\]", text)
    return sorted(p.strip(' "*') for p in include.group(1).split(","))


def module_files() -> dict[str, object]:
    """{dotted module name: path} of every library module."""
    mods = {}
    for pkg in library_packages():
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def imports_of(name: str, path, mods: dict) -> set[str]:
    """The library modules `name` imports anywhere in its file (the most specific module each import names)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = module_files()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


def test_the_stage_order_names_every_library_package_once():
    layers = stage_layers()
    named = [p for layer in layers for p in layer]
    assert sorted(named) == library_packages(), (named, library_packages())


def test_the_reader_resolves_relative_and_function_level_imports(tmp_path):
    mods = {"a": None, "a.b": None, "a.c": None, "d": None}
    src = tmp_path / "a" / "b.py"
    src.parent.mkdir()
    src.write_text("from . import c\n\ndef f():\n    import d\n    from .c import thing\n")
    assert imports_of("a.b", src, mods) == {"a.c", "d"}
    assert circles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]


def test_no_import_circle_between_files():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_up_the_stage_order():
    layer_of = {p: i for i, layer in enumerate(stage_layers()) for p in layer}
    up = []
    for name, targets in sorted(import_graph().items()):
        src = name.split(".")[0]
        for t in sorted(targets):
            dst = t.split(".")[0]
            if dst != src and layer_of[dst] >= layer_of[src]:
                up.append(f"{name} -> {t}")
    assert not up, "imports up (or across) the stage order of docs/contracts.md:\n" + "\n".join(up)


def _top_imports(path) -> set[str]:
    """The top-level names every import of the file starts from (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_library_tests_and_benchmarks_keep_apart():
    """benchmarks/ is a suite of modules run with `python -m` (no import-path edits); neither it nor the library
    imports the tests or their helpers, and the tests run benchmarks only as fresh processes."""
    test_modules = {"tests"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    wrong = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name)
               and n.value.id == "sys" for n in ast.walk(tree)):
            wrong.append(f"{path.relative_to(ROOT)} edits sys.path")
        wrong += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(_top_imports(path) & test_modules)]
    for path in sorted((ROOT / "tests").glob("*.py")):
        if "benchmarks" in _top_imports(path):
            wrong.append(f"{path.relative_to(ROOT)} imports benchmarks")
    for name, path in module_files().items():
        wrong += [f"{name} imports {m}" for m in sorted(_top_imports(path) & (test_modules | {"benchmarks"}))]
    assert not wrong, "\n".join(wrong)
