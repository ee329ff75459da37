"""Module hygiene of the package: no import cycles (lazy imports inside functions count) and no
private name imported from another module. Read from the source (``ast``), nothing imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "exvo"


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], list[str]]:
    """``(exvo modules this one imports anywhere in its body, private names it imports)``."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    deps, private = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if not base.startswith("exvo"):
                continue
            for a in node.names:
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                deps.add(target)
                if a.name.startswith("_") and not a.name.startswith("__"):
                    private.append(f"{name} imports {base}.{a.name}")
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in mods)
    deps.discard(name)
    return {d for d in deps if d in mods}, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_known_cycle():
    # the checker itself: a -> b -> c -> a is one cycle, d hangs off it
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    edges, private = {}, []
    for name, path in mods.items():
        edges[name], p = _imports(name, path, mods)
        private += p
    return edges, private


def test_no_import_cycles(graph):
    edges, _ = graph
    assert _cycles(edges) == []


def test_no_private_names_across_modules(graph):
    _, private = graph
    assert private == []
