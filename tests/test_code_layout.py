"""The code's shape: no import circle among the package's modules or among the tools, and no
unittest.mock outside the tests (Detectron2 is extended through its seams, not patched)."""
import ast
from pathlib import Path

from .conftest import REPO


def _imports(path: Path, package: str) -> set:
    """Module names ``path`` imports anywhere in it (functions included), absolute."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(REPO).with_suffix("").parts
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[:len(here) - node.level])
                module = ".".join(base + ([node.module] if node.module else []))
                names.add(module)
                names.update(f"{module}.{a.name}" for a in node.names)
            else:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _graph(files, name_of) -> dict:
    modules = {name_of(f): f for f in files}
    graph = {}
    for name, f in modules.items():
        graph[name] = {m for m in _imports(f, name) if m in modules and m != name}
    return graph


def _cycle(graph: dict):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def _package_name(f: Path) -> str:
    parts = list(f.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle_in_the_package():
    graph = _graph(sorted((REPO / "cellseg_d2").rglob("*.py")), _package_name)
    # a package's __init__ re-exports its modules; a module importing its own package's
    # __init__ (to reach a sibling) is the circle to find, so parents stay in the graph
    assert len(graph) > 20
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_import_circle_among_the_tools():
    tools = sorted(p for p in (REPO / "tools").rglob("*.py"))
    graph = _graph(tools, lambda f: f.stem)
    assert {"benchmark", "benchmark_common", "benchmark_eval"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_mock_outside_the_tests():
    for f in sorted([*(REPO / "cellseg_d2").rglob("*.py"), *(REPO / "tools").rglob("*.py")]):
        assert not any(m.startswith("unittest.mock") or m == "unittest.mock" or m == "mock"
                       for m in _imports(f, "")), f
