"""The package's import graph: no circles, and the layers below the loop never import it.

Every ``import``/``from ... import`` of a mixnb module counts, at module level or inside a function (a lazy
import still ties the two modules together). The layers: ``mixups/``, ``data/``, ``models/`` and
``analysis/`` (what a run is made of and what is measured on it) sit below the loop (``mixnb.train``) and
everything that drives it (sweep, report, bench, gallery, the command line).
"""

import ast
from pathlib import Path

import mixnb

PACKAGE = Path(mixnb.__file__).parent
LOWER = ("mixnb.mixups", "mixnb.data", "mixnb.models", "mixnb.analysis")
DRIVERS = ("mixnb.train", "mixnb.sweep", "mixnb.report", "mixnb.bench", "mixnb.gallery", "mixnb.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """{module: the mixnb modules it imports}, a package's ``__init__`` counted as the package."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected set of more than one module (Tarjan), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_is_read_from_the_code():
    graph = imports()
    assert "mixnb.mixups.cutmix" in graph and "mixnb.train" in graph["mixnb.sweep"] | graph["mixnb.__main__"]


def test_no_import_circles():
    graph = imports()
    assert cycles(graph) == [], "import circles (break each by moving the shared piece down a layer)"


def test_no_lower_layer_imports_the_loop_or_its_drivers():
    upward = sorted((m, t) for m, ts in imports().items() if m.startswith(LOWER) for t in ts if t.startswith(DRIVERS))
    assert upward == []
