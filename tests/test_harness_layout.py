"""The harness's floor plan: no import circle among ``parity/harness`` modules (lazy imports
included), no module over 600 lines or function over 60, and the entry points take a pair
and a small options object."""

import ast
import inspect
from pathlib import Path

from parity.harness.localize import localize, localize_gradients
from parity.harness.trajectory import trajectory

HARNESS = Path(__file__).resolve().parents[1] / "parity" / "harness"


def harness_imports() -> dict[str, set[str]]:
    """``{module: harness modules it imports anywhere in its body}``."""
    names = {p.stem for p in HARNESS.glob("*.py")}
    graph = {}
    for path in HARNESS.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("parity.harness."):
                    found.add(node.module.split(".")[2])
                elif node.module == "parity.harness":
                    found |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("parity.harness.")}
        graph[path.stem] = found - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_among_harness_modules():
    assert find_cycle(harness_imports()) is None


def test_no_module_over_600_lines_no_function_over_60():
    for path in HARNESS.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 600, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 60, f"{path.name}:{node.name}"


def test_entry_points_take_a_pair_and_an_options_object():
    for fn in (localize, localize_gradients, trajectory):
        params = list(inspect.signature(fn).parameters)
        assert params[0] == "pair" and params[-1] == "options" and len(params) <= 5, fn.__name__
