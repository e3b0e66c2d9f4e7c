"""The package's layers: no import cycle, counting imports inside functions.

An import inside a function hides a cycle from Python but not from this test, which reads
every ``import`` statement of the package (module level and inside functions) and looks for
strongly connected components in the graph of evoplastic modules. The only edges left out
are those from a package's ``__init__`` to its own submodules (re-exports).
"""

import ast
from pathlib import Path

import evoplastic

ROOT = Path(evoplastic.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.append(sub if sub in modules else module)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target not in modules or target == name:
                    continue
                if path.name == "__init__.py" and target.startswith(name + "."):
                    continue  # a package re-exporting its own submodules
                graph[name].add(target)
                parts = target.split(".")  # importing a.b.c runs a and a.b first
                for k in range(2, len(parts)):
                    parent = ".".join(parts[:k])
                    if parent != name and not name.startswith(parent + "."):
                        graph[name].add(parent)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = _graph(_modules())
    assert len(graph) > 40 and "evoplastic.config.validate" in graph
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    graph = _graph(_modules())
    # backends below experiment: an import of experiment inside a backend function would
    # close a cycle, and the finder must see it
    graph["evoplastic.backends.sharded"].add("evoplastic.experiment")
    cycles = _cycles(graph)
    assert cycles and "evoplastic.experiment" in cycles[0]
