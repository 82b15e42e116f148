"""The shape of the code base that #48 asked for and that reviews keep: no module over 400 lines, no function body
over 60 lines (its docstring excluded), and no import cycle among kdkeras' modules — counting every import, also
those inside functions and those made only for type checking."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "kdkeras"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _body_lines(function) -> int:
    body = function.body
    docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    body = body[1:] if docstring and len(body) > 1 else body
    return body[-1].end_lineno - body[0].lineno + 1


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """`{module: the kdkeras modules it imports}`; `from package import name` points at the submodule `name` when
    there is one, else at the package."""

    def target(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdkeras"):
                edges |= {target(f"{node.module}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                edges |= {target(alias.name) for alias in node.names if alias.name.startswith("kdkeras")}
        graph[name] = edges - {None, name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT.parent)): n
        for p in _modules().values()
        if (n := p.read_text().count("\n")) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_body_is_over_60_lines():
    long = {}
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}"] = _body_lines(node)
    assert long == {}


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph(_modules())) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
