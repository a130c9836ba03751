"""The house has one direction: every project import points down a layer, never up, never in a cycle.

Layers, bottom to top (a module may import its own layer or lower ones; cycles are refused too):

0. leaves: errors, identity, registry, ledger, perturbation, seeds, sgd, progress, storage_url,
   store, trial, selection, stats (the last three are pure: no torch), loggers, memory, workers
1. models, data, the strategy protocol and registry (strategy), the upper objective (upper)
2. config (the spec, validated against the registries)
3. trainer, hypergrad, checkpoint (mid-run checkpoints of a trainer)
4. strategies in searchers/ (plugins found through an entry point), execute
5. population, pool, preflight
6. engines
7. search (search kinds' registry), searchers.searches (the kinds themselves)
8. experiment, fidelity, report, summary; the ``searchers`` package itself (the plugin entry point)
9. commands, cli

Also: ``hpo_bench`` never imports ``searchers``; no function-level import of a project module
(type-only imports under ``TYPE_CHECKING`` excepted); no module over 500 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hpo_bench", "searchers")
MAX_LINES = 500

LAYERS = {
    0: ["errors", "identity", "registry", "ledger", "perturbation", "seeds", "sgd", "progress", "storage_url", "store",
        "trial", "selection", "fields", "stats", "loggers", "memory", "workers"],
    1: ["models", "data", "strategy", "upper"],
    2: ["config"],
    3: ["trainer", "hypergrad", "checkpoint"],
    4: ["execute", "searchers"],
    5: ["population", "pool", "preflight", "units"],
    6: ["engines"],
    7: ["search", "searchers.searches"],
    8: ["experiment", "fidelity", "report", "summary", "searchers.__init__"],
    9: ["commands", "cli"],
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _layer(module: str) -> int:
    """The layer of ``hpo_bench.x.y`` (by ``x``) or of ``searchers.z`` (``searchers.searches`` apart)."""
    if module == "searchers":  # the plugin entry point: imports every strategy and search kind
        return 8
    key = module if module.startswith("searchers.searches") else (
        "searchers" if module.startswith("searchers") else module.split(".")[1] if "." in module else module)
    for layer, names in LAYERS.items():
        if key in names:
            return layer
    raise AssertionError(f"{module}: not in any layer of tests/test_architecture.py; add it where it belongs")


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> tuple[list[str], list[str]]:
    """(module-level project imports, function-level project imports) of one file."""
    tree = ast.parse(path.read_text())
    top, nested = [], []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in child.names] if isinstance(child, ast.Import) else \
                    [child.module or ""] + [f"{child.module}.{a.name}" for a in child.names]
                for name in names:
                    if name.split(".")[0] in PACKAGES:
                        (nested if in_function else top).append(name)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, nested


def _resolve(name: str, modules: dict) -> str | None:
    """The project module an imported name lives in (``a.b.func`` → ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_stay_at_module_level(module):
    top, nested = _imports(MODULES[module])
    assert not nested, f"{module}: function-level imports of project modules {nested}"
    for name in top:
        target = _resolve(name, MODULES)
        if target is None or target == module or module.startswith(target + "."):
            continue  # a package's own __init__ imported by its submodules
        if module.startswith("hpo_bench"):
            assert not target.startswith("searchers"), f"{module} imports {target}: hpo_bench never imports searchers"
        assert _layer(target) <= _layer(module), f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"


def test_no_import_cycles():
    graph = {}
    for module, path in MODULES.items():
        targets = {_resolve(n, MODULES) for n in _imports(path)[0]}
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    state: dict[str, int] = {}

    def dfs(node, trail):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                dfs(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            dfs(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines (at most {MAX_LINES}); split it"
