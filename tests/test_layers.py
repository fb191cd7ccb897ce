"""The library's shape: layers point down, no import cycles, one definition per public name.

Layers, top to bottom: the scripts; core.bench, core.reporting and core.deploy; core.training;
core.evaluation; the shared plumbing in core/ (engine, runs, checkpoint, ...); models and data; common.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("common", "models", "data", "core")
# top to bottom; a module may import from its own layer and the layers below it, never from one above
LAYERS = (("core.bench", "core.reporting", "core.deploy"), ("core.training",), ("core.evaluation",), ("core",),
          ("models", "data"), ("common",))
ENTRY_POINTS = {"main", "get_args_parser"}  # each `python -m` module has its own


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in LIBRARY:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The library modules a module imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def level(module: str) -> int:
    """The index in LAYERS of the most specific package that holds ``module``."""
    packages = [(len(name), index) for index, names in enumerate(LAYERS) for name in names
                if module == name or module.startswith(name + ".")]
    return max(packages)[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(tree, set(mods)) - {m} for m, tree in mods.items()}


def test_every_import_points_to_the_same_layer_or_below() -> None:
    upward = []
    for module, targets in graph().items():
        upward += [f"{module} -> {target}" for target in sorted(targets) if level(target) < level(module)]
    assert upward == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_each_public_name_is_defined_in_one_module() -> None:
    """Over the library and the scripts at the root (which import from it)."""
    where = defaultdict(list)
    scripts = {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(ROOT.glob("*.py"))}
    for module, tree in {**modules(), **scripts}.items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and not node.name.startswith("_") and node.name not in ENTRY_POINTS:
                where[node.name].append(module)
    # module-qualified verbs (calibration.save / threshold.save) read as two names
    twice = {name: found for name, found in where.items() if len(found) > 1 and name not in ("save", "load")}
    assert twice == {}
