"""The import structure (docs/architecture.md, "Layout"): rlhf_lab's sub-packages in layers that import only
downward (config < algo < engine < toy | reviews < trainer < run < cli; toy and reviews are siblings that
never import each other); no module of rlhf_lab/ or analysis/ imports another that (directly or through others)
imports it back, lazy imports inside functions included; no sub-package (rlhf_lab/toy/) is imported by a module it
imports; and analysis/ never imports torch or rlhf_lab."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rlhf_lab", "analysis")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in modules)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    modules = set(files)
    edges = {name: imports_of(path, modules) - {name} for name, path in files.items()}
    for name in modules:  # importing a.b runs a/__init__.py: a package's own __init__ is not a cycle
        edges[name] = {other for other in edges[name] if not name.startswith(other + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def collapsed(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph with each sub-package (rlhf_lab.toy.*) one node: a cycle through it is an upward import."""
    def node(name):
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 else name
    merged: dict[str, set[str]] = {}
    for name, targets in edges.items():
        merged.setdefault(node(name), set()).update(node(t) for t in targets if node(t) != node(name))
    for targets in list(merged.values()):
        for target in targets:
            merged.setdefault(target, set())
    return merged


def test_no_sub_package_is_imported_back():
    assert cycles(collapsed(graph())) == []


# rlhf_lab's layers, lowest first (a layer may hold sibling sub-packages): a module imports only from its own
# sub-package or from lower layers, never from a sibling
LAYERS = (("rlhf_lab.config",), ("rlhf_lab.algo",), ("rlhf_lab.engine",), ("rlhf_lab.toy", "rlhf_lab.reviews"),
          ("rlhf_lab.trainer",), ("rlhf_lab.run",), ("rlhf_lab.cli",))
LAYER_OF = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def test_rlhf_lab_imports_only_downward():
    edges = collapsed(graph())
    assert set(LAYER_OF) == {node for node in edges if node.startswith("rlhf_lab.")}  # every module has a layer
    not_down = [(a, b) for a in LAYER_OF for b in edges[a] if b in LAYER_OF and LAYER_OF[b] >= LAYER_OF[a]]
    assert not_down == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    upward = {"p.data": {"p.toy.language"}, "p.toy.language": set(), "p.toy.stages": {"p.data"}}
    assert cycles(upward) == [] and cycles(collapsed(upward)) == [["p.data", "p.toy"]]


@pytest.mark.parametrize("path", sorted((ROOT / "analysis").rglob("*.py")), ids=lambda p: p.name)
def test_analysis_never_imports_torch_or_the_trainer(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] in ("torch", "rlhf_lab") for n in names), (path, names)
