"""The floor plan, checked on the source (AST only: nothing is imported, so this runs in well under a
second and cannot be fooled by import-time side effects):

- layers: `engine.core` (the contracts) imports nothing of ours outside itself; `adapters` and
  `pillars` import only `engine.core` and their own package; `engine.testing` (the public fakes)
  imports only `engine.core` and itself, and nothing shipped imports it; the rest of `engine` (the
  orchestrator) may import all of these;
- no import cycle between our modules, function-level imports included (a lazy import hides a
  cycle from the interpreter, not from the design);
- the orchestrator knows adapters by their registry entry and declared capabilities: no adapter
  name as a string literal and no getattr/hasattr probe on an adapter anywhere in `engine/`;
- benchmarks import the public fakes, never `tests`.

Every import counts, wherever it is written (module level, function, `if TYPE_CHECKING`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "adapters", "pillars", "bench_data")
# The adapter names of the registry (adapters/): the orchestrator must not spell them.
ADAPTER_NAMES = frozenset({"openai", "anthropic", "gemini", "vllm", "vllm-offline", "vllm_offline", "embedded",
                           "replay", "mock"})
PROBE_TARGET_WORDS = ("adapter", "adp", "client")



@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the module of ours it resolves to
    line: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.target}"


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            found[module_name(path)] = path
    return found


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def owner(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that `name` (a module or a name inside one) is defined by, else None."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(mod: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join([*pkg, base] if base else pkg)
    return [f"{base}.{a.name}" for a in node.names]


def imports_of(mod: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    for node in ast.walk(tree(path)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in imported_names(mod, path, node):
                target = owner(name, known)
                if target is not None and target != mod:
                    yield Import(mod, target, node.lineno)


def all_imports(known: dict[str, Path] | None = None) -> list[Import]:
    known = modules() if known is None else known
    return [imp for mod, path in known.items() for imp in imports_of(mod, path, known)]


def in_package(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def layer_violation(imp: Import) -> str | None:
    """Why this import runs against the floor plan, or None when it is allowed."""
    src, dst = imp.importer, imp.target
    if in_package(dst, "engine.testing") and not in_package(src, "engine.testing"):
        return "shipped code imports the test fakes"
    if in_package(src, "engine.core"):
        return None if in_package(dst, "engine.core") else "the contracts layer imports above itself"
    for pkg in ("adapters", "pillars", "engine.testing"):
        if in_package(src, pkg):
            ok = in_package(dst, "engine.core") or in_package(dst, pkg)
            return None if ok else f"{pkg} imports outside engine.core and itself"
    if in_package(src, "bench_data"):
        return "bench_data is data; it imports nothing of ours"
    return None


def layer_violations(imports: list[Import]) -> list[str]:
    return sorted(f"{imp} ({why})" for imp in imports if (why := layer_violation(imp)) is not None)


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def name_strings_and_probes(known: dict[str, Path]) -> tuple[list[str], list[str]]:
    """Adapter-name string literals and getattr/hasattr probes on adapters, in engine/."""
    names: list[str] = []
    probes: list[str] = []
    for mod, path in known.items():
        if not in_package(mod, "engine"):
            continue
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ADAPTER_NAMES:
                names.append(f"{mod}:{node.lineno}: {node.value!r}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and node.args and any(w in ast.unparse(node.args[0]).lower() for w in PROBE_TARGET_WORDS)):
                probes.append(f"{mod}:{node.lineno}: {ast.unparse(node)}")
    return sorted(names), sorted(probes)


# -- the checks ------------------------------------------------------------------------------------


def test_layers_import_only_downward() -> None:
    assert layer_violations(all_imports()) == []


def test_no_import_cycles_function_level_imports_included() -> None:
    assert cycles(all_imports()) == []


def test_no_adapter_names_in_the_orchestrator() -> None:
    names, _ = name_strings_and_probes(modules())
    assert names == []


def test_no_capability_probes_on_adapters() -> None:
    _, probes = name_strings_and_probes(modules())
    assert probes == []


def test_benchmarks_do_not_import_tests() -> None:
    found = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{path.name}:{node.lineno}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert found == []


# -- the checker itself -------------------------------------------------------------------------------


def _fake_tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    known: dict[str, Path] = {}
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        known[module_name(path, tmp_path)] = path
    return known


def test_checker_sees_an_upward_import_and_a_lazy_cycle(tmp_path: Path) -> None:
    known = _fake_tree(tmp_path, {
        "engine/__init__.py": "",
        "engine/core/__init__.py": "",
        "engine/core/records.py": "def f():\n    from engine.run import lane\n",  # upward, and lazy
        "engine/run/__init__.py": "",
        "engine/run/lane.py": "from engine.core.records import f\n",
        "adapters/__init__.py": "",
        "adapters/http.py": "from engine.run.lane import x\nfrom . import other\n",
        "adapters/other.py": "import json\nfrom engine.core.records import f\n",
    })
    imports = all_imports(known)
    assert layer_violations(imports) == [
        "adapters.http:1 imports engine.run.lane (adapters imports outside engine.core and itself)",
        "engine.core.records:2 imports engine.run.lane (the contracts layer imports above itself)",
    ]
    assert cycles(imports) == [["engine.core.records", "engine.run.lane"]]
