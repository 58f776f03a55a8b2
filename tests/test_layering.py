"""The layering rules as tests: the core, the analysis and the space loader never import Ray, and no project module
imports another that (directly or through others) imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGES = ("sparsebert", "analysis", "search_spaces", "search", "trainables")
TOP_MODULES = ("run_search",)


def _modules() -> dict[str, Path]:
    out = {m: REPO / f"{m}.py" for m in TOP_MODULES}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            dotted = ".".join(f.relative_to(REPO).with_suffix("").parts)
            out[dotted.removesuffix(".__init__")] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports anywhere in its file (module level or inside functions)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        pkg = name if path.stem == "__init__" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_project_modules():
    graph = import_graph()
    assert len(graph) > 40 and graph["sparsebert.tickets.pipeline"]  # the walker sees the project
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_analysis_and_loader_never_import_ray():
    mods = [m for m in _modules() if m.split(".")[0] in ("sparsebert", "analysis", "search_spaces")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "from search_spaces.loader import load_space\n"
            + "for name in ('demo', 'main_table', 'proxy_search'):\n    load_space(name)\n"
            + "load_space('demo', smoke=True)\n"
            + "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-500:]
    assert len(mods) > 30


def test_only_trainables_and_search_import_ray():
    for name, path in _modules().items():
        if name.split(".")[0] in ("trainables", "search"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), (name, node.lineno)


# The core's rooms, bottom to top: a module may import its own room and the rooms below it, never one above.
CORE_LAYERS = ("engine", "text", "models", "tickets", "transfer")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "sparsebert" or len(parts) < 2:
        return None
    return CORE_LAYERS.index(parts[1]) if parts[1] in CORE_LAYERS else len(CORE_LAYERS)  # top-level: above all


def test_core_subpackages_import_only_downwards():
    graph = import_graph()
    rooms = {m.split(".")[1] for m in graph if m.startswith("sparsebert.") and m.count(".") >= 2}
    assert rooms == set(CORE_LAYERS), rooms
    flat = sorted(m for m in graph if m.count(".") == 1 and m.startswith("sparsebert."))
    assert flat == ["sparsebert.engine", "sparsebert.models", "sparsebert.prepare", "sparsebert.proxy",
                    "sparsebert.text", "sparsebert.tickets", "sparsebert.transfer"], flat  # every module in a room
    upward = [(m, t) for m, targets in graph.items() for t in targets
              if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]
    assert upward == [], upward


def test_the_layer_check_orders_the_rooms():
    assert _layer("sparsebert.engine.training") < _layer("sparsebert.text.batching") < _layer("sparsebert.models.loading")
    assert _layer("sparsebert.models.loading") < _layer("sparsebert.tickets.tamt") < _layer("sparsebert.transfer.finetune")
    assert _layer("sparsebert.transfer.finetune") < _layer("sparsebert.proxy") and _layer("analysis.report") is None
