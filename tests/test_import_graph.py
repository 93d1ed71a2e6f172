"""The modules of conformance/ (conformance.adapters and conformance.runner included) import
each other without a cycle: every import counts, at module level or inside a function (a
lazy import is still a dependency; cycles hidden that way are how layers stop being layers)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Folders and the package each one is installed as (pyproject.toml: package-dir).
PACKAGES = {ROOT / "conformance": "conformance", ROOT / "adapters": "conformance.adapters"}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for folder, package in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            if rel.parts[0] in ("adapters", "specs"):  # the worktree's links to the top-level folders
                continue
            parts = [p for p in rel.with_suffix("").parts if p != "__init__"]
            mods[".".join([package, *parts])] = (path, rel.name == "__init__.py")
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (anywhere in its body)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for c in candidates:
                while c and c not in mods:
                    c = c.rpartition(".")[0]
                if c and c != name and not name.startswith(c + "."):  # a package's own __init__ is no edge
                    deps.add(c)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert {"conformance.engine", "conformance.runner.cli", "conformance.adapters.base"} <= set(graph)
    assert "conformance.checks" in graph["conformance.engine"]
    assert "conformance.runner.worker" in graph["conformance.runner.isolation"]
    assert "conformance.adapter_config" in graph["conformance.adapters"]  # lazy, inside resolve()


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []
